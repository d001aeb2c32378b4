"""Readers of raw behavior logs: (user, item) pairs from TSV/CSV/space-separated text or Parquet.

Accepted text formats (optionally gzip-compressed, `.gz`):
- tab-separated, e.g. the authors' `uid\\tsid` files (header line optional);
- comma-separated (header optional);
- whitespace-separated `u i` lines.
Only the first two columns are read (user, item), as the authors' loader does; extra columns are
ignored. Parquet files need two columns named user/item (or uid/sid, user_id/item_id), or exactly
two columns. Raw ids may be integers or strings; text ids are returned as the file's text,
Parquet ids in their column's type; `data_prep.ids` decides the id type and the dense ids.
A NUL byte or another control character in a line is an error, never part of an id.

Tab- and comma-separated text is parsed by `pyarrow.csv` in streaming blocks (about 20x the
line loop). With `ints=True` (any `--ids` but `str`) a file whose every id is a decimal integer is
parsed straight to int64 columns (3x the string parse): the values Arrow's cast of the trimmed
text gives, which is what `data_prep.ids` would turn the strings into; a file with any other
token is read as strings. Anything that parser cannot take as the line loop would (ragged
columns, whitespace-separated files, leading blank lines, bytes that are not UTF-8, control
characters, empty ids) is read again by the line loop, whose errors name the file and line, so
both paths accept the same files, give the same pairs and the same messages.

Every problem is a `RawInputError` naming the file, the line (1-based) and what is wrong.
"""
from __future__ import annotations

import gzip
import io
import re
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mba_dist.errors import RawInputError

HEADER_NAMES = {"uid", "sid", "user", "item", "user_id", "item_id", "userid", "itemid", "u", "i",
                "iid", "users", "items"}
PARQUET_COLUMNS = [("user", "item"), ("uid", "sid"), ("user_id", "item_id")]
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # NUL and the other controls (tab separates)


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


def _is_header(fields: list[str], header: str) -> bool:
    """Whether a file's first line `fields` is a header (`header`: auto | yes | no)."""
    return header == "yes" or (header == "auto" and (fields[0].lower() in HEADER_NAMES
                                                    or fields[1].lower() in HEADER_NAMES))


Ids = "np.ndarray | pa.Array"  # int64 (numpy) or strings (a pyarrow string array)


def read_pairs(path: str | Path, header: str = "auto",
               progress: Callable[[int], None] | None = None, ints: bool = False
               ) -> tuple[Ids, Ids]:
    """Return (users, items) raw ids: pyarrow string arrays of the text (numpy int64 when `ints`
    and every id of the file is an integer), or for Parquet the column's own type (numpy int64
    for integer columns and for float columns of whole numbers, else strings). `header`: auto |
    yes | no. `progress(rows)` is called as text is parsed. Which type the ids get is
    `data_prep.ids`' decision."""
    path = Path(path)
    if not path.exists():
        raise RawInputError(f"{path}: file does not exist")
    if not path.is_file():
        raise RawInputError(f"{path}: not a regular file")
    if is_parquet(path):
        return _read_parquet(path)
    fast = _read_text_arrow(path, header, progress, ints)
    if fast is not None:
        return fast
    users: list[str] = []
    items: list[str] = []
    for _, u, i in _text_rows(path, header):
        users.append(u)
        items.append(i)
    if not users:
        raise RawInputError(f"{path}: no rows (empty file or header only)")
    return pa.array(users, pa.string()), pa.array(items, pa.string())


_BAD_ID = r"^\s*$|" + CONTROL.pattern  # empty, or a control character in it


def _first_line(path: Path) -> str | None:
    """The first line, or None when it is blank or unreadable (the line loop says why)."""
    try:
        with _open_binary(path) as f:
            line = f.readline().decode("utf-8").rstrip("\n\r")
    except (UnicodeDecodeError, OSError, EOFError, gzip.BadGzipFile):
        return None
    return line if line.strip() else None


def _read_text_arrow(path: Path, header: str, progress: Callable[[int], None] | None,
                     ints: bool = False) -> tuple[Ids, Ids] | None:
    """The pairs of a tab/comma-separated file through `pyarrow.csv`, or None when the line loop
    must read it (module docstring)."""
    first = _first_line(path)
    if first is None:
        return None
    sep = _detect_sep(first)
    fields = _split(first, sep)
    if sep is None or len(fields) < 2:
        return None
    skip = 1 if _is_header(fields, header) else 0
    if ints:
        try:
            got = _arrow_columns(path, sep, skip, pa.int64(), progress)
        except (pa.ArrowException, OSError, KeyError):
            got = None  # a token that is not an integer (or a file only the loop reads)
        if got is not None and not any(c.null_count for c in got):  # empty ids: the loop says where
            return got[0].to_numpy(), got[1].to_numpy()
    try:
        return _arrow_columns(path, sep, skip, pa.string(), progress)
    except (pa.ArrowException, OSError, KeyError):
        return None  # ragged rows, not UTF-8, a truncated gzip, one column: the line loop


