"""A prepared dataset (layout in `data.format`), loaded lazily split by split."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mba_dist.data.format import FORMAT_VERSION, SPLITS, pairs_path
from mba_dist.data.pairs import Pairs
from mba_dist.errors import DatasetError


def _num_rows(path: Path) -> int:
    """Rows of a Parquet file, from its footer."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowException) as e:
        raise DatasetError(f"{path}: not a readable Parquet file ({e})") from None


def user_filters(users: tuple[int, int] | None, num_users: int) -> list | None:
    """The pyarrow filter (None: every row) that reads the users [lo, hi) of a user-sorted
    file, skipping the row groups outside them. The range is left open at 0 and at num_users,
    so that ids outside [0, num_users) are still found, by the ranks reading the ends."""
    if users is None:
        return None
    lo, hi = users
    return ([("user", ">=", lo)] if lo > 0 else []) + (
        [("user", "<", hi)] if hi < num_users else []) or None


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
        self._cache: dict[tuple, Pairs] = {}
        self._raw: dict[str, pa.Array | None] = {}
        for entity, n in (("user", self.num_users), ("item", self.num_items)):
            path = self.root / f"{entity}_map.parquet"
            if path.is_file() and _num_rows(path) != n:
                raise DatasetError(f"{meta_path}: num_{entity}s is {n} but {path.name} maps "
                                   f"{_num_rows(path)} ids")

    @property
    def fingerprint(self) -> str:
        """The dataset's identity: a hash of its meta.json (counts, splits, the sources'
        checksums or the synthetic spec), the same wherever the directory is moved."""
        return hashlib.sha256(json.dumps(self.meta, sort_keys=True).encode()).hexdigest()[:16]

    def behaviors(self, split: str) -> list[str]:
        return sorted(self.meta["splits"].get(split, {}))

    def has(self, split: str, behavior: str) -> bool:
        return behavior in self.meta["splits"].get(split, {})

    def path(self, split: str, behavior: str) -> Path:
        return pairs_path(self.root, split, behavior)

    def pairs_file(self, split: str, behavior: str) -> Path:
        """The Parquet file of one split and behavior; a clear error when it is not there."""
        if not self.has(split, behavior):
            have = {s: self.behaviors(s) for s in SPLITS if self.behaviors(s)}
            raise DatasetError(f"{self.root}: no {split!r} split of behavior {behavior!r} "
                               f"(the dataset has {have})")
        path = self.path(split, behavior)
        if not path.is_file():
            raise DatasetError(f"{path} is listed in meta.json but missing")
        listed = self.meta["splits"][split][behavior].get("rows")
        if listed is not None and _num_rows(path) != listed:
            raise DatasetError(f"{path}: {_num_rows(path)} rows, but meta.json lists {listed}")
        return path

    def pairs(self, split: str, behavior: str, users: tuple[int, int] | None = None) -> Pairs:
        """The pairs of one split and behavior; with `users` = (lo, hi) only those of users
        lo..hi-1, read through a filter that skips the row groups of the user-sorted file
        outside them (`user_filters`)."""
        key = (split, behavior, users)
        if key not in self._cache:
            path = self.pairs_file(split, behavior)
            filters = user_filters(users, self.num_users)
            t = pq.read_table(path, columns=["user", "item"], filters=filters)
            p = Pairs(t.column("user").to_numpy().astype(np.int64, copy=False),
                      t.column("item").to_numpy().astype(np.int64, copy=False))
            if len(p) and (p.users.max() >= self.num_users or p.items.max() >= self.num_items
                           or p.users.min() < 0 or p.items.min() < 0):
                raise DatasetError(f"{path}: ids outside [0, num_users) x [0, num_items)")
            self._cache[key] = p
        return self._cache[key]

    def _raw_map(self, entity: str) -> pa.Array | None:
        """The raw ids of `entity` by dense id (read once), None when ids are the identity."""
        if entity not in self._raw:
            path = self.root / f"{entity}_map.parquet"
            self._raw[entity] = (pq.read_table(path).column("raw").combine_chunks()
                                 if path.is_file() else None)
        return self._raw[entity]

    def raw_id_array(self, entity: str, ids: np.ndarray) -> pa.Array:
        """Dense ids -> the raw ids of the input files, as an Arrow array of the map's type
        (int64 when no map is stored)."""
        ids = pa.array(np.asarray(ids, dtype=np.int64))
        raw = self._raw_map(entity)
        return ids if raw is None else raw.take(ids)

    def raw_ids(self, entity: str, ids: np.ndarray) -> np.ndarray:
        """Dense ids -> the raw ids of the input files (identity when no map is stored)."""
        if self._raw_map(entity) is None:
            return ids
        return self.raw_id_array(entity, ids).to_numpy(zero_copy_only=False)

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
