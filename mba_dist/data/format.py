"""The prepared dataset's on-disk format (written by `data_prep`, read by `data.dataset`).

    DIR/meta.json                 counts, behaviors, target, split protocol, source checksums
    DIR/train/<behavior>.parquet  (user: int64, item: int64) dense ids, sorted, no duplicates
    DIR/valid/<target>.parquet
    DIR/test/<target>.parquet
    DIR/truth/<target>.parquet    synthetic data only: planted preferences not in train
    DIR/user_map.parquet          (raw: str|int64, id: int64); absent when ids are the identity
    DIR/item_map.parquet

Writers build the whole directory under a temporary name beside DIR (`files.atomic_dir`) and
rename it into place, so a failed run never leaves a half-written dataset and never touches an
existing one.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mba_dist.errors import OutputExistsError

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test", "truth")


def is_dataset(path: Path) -> bool:
    """Whether `path` is a dataset this tool wrote: its meta.json names a format version."""
    try:
        meta = json.loads((Path(path) / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "format_version" in meta and "splits" in meta


def check_output(path: Path, overwrite: bool) -> None:
    """Whether a dataset may be written at `path` (before any work): a new path, or with
    `overwrite` a dataset this tool wrote. Anything else there is the user's and is kept."""
    path = Path(path)
    if not path.exists():
        return
    if not overwrite:
        raise OutputExistsError(f"{path} already exists (pass --overwrite to replace it)")
    if not is_dataset(path):
        raise OutputExistsError(f"{path} is not an mba-dist dataset (no meta.json of one); "
                                "--overwrite replaces only a dataset mba-dist wrote")


def pairs_path(root: Path, split: str, behavior: str) -> Path:
    return Path(root) / split / f"{behavior}.parquet"


def write_pairs(path: Path, users: np.ndarray, items: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"user": pa.array(users, pa.int64()), "item": pa.array(items, pa.int64())})
    pq.write_table(table, path)
