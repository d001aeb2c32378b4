"""Vectorised negative sampling.

`exclude` mode draws items uniformly and redraws, for the whole batch at once, those that hit the
user's observed pairs (membership by binary search in the sorted int64 keys user*num_items+item;
nothing materialises a user x item matrix). It is the paper's "not clicked, not bought" negative.
`uniform` mode accepts every draw (what the authors' code does in effect).

A user who has interacted with almost every item could keep hitting; after `max_rounds` redraws
the few remaining draws are made exactly from the user's complement (the r-th item the user has
not observed, found by binary search on observed[k] - k). Only a user who has observed every
item gets an observed one (counted in `stats["accepted_hits"]`).
"""
from __future__ import annotations

import numpy as np


def contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Boolean mask: which `keys` are in `sorted_keys`."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    pos = np.searchsorted(sorted_keys, keys)
    pos[pos == len(sorted_keys)] = 0
    return sorted_keys[pos] == keys


class NegativeSampler:
    def __init__(self, num_items: int, exclude_keys: np.ndarray | None, seed: int,
                 max_rounds: int = 10):
        self.num_items = num_items
        self.keys = exclude_keys  # sorted int64 keys, or None for uniform sampling
        self.rng = np.random.default_rng(seed)
        self.max_rounds = max_rounds
        self.stats = {"redraws": 0, "accepted_hits": 0}

    def sample(self, users: np.ndarray) -> np.ndarray:
        """One negative item per user; int64 [B]."""
        neg = self.rng.integers(0, self.num_items, size=len(users), dtype=np.int64)
        if self.keys is None:
            return neg
        base = users.astype(np.int64) * self.num_items
        todo = np.flatnonzero(contains(self.keys, base + neg))
        for _ in range(self.max_rounds):
            if len(todo) == 0:
                break
            self.stats["redraws"] += len(todo)
            neg[todo] = self.rng.integers(0, self.num_items, size=len(todo), dtype=np.int64)
            todo = todo[contains(self.keys, base[todo] + neg[todo])]
        for k in todo:  # rare: users with few unobserved items
            neg[k] = self._from_complement(int(users[k]))
        return neg

    def _from_complement(self, user: int) -> int:
        lo = np.searchsorted(self.keys, user * self.num_items)
        hi = np.searchsorted(self.keys, (user + 1) * self.num_items)
        observed = self.keys[lo:hi] - user * self.num_items  # sorted items of the user
        free = self.num_items - len(observed)
        if free == 0:
            self.stats["accepted_hits"] += 1
            return int(self.rng.integers(0, self.num_items))
        r = int(self.rng.integers(0, free))
        # the r-th unobserved item is r + #{k : observed[k] - k <= r}
        return r + int(np.searchsorted(observed - np.arange(len(observed)), r, side="right"))
