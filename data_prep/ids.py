"""The id type of users and of items (`--ids int|str|auto`), decided once over every file, and
the dense ids.

- `int`: every id must be a 64-bit integer (text like `42` or `-7`, an integer Parquet column,
  or a float column of whole numbers); the first other one is an error naming its file and line.
- `str`: ids are compared as text; integer Parquet columns become their decimal text, so `3`
  is the same id in a CSV and in a Parquet file (never "3.0").
- `auto` (the default): `int` when every id is an integer; `str` when non-integer ids are
  common (more than `MIXED_SHARE` of the rows); anything in between is an error naming the
  first non-integer id, since a log of integer ids with a few odd rows (a header that was not
  recognised, a stray token) is a broken log, and reading it as strings would silently give
  every user two ids ("3" in one file, 3 in another) or none that matches.

Integer ids keep their numeric order, so ids that are already dense map to themselves.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mba_dist.errors import RawInputError

ID_KINDS = ("auto", "int", "str")
MIXED_SHARE = 0.01  # `auto`: at most this share of non-integer rows is an error, above it `str`
_INT_RE = re.compile(r"^-?\d+$")
_I64 = (-(2 ** 63), 2 ** 63 - 1)


@dataclass
class Column:
    """One file's ids of one entity, and how to name the file and a row of it in an error."""

    path: Path
    raw: np.ndarray  # int64, or strings as read
    where: Callable[[int], str]  # row index -> "line N" / "row N"


def _int_mask(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For unique strings: (integer-looking, outside int64)."""
    looks = np.fromiter((_INT_RE.match(v) is not None for v in values), bool, len(values))
    outside = np.zeros(len(values), bool)
    for k in np.flatnonzero(looks):
        if len(values[k]) >= 19 and not _I64[0] <= int(values[k]) <= _I64[1]:
            outside[k] = True
    return looks, outside


def _first(col: Column, rows: np.ndarray, entity: str, why: str) -> RawInputError:
    k = int(np.flatnonzero(rows)[0])
    return RawInputError(f"{col.path}: {col.where(k)}: {entity} id {str(col.raw[k])[:40]!r} "
                         f"{why}")


def id_type(entity: str, cols: list[Column], kind: str = "auto") -> str:
    """"int" or "str" for `entity` over all its columns (module docstring); an error naming the
    first offending row when the ids do not fit `kind`."""
    if kind not in ID_KINDS:
        raise RawInputError(f"--ids must be one of {', '.join(ID_KINDS)}, got {kind!r}")
    if kind == "str":
        return "str"
    total, not_int, first_bad = 0, 0, None
    for col in cols:
        total += len(col.raw)
        if col.raw.dtype.kind in "iu":
            continue
        uniq, inv = np.unique(col.raw, return_inverse=True)
        looks, outside = _int_mask(uniq)
        if outside.any():
            raise _first(col, outside[inv], entity, "does not fit in a 64-bit integer (pass "
                         "--ids str to keep such ids as text)")
        bad = ~looks[inv]
        if bad.any():
            not_int += int(bad.sum())
            first_bad = first_bad or (col, bad)
    if first_bad is None:
        return "int"
    if kind == "auto" and not_int > MIXED_SHARE * total:
        return "str"
    col, bad = first_bad
    why = ("is not an integer (--ids int)" if kind == "int" else
           f"is not an integer, while {total - not_int} of {total} {entity} ids are: a header "
           "line that was not recognised (--header yes) or a stray token? Pass --ids str if "
           "these ids are text")
    raise _first(col, bad, entity, why)


def dense_ids(cols: list[Column], kind: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """The sorted unique raw ids of `kind` ("int" | "str") and each column's dense ids."""
    typed = [c.raw.astype(np.int64) if kind == "int" else c.raw.astype(str) for c in cols]
    uniq = np.unique(np.concatenate(typed))
    return uniq, [np.searchsorted(uniq, t).astype(np.int64) for t in typed]
