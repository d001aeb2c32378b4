"""The per-row work of the Ray Data stream: the key arrays and the filter, run in Ray tasks,
and the negatives and seen-in masks, drawn in the training workers from the same key arrays.

Kept apart from `stream` so that a Ray task imports numpy, pyarrow, the sampler and the
dataset helpers only, not torch (every fresh worker process would otherwise pay for importing it).
"""
from __future__ import annotations

import numpy as np

from mba_dist.data.pairs import contains, unique_ints
from mba_dist.data.sampler import NegativeSampler, Observed

_OBSERVED: dict[str, Observed] = {}


def keys_of(paths: list[str], num_items: int) -> np.ndarray:
    import pyarrow.parquet as pq
    keys = [pq.read_table(p, columns=["user", "item"]) for p in paths]
    return unique_ints(np.concatenate([t.column("user").to_numpy().astype(np.int64) * num_items
                                       + t.column("item").to_numpy().astype(np.int64)
                                       for t in keys]))


def union_keys(*keys: np.ndarray) -> np.ndarray:
    return unique_ints(np.concatenate(keys))


def subtract_keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The sorted keys of `a` that are not in `b`."""
    return a[~contains(b, a)]


def _observed(ref, num_items: int) -> Observed:
    """The membership index of an object-store key array, fetched (zero-copy on the same node:
    one copy per node, shared by its processes) and indexed once per process."""
    import ray
    k = ref.hex()
    if k not in _OBSERVED:
        _OBSERVED[k] = Observed(ray.get(ref), num_items)
    return _OBSERVED[k]


def drop_known(batch: dict, keys_ref, num_items: int) -> dict:
    u, i = batch["user"].astype(np.int64), batch["item"].astype(np.int64)
    keep = ~_observed(keys_ref, num_items).contains(u, i)
    return {"user": u[keep], "item": i[keep]}


def negatives(users: np.ndarray, keys_ref, num_items: int, seed) -> np.ndarray:
    """One negative per row for `users` (int64), avoiding the pairs of `keys_ref` (None:
    uniform)."""
    observed = None if keys_ref is None else _observed(keys_ref, num_items)
    return NegativeSampler(num_items, observed, seed).sample(users)


def seen_in(users: np.ndarray, items: np.ndarray, keys_refs, num_items: int) -> np.ndarray:
    """k > 1 auxiliary behaviors: bool [k, n], whether each row's pair is a train pair of each
    behavior (`data.batches.Batch.positive`, from the behaviors' key arrays)."""
    return np.stack([_observed(ref, num_items).contains(users, items) for ref in keys_refs])
