"""The per-row work of the Ray Data stream, run in Ray tasks: the sorted key arrays of the
pair sets and the filter; and the membership index of a key array, which the training workers'
negatives and seen-in masks read too (`stream.StreamSource`).

Kept apart from `stream` so that a Ray task imports numpy, pyarrow, the sampler and the
dataset helpers only, not torch (every fresh worker process would otherwise pay for importing it).
"""
from __future__ import annotations

import numpy as np

from mba_dist.data.pairs import contains, unique_ints
from mba_dist.data.sampler import Observed

_OBSERVED: dict[str, Observed] = {}


def keys_of(paths: list[str], num_items: int, filters: list | None = None) -> np.ndarray:
    """The sorted unique keys of the pairs in `paths` (with `filters`, `dataset.user_filters`:
    of one user range only, read by row-group statistics)."""
    import pyarrow.parquet as pq
    keys = [pq.read_table(p, columns=["user", "item"], filters=filters) for p in paths]
    return unique_ints(np.concatenate([t.column("user").to_numpy().astype(np.int64) * num_items
                                       + t.column("item").to_numpy().astype(np.int64)
                                       for t in keys]))


def union_keys(*keys: np.ndarray) -> np.ndarray:
    return unique_ints(np.concatenate(keys))


def subtract_keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The sorted keys of `a` that are not in `b`."""
    return a[~contains(b, a)]


def observed(ref, num_items: int, cache: dict = _OBSERVED) -> Observed:
    """The membership index of an object-store key array, fetched (zero-copy on the same node:
    one copy per node, shared by its processes) and indexed once per `cache` (by default once
    per Ray worker process, which lives no longer than its cluster)."""
    import ray
    k = ref.hex()
    if k not in cache:
        cache[k] = Observed(ray.get(ref), num_items)
    return cache[k]


def drop_known(batch: dict, keys_ref, num_items: int) -> dict:
    u, i = batch["user"].astype(np.int64), batch["item"].astype(np.int64)
    keep = ~observed(keys_ref, num_items).contains(u, i)
    return {"user": u[keep], "item": i[keep]}
