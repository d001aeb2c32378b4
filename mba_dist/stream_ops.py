"""The per-row work of the Ray Data stream, run in Ray worker processes.

Kept apart from `stream` so that a Ray worker imports numpy, pyarrow and the sampler only, not
torch (every fresh worker process would otherwise pay for importing it).
"""
from __future__ import annotations

import numpy as np

from mba_dist.sampler import NegativeSampler, contains

_KEYS: dict[str, np.ndarray] = {}


def keys_of(paths: list[str], num_items: int) -> np.ndarray:
    import pyarrow.parquet as pq
    keys = [pq.read_table(p, columns=["user", "item"]) for p in paths]
    return np.unique(np.concatenate([t.column("user").to_numpy().astype(np.int64) * num_items
                                     + t.column("item").to_numpy().astype(np.int64)
                                     for t in keys]))


def union_keys(*keys: np.ndarray) -> np.ndarray:
    return np.union1d(*keys) if len(keys) == 2 else np.unique(np.concatenate(keys))


def _cached(ref) -> np.ndarray:
    """An object-store array, fetched once per worker process (zero-copy on the same node)."""
    import ray
    k = ref.hex()
    if k not in _KEYS:
        _KEYS[k] = ray.get(ref)
    return _KEYS[k]


def drop_known(batch: dict, keys_ref, num_items: int) -> dict:
    u, i = batch["user"].astype(np.int64), batch["item"].astype(np.int64)
    keep = ~contains(_cached(keys_ref), u * num_items + i)
    return {"user": u[keep], "item": i[keep]}


def add_negatives(batch: dict, keys_ref, num_items: int) -> dict:
    u = batch["user"].astype(np.int64)
    sampler = NegativeSampler(num_items, None if keys_ref is None else _cached(keys_ref), seed=None)
    return {"user": u, "item": batch["item"].astype(np.int64), "neg": sampler.sample(u)}
