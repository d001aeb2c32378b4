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

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test", "truth")


def pairs_path(root: Path, split: str, behavior: str) -> Path:
    return Path(root) / split / f"{behavior}.parquet"


def write_pairs(path: Path, users: np.ndarray, items: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"user": pa.array(users, pa.int64()), "item": pa.array(items, pa.int64())})
    pq.write_table(table, path)
