"""Readers of raw behavior logs: (user, item) pairs from TSV/CSV/space-separated text or Parquet.

Accepted text formats (optionally gzip-compressed, `.gz`):
- tab-separated, e.g. the authors' `uid\\tsid` files (header line optional);
- comma-separated (header optional);
- whitespace-separated `u i` lines.
Only the first two columns are read (user, item), as the authors' loader does; extra columns are
ignored. Parquet files need two columns named user/item (or uid/sid, user_id/item_id), or exactly
two columns. Raw ids may be integers or strings; they are returned as strings of the file's text
and mapped to dense ids by the caller.

Every problem is a `RawInputError` naming the file, the line (1-based) and what is wrong.
"""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mba_dist.errors import RawInputError

HEADER_NAMES = {"uid", "sid", "user", "item", "user_id", "item_id", "userid", "itemid", "u", "i",
                "iid", "users", "items"}
PARQUET_COLUMNS = [("user", "item"), ("uid", "sid"), ("user_id", "item_id")]


def _open_binary(path: Path) -> io.BufferedIOBase:
    raw = path.open("rb")
    return gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw


def _split(line: str, sep: str | None) -> list[str]:
    return [f.strip() for f in line.split(sep)] if sep else line.split()


def _detect_sep(line: str) -> str | None:
    if "\t" in line:
        return "\t"
    if "," in line:
        return ","
    return None  # any whitespace


def _looks_like_header(fields: list[str]) -> bool:
    return fields[0].lower() in HEADER_NAMES or fields[1].lower() in HEADER_NAMES


def read_pairs(path: str | Path, header: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Return (users, items) raw ids as numpy string arrays. `header`: auto | yes | no."""
    path = Path(path)
    if not path.exists():
        raise RawInputError(f"{path}: file does not exist")
    if not path.is_file():
        raise RawInputError(f"{path}: not a regular file")
    if path.suffix == ".parquet" or path.name.endswith(".parquet.gz"):
        return _read_parquet(path)
    return _read_text(path, header)


def _read_parquet(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise RawInputError(f"{path}: not a readable Parquet file ({e})") from None
    names = table.column_names
    cols = next((c for c in PARQUET_COLUMNS if c[0] in names and c[1] in names), None)
    if cols is None:
        if len(names) != 2:
            raise RawInputError(f"{path}: Parquet needs columns user/item (or uid/sid, "
                                f"user_id/item_id) or exactly two columns; found {names}")
        cols = (names[0], names[1])
    out = []
    for c in cols:
        col = table.column(c)
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise RawInputError(f"{path}: row {row + 1}: empty {c} id")
        out.append(np.asarray([str(v) for v in col.to_pylist()], dtype=object).astype(str))
    if len(out[0]) == 0:
        raise RawInputError(f"{path}: no rows")
    return out[0], out[1]


def _read_text(path: Path, header: str) -> tuple[np.ndarray, np.ndarray]:
    users: list[str] = []
    items: list[str] = []
    sep: str | None = None
    first = True
    lineno = 0
    try:
        with _open_binary(path) as f:
            # Lines are decoded one by one so an encoding error names its own line.
            for lineno, raw_line in enumerate(f, start=1):
                line = raw_line.decode("utf-8").rstrip("\n\r")
                if not line.strip():
                    continue  # blank lines (e.g. a trailing newline) carry nothing
                if first:
                    sep = _detect_sep(line)
                fields = _split(line, sep)
                if len(fields) < 2:
                    raise RawInputError(f"{path}: line {lineno}: expected at least 2 columns "
                                        f"(user, item), found {len(fields)}: {line[:80]!r}")
                if first:
                    first = False
                    if header == "yes" or (header == "auto" and _looks_like_header(fields)):
                        continue
                u, i = fields[0], fields[1]
                if not u or not i:
                    raise RawInputError(f"{path}: line {lineno}: empty "
                                        f"{'user' if not u else 'item'} id: {line[:80]!r}")
                users.append(u)
                items.append(i)
    except UnicodeDecodeError:
        raise RawInputError(f"{path}: line {lineno}: not UTF-8 text (binary file?)") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise RawInputError(f"{path}: cannot read ({e})") from None
    if not users:
        raise RawInputError(f"{path}: no rows (empty file or header only)")
    return np.asarray(users), np.asarray(items)
