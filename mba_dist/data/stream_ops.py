"""The per-row work of the Ray Data stream, run in Ray worker processes.

Kept apart from `stream` so that a Ray worker imports numpy, pyarrow, the sampler and the
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
    """The membership index of an object-store key array, fetched (zero-copy on the same node)
    and indexed once per worker process."""
    import ray
    k = ref.hex()
    if k not in _OBSERVED:
        _OBSERVED[k] = Observed(ray.get(ref), num_items)
    return _OBSERVED[k]


def drop_known(batch: dict, keys_ref, num_items: int) -> dict:
    u, i = batch["user"].astype(np.int64), batch["item"].astype(np.int64)
    keep = ~_observed(keys_ref, num_items).contains(u, i)
    return {"user": u[keep], "item": i[keep]}


def add_negatives(batch: dict, keys_ref, num_items: int) -> dict:
    u = batch["user"].astype(np.int64)
    observed = None if keys_ref is None else _observed(keys_ref, num_items)
    sampler = NegativeSampler(num_items, observed, seed=None)
    return {"user": u, "item": batch["item"].astype(np.int64), "neg": sampler.sample(u)}


def add_seen_in(batch: dict, keys_refs: list, num_items: int) -> dict:
    """k > 1 auxiliary behaviors: a "seen" column, bit b set where the row's pair is a train
    pair of behavior b (`data.batches.Batch.positive`, from the behaviors' key arrays)."""
    u, i = batch["user"], batch["item"]
    seen = np.zeros(len(u), np.int64)
    for b, ref in enumerate(keys_refs):
        seen |= _observed(ref, num_items).contains(u, i).astype(np.int64) << b
    return {**batch, "seen": seen}


def seen_rows(seen: np.ndarray, k: int) -> np.ndarray:
    """The "seen" bits of `add_seen_in` as bool [k, n]."""
    return ((seen[None, :] >> np.arange(k)[:, None]) & 1).astype(bool)
