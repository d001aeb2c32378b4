"""Atomic writes: a file or a directory appears whole or not at all.

The primitives only; who may write where is decided elsewhere (`run_dir` for run directories,
`data.format` for datasets).
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
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
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's are 0700
    try:
        yield tmp
        if check is not None:  # the path may have changed while the block ran
            check(final, overwrite)
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