def _arrow_columns(path: Path, sep: str, skip: int, kind: pa.DataType,
                   progress: Callable[[int], None] | None) -> tuple[pa.Array, pa.Array] | None:
    """The first two columns of `kind`, streamed in blocks; string ids are trimmed, and an empty
    one or a control character in one gives None (the line loop names the line)."""
    import pyarrow.csv as pcsv

    columns = {"f0": kind, "f1": kind}
    stream = pa.input_stream(str(path), compression="gzip" if path.suffix == ".gz" else None)
    reader = pcsv.open_csv(
        stream,
        read_options=pcsv.ReadOptions(skip_rows=skip, autogenerate_column_names=True,
                                      block_size=16 << 20),
        parse_options=pcsv.ParseOptions(delimiter=sep, quote_char=False),
        convert_options=pcsv.ConvertOptions(column_types=columns, include_columns=list(columns)))
    users, items, rows = [], [], 0
    for batch in reader:
        u, i = batch.column(0), batch.column(1)
        if kind == pa.string():
            u, i = pc.utf8_trim_whitespace(u), pc.utf8_trim_whitespace(i)
            if pc.any(pc.or_(pc.match_substring_regex(u, _BAD_ID),
                             pc.match_substring_regex(i, _BAD_ID))).as_py():
                return None
        users.append(u)
        items.append(i)
        rows += len(u)
        if progress is not None:
            progress(rows)
    if rows == 0:
        return None
    return (pa.chunked_array(users, kind).combine_chunks(),
            pa.chunked_array(items, kind).combine_chunks())


def is_parquet(path: Path) -> bool:
    return path.suffix == ".parquet" or path.name.endswith(".parquet.gz")


def row_name(path: Path, header: str, index: int) -> str:
    """Where the `index`-th pair of `read_pairs(path)` is: "line N" of a text file (blank
    lines and the header counted) or "row N" of a Parquet file (read again: only on errors)."""
    if is_parquet(Path(path)):
        return f"row {index + 1}"
    for k, (lineno, _, _) in enumerate(_text_rows(Path(path), header)):
        if k == index:
            return f"line {lineno}"
    return f"pair {index + 1}"


def _ids_of_column(path: Path, name: str, col) -> np.ndarray:
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise RawInputError(f"{path}: row {row + 1}: empty {name} id")
    t = col.type
    if pa.types.is_integer(t):
        return col.to_numpy().astype(np.int64)
    if pa.types.is_floating(t):  # ids written through a float column: 3.0 is the id 3
        v = col.to_numpy()
        bad = ~np.isfinite(v) | (v != np.round(v)) | (np.abs(v) >= 2.0 ** 63)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise RawInputError(f"{path}: row {row + 1}: {name} id {float(v[row])} in a float column "
                                "is not a whole number")
        return v.astype(np.int64)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        bad = pc.match_substring_regex(col, CONTROL.pattern)
        if pc.any(bad).as_py():
            row = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
            raise RawInputError(f"{path}: row {row + 1}: {name} id contains a control "
                                "character (NUL, ...)")
        v = col.cast(pa.string())
        empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(v)), 0).to_numpy(
            zero_copy_only=False)
        if empty.any():
            raise RawInputError(f"{path}: row {int(np.flatnonzero(empty)[0]) + 1}: empty {name} id")
        return v
    raise RawInputError(f"{path}: column {name} has type {t}; ids are integers or strings")


def _read_parquet(path: Path) -> tuple[Ids, Ids]:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:  # corrupt or truncated files
        raise RawInputError(f"{path}: not a readable Parquet file ({e})") from None
    names = table.column_names
    cols = next((c for c in PARQUET_COLUMNS if c[0] in names and c[1] in names), None)
    if cols is None:
        if len(names) != 2:
            raise RawInputError(f"{path}: Parquet needs columns user/item (or uid/sid, "
                                f"user_id/item_id) or exactly two columns; found {names}")
        cols = (names[0], names[1])
    out = [_ids_of_column(path, c, table.column(c).combine_chunks()) for c in cols]
    if len(out[0]) == 0:
        raise RawInputError(f"{path}: no rows")
    return out[0], out[1]


def _text_rows(path: Path, header: str) -> Iterator[tuple[int, str, str]]:
    """(line number, user, item) of every pair line of a text file."""
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
                if CONTROL.search(line):
                    raise RawInputError(f"{path}: line {lineno}: contains a control character "
                                        f"(NUL, ...): {line[:80]!r}")
                if first:
                    sep = _detect_sep(line)
                fields = _split(line, sep)
                if len(fields) < 2:
                    raise RawInputError(f"{path}: line {lineno}: expected at least 2 columns "
                                        f"(user, item), found {len(fields)}: {line[:80]!r}")
                if first:
                    first = False
                    if _is_header(fields, header):
                        continue
                u, i = fields[0], fields[1]
                if not u or not i:
                    raise RawInputError(f"{path}: line {lineno}: empty "
                                        f"{'user' if not u else 'item'} id: {line[:80]!r}")
                yield lineno, u, i
    except UnicodeDecodeError:
        raise RawInputError(f"{path}: line {lineno}: not UTF-8 text (binary file?)") from None
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise RawInputError(f"{path}: cannot read ({e})") from None
