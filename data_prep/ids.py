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

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mba_dist.data.pairs import dense_index, unique_ints
from mba_dist.errors import RawInputError

ID_KINDS = ("auto", "int", "str")
MIXED_SHARE = 0.01  # `auto`: at most this share of non-integer rows is an error, above it `str`
_INT_PATTERN = r"^-?[0-9]+$"
_I64 = (-(2 ** 63), 2 ** 63 - 1)


@dataclass
class Column:
    """One file's ids of one entity, and how to name the file and a row of it in an error."""

    path: Path
    raw: "np.ndarray | pa.Array"  # numpy int64, or a pyarrow string array as read
    where: Callable[[int], str]  # row index -> "line N" / "row N"

    @property
    def is_int(self) -> bool:
        return isinstance(self.raw, np.ndarray)

    def show(self, k: int) -> str:
        return str(self.raw[k] if self.is_int else self.raw[k].as_py())[:40]


def _first(col: Column, rows: np.ndarray, entity: str, why: str) -> RawInputError:
    k = int(np.flatnonzero(rows)[0])
    return RawInputError(f"{col.path}: {col.where(k)}: {entity} id {col.show(k)!r} {why}")


def _casts_to_int(raw: pa.Array) -> bool:
    """Whether every id is a decimal integer of 64 bits, as `_INT_PATTERN` takes them (Arrow's
    cast, one pass; it refuses "+5", spaces and overflow as the pattern and range check do)."""
    try:
        pc.cast(raw, pa.int64())
    except pa.ArrowInvalid:
        return False
    return True


def _looks_int(raw: pa.Array) -> np.ndarray:
    return pc.match_substring_regex(raw, _INT_PATTERN).to_numpy(zero_copy_only=False)


def _outside_int64(raw: pa.Array, looks: np.ndarray) -> np.ndarray:
    """Which integer-looking strings do not fit in 64 bits (only long ones are looked at)."""
    long = looks & (pc.utf8_length(raw).to_numpy(zero_copy_only=False) >= 19)
    out = np.zeros(len(raw), bool)
    for k in np.flatnonzero(long):
        out[k] = not _I64[0] <= int(raw[k].as_py()) <= _I64[1]
    return out


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
        if col.is_int or _casts_to_int(col.raw):
            continue
        looks = _looks_int(col.raw)
        outside = _outside_int64(col.raw, looks)
        if outside.any():
            raise _first(col, outside, entity, "does not fit in a 64-bit integer (pass "
                         "--ids str to keep such ids as text)")
        if not looks.all():
            not_int += int((~looks).sum())
            first_bad = first_bad or (col, ~looks)
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


def dense_ids(cols: list[Column], kind: str) -> tuple["np.ndarray | pa.Array", list[np.ndarray]]:
    """The sorted unique raw ids of `kind` ("int": numpy int64; "str": a pyarrow string array,
    in code-point order) and each column's dense ids."""
    if kind == "int":
        typed = [c.raw if c.is_int else pc.cast(c.raw, pa.int64()).to_numpy() for c in cols]
        uniq = unique_ints(np.concatenate(typed))
        return uniq, [dense_index(uniq, t) for t in typed]
    typed = [pa.array(c.raw.astype(str)) if c.is_int else c.raw for c in cols]
    uniq = pc.unique(pa.chunked_array(typed, pa.string()))
    uniq = uniq.take(pc.sort_indices(uniq))
    return uniq, [pc.index_in(t, value_set=uniq).to_numpy().astype(np.int64) for t in typed]
