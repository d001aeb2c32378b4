"""The prepared dataset on disk, and its in-memory form for training and evaluation.

Layout of a dataset directory (written by `mba-dist prepare` / `mba-dist synth`):

    DIR/meta.json                 counts, behaviors, target, split protocol, source checksums
    DIR/train/<behavior>.parquet  (user: int64, item: int64) dense ids, sorted, no duplicates
    DIR/valid/<target>.parquet
    DIR/test/<target>.parquet
    DIR/truth/<target>.parquet    synthetic data only: planted preferences not in train
    DIR/user_map.parquet          (raw: str|int64, id: int64); absent when ids are the identity
    DIR/item_map.parquet

Writers build the whole directory under a temporary name beside DIR and rename it into place,
so a failed run never leaves a half-written dataset and never touches an existing one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mba_dist.sampler import contains

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test", "truth")


class DatasetError(ValueError):
    """A dataset directory that is missing, incomplete or inconsistent."""


@contextmanager
def atomic_dir(final: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `final` only if the block succeeds.

    An existing `final` is kept unless `overwrite`; even then it is replaced only after the new
    one is complete (old moved aside, new renamed in, old deleted).
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} already exists (pass --overwrite to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file through a temporary sibling and rename, so readers never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_pairs(path: Path, users: np.ndarray, items: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"user": pa.array(users, pa.int64()), "item": pa.array(items, pa.int64())})
    pq.write_table(table, path)


def unique_ints(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of an integer array, as `np.unique` returns them.

    `np.unique` hashes integer input before sorting in this numpy: 35 s for 20M values here,
    against 0.5 s for a sort. Input made of a few sorted runs (concatenated pair sets) takes a
    stable sort, which merges the runs in one linear pass."""
    if len(values) == 0:
        return np.sort(values)
    runs = 1 + np.count_nonzero(values[1:] < values[:-1])
    values = np.sort(values, kind="stable" if runs <= 64 else "quicksort")
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def dedup_sorted(users: np.ndarray, items: np.ndarray, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique (user, item) pairs sorted by user then item."""
    keys = unique_ints(users.astype(np.int64) * num_items + items.astype(np.int64))
    return keys // num_items, keys % num_items


@dataclass
class Pairs:
    """Positive (user, item) pairs of one behavior in one split, sorted, unique."""

    users: np.ndarray  # int64 [n]
    items: np.ndarray  # int64 [n]

    def __len__(self) -> int:
        return len(self.users)

    def keys(self, num_items: int) -> np.ndarray:
        """Sorted int64 keys user*num_items+item: the exclusion/membership structure (pairs
        are kept sorted, so the stable sort is one linear pass)."""
        return np.sort(self.users * num_items + self.items, kind="stable")


def merge_pairs(parts: list[Pairs], num_items: int) -> Pairs:
    if not parts:
        return Pairs(np.zeros(0, np.int64), np.zeros(0, np.int64))
    u, i = dedup_sorted(np.concatenate([p.users for p in parts]),
                        np.concatenate([p.items for p in parts]), num_items)
    return Pairs(u, i)


def subtract_pairs(a: Pairs, b: Pairs, num_items: int) -> Pairs:
    """Pairs of `a` not in `b`."""
    keep = ~contains(b.keys(num_items), a.users * num_items + a.items)
    return Pairs(a.users[keep], a.items[keep])


class Dataset:
    """A prepared dataset, loaded lazily split by split."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not self.root.is_dir():
            raise DatasetError(f"dataset directory {self.root} does not exist")
        if not meta_path.is_file():
            raise DatasetError(f"{meta_path} is missing: is {self.root} a prepared dataset?")
        try:
            self.meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{meta_path}: not valid JSON ({e})") from None
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise DatasetError(f"{meta_path}: format_version {self.meta.get('format_version')!r}, "
                               f"this mba-dist reads {FORMAT_VERSION}")
        self.num_users = int(self.meta["num_users"])
        self.num_items = int(self.meta["num_items"])
        self.target = str(self.meta["target"])
        self._cache: dict[tuple[str, str], Pairs] = {}

    def behaviors(self, split: str) -> list[str]:
        return sorted(self.meta["splits"].get(split, {}))

    def has(self, split: str, behavior: str) -> bool:
        return behavior in self.meta["splits"].get(split, {})

    def path(self, split: str, behavior: str) -> Path:
        return self.root / split / f"{behavior}.parquet"

    def pairs_file(self, split: str, behavior: str) -> Path:
        """The Parquet file of one split and behavior; a clear error when it is not there."""
        if not self.has(split, behavior):
            have = {s: self.behaviors(s) for s in SPLITS if self.behaviors(s)}
            raise DatasetError(f"{self.root}: no {split!r} split of behavior {behavior!r} "
                               f"(the dataset has {have})")
        path = self.path(split, behavior)
        if not path.is_file():
            raise DatasetError(f"{path} is listed in meta.json but missing")
        return path

    def pairs(self, split: str, behavior: str) -> Pairs:
        key = (split, behavior)
        if key not in self._cache:
            path = self.pairs_file(split, behavior)
            t = pq.read_table(path, columns=["user", "item"])
            p = Pairs(t.column("user").to_numpy().astype(np.int64),
                      t.column("item").to_numpy().astype(np.int64))
            if len(p) and (p.users.max() >= self.num_users or p.items.max() >= self.num_items
                           or p.users.min() < 0 or p.items.min() < 0):
                raise DatasetError(f"{path}: ids outside [0, num_users) x [0, num_items)")
            self._cache[key] = p
        return self._cache[key]

    def raw_ids(self, entity: str, ids: np.ndarray) -> np.ndarray:
        """Dense ids -> the raw ids of the input files (identity when no map is stored)."""
        path = self.root / f"{entity}_map.parquet"
        if not path.is_file():
            return ids
        raw = pq.read_table(path).column("raw").to_numpy(zero_copy_only=False)
        return raw[ids]

    def dense_ids(self, entity: str, raw: list[str]) -> np.ndarray:
        """Raw ids (as typed on a command line) -> dense ids; unknown ones raise, naming them."""
        path = self.root / f"{entity}_map.parquet"
        n = self.num_users if entity == "user" else self.num_items
        if path.is_file():
            t = pq.read_table(path)
            lookup = {str(r): int(i) for r, i in zip(t.column("raw").to_pylist(),
                                                      t.column("id").to_pylist())}
        else:
            lookup = None
        out, unknown = [], []
        for r in raw:
            if lookup is not None:
                v = lookup.get(str(r))
            else:
                v = int(r) if str(r).lstrip("-").isdigit() and 0 <= int(r) < n else None
            (unknown.append(r) if v is None else out.append(v))
        if unknown:
            shown = ", ".join(map(str, unknown[:10])) + (" ..." if len(unknown) > 10 else "")
            raise DatasetError(f"{self.root}: unknown {entity} id(s): {shown}")
        return np.asarray(out, dtype=np.int64)


class CSR:
    """Per-user item lists in CSR form (indptr [num_users+1], indices sorted within a row)."""

    def __init__(self, pairs: Pairs, num_users: int):
        order = np.lexsort((pairs.items, pairs.users))
        self.indices = pairs.items[order]
        counts = np.bincount(pairs.users, minlength=num_users)
        self.indptr = np.zeros(num_users + 1, dtype=np.int64)
        np.cumsum(counts, out=self.indptr[1:])

    def row(self, u: int) -> np.ndarray:
        return self.indices[self.indptr[u]:self.indptr[u + 1]]

    def counts(self) -> np.ndarray:
        return np.diff(self.indptr)
