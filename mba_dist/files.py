"""Atomic writes: a file or a directory appears whole or not at all.

The primitives only; who may write where is decided elsewhere (`run_dir` for run directories,
`data.format` for datasets). Every temporary name carries the writer's pid and host
(`.NAME.tmp-PID@HOST-...`), so that the next writer of the same name removes what a killed one
left (`clear_leftovers`) and never touches the temporaries of a writer still alive.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from mba_dist.errors import OutputExistsError


def ensure_dir(path: Path) -> Path:
    """`path` as a directory (created with its parents); a clear error when a file is there."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_parquet(path: Path, table) -> None:
    """A pyarrow table as a Parquet file, written whole or not at all."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue())


def write_parquet_parts(path: Path, tables: Iterable) -> None:
    """pyarrow tables of one schema as one Parquet file, each written as it comes (one in
    memory at a time); into a directory the caller staged (`path` is not atomic)."""
    import pyarrow.parquet as pq

    writer = None
    try:
        for t in tables:
            if writer is None:
                writer = pq.ParquetWriter(str(path), t.schema)
            writer.write_table(t)
    finally:
        if writer is not None:
            writer.close()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())


def temp_prefix(name: str, kind: str = "tmp") -> str:
    """The start of a temporary sibling's name for `name`: `.NAME.KIND-PID@HOST-`."""
    return f".{name}.{kind}-{os.getpid()}@{_host()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clear_leftovers(parent: Path, name: str) -> list[Path]:
    """Remove the temporaries of `name` in `parent` that a killed writer on this host left
    (`temp_prefix`); returns what was removed. An `.old` (the previous version, moved aside
    during a swap) goes only once `name` itself is back in place."""
    parent = Path(parent)
    pattern = re.compile(rf"^\.{re.escape(name)}\.(tmp|old)-(\d+)@{re.escape(_host())}-")
    removed = []
    try:
        entries = list(parent.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for p in entries:
        m = pattern.match(p.name)
        if m is None or _alive(int(m.group(2))):
            continue
        if m.group(1) == "old" and not (parent / name).exists():
            continue  # killed mid-swap: the only copy
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file through a temporary sibling and rename, so readers never see half of it.
    The file gets the permissions the user's umask gives a new file (mkstemp's are 0600; on a
    cluster others read runs from shared storage)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_leftovers(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(final: Path, overwrite: bool = False,
               check: Callable[[Path, bool], None] | None = None) -> Iterator[Path]:
    """Yield a temporary directory that becomes `final` only if the block succeeds.

    An existing `final` is kept unless `overwrite`; even then it is replaced only after the new
    one is complete (old moved aside, new renamed in, old deleted). `check(final, overwrite)`
    may refuse (it raises) before anything is written, and runs again before the swap.
    """
    final = Path(final)
    if check is not None:
        check(final, overwrite)
    if final.exists() and not overwrite:
        raise OutputExistsError(f"{final} already exists (pass --overwrite to replace it)")
    tmp = temp_dir_for(final)
    try:
        yield tmp
        if check is not None:  # the path may have changed while the block ran
            check(final, overwrite)
        swap_in(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def temp_dir_for(final: Path) -> Path:
    """A new temporary sibling directory of `final` (`temp_prefix`), with the permissions of
    the umask (mkdtemp's are 0700); a killed writer's leftovers of `final` are removed first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clear_leftovers(final.parent, final.name)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(final.name), dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def swap_in(new: Path, final: Path) -> None:
    """Put the complete directory `new` at `final`: an existing `final` is moved aside, `new`
    renamed into place, then the earlier one deleted (a kill between the renames leaves the
    earlier version whole, under its `.old` name)."""
    if not final.exists():
        new.rename(final)
        return
    old = Path(tempfile.mkdtemp(prefix=temp_prefix(final.name, "old"), dir=final.parent))
    old.rmdir()  # a free name for the rename
    final.rename(old)
    new.rename(final)
    shutil.rmtree(old, ignore_errors=True)
