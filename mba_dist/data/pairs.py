"""Pairs of (user, item) ids in memory and the set operations on them.

Sets of pairs are sorted int64 keys user * num_items + item: membership is a binary search,
union and difference are sorts (numpy's `np.unique` / `np.isin` hash integers first here, 35 s
for 20M values against 0.5 s for a sort). `CSR` holds per-user item lists for masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Boolean mask: which `keys` are in `sorted_keys`."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    pos = np.searchsorted(sorted_keys, keys)
    pos[pos == len(sorted_keys)] = 0
    return sorted_keys[pos] == keys


def unique_ints(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of an integer array, as `np.unique` returns them.

    `np.unique` hashes integer input before sorting in this numpy: 35 s for 20M values here,
    against 0.5 s for a sort. Input made of a few sorted runs (concatenated pair sets) takes a
    stable sort, which merges the runs in one linear pass."""
    if len(values) == 0:
        return np.sort(values)
    low, span = _span(values)
    if span is not None:  # a narrow range (dense ids): mark the values present, in one pass
        present = np.zeros(span, dtype=bool)
        present[values - low] = True
        return (np.flatnonzero(present) + low).astype(values.dtype)
    runs = 1 + np.count_nonzero(values[1:] < values[:-1])
    values = np.sort(values, kind="stable" if runs <= 64 else "quicksort")
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def _span(values: np.ndarray) -> tuple[int, int | None]:
    """(min, max - min + 1) of integer `values` when that range is at most 4x their number (a
    table over it costs no more than a sort), else (min, None)."""
    low, high = int(values.min()), int(values.max())
    span = high - low + 1
    return low, (span if span <= 4 * len(values) + 1024 else None)


def dense_index(uniq: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Positions of `values` in the sorted distinct `uniq` (each value is in it): a lookup table
    over a narrow range, else a binary search."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    low, span = _span(uniq)
    if span is not None and span <= 4 * len(values) + 1024:
        table = np.empty(span, dtype=np.int64)
        table[uniq - low] = np.arange(len(uniq), dtype=np.int64)
        return table[values - low]
    return np.searchsorted(uniq, values).astype(np.int64)


def dedup_sorted(users: np.ndarray, items: np.ndarray, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique (user, item) pairs sorted by user then item."""
    keys = unique_ints(users.astype(np.int64, copy=False) * num_items
                       + items.astype(np.int64, copy=False))
    return keys // num_items, keys % num_items


def user_range(num_users: int, rank: int, world: int) -> tuple[int, int]:
    """The users [lo, hi) a rank ranks in every evaluation and, when it streams its batches,
    the only users whose pairs it reads: W contiguous ranges of the dense ids, so that a rank
    reads its part of the user-sorted Parquet files by row-group statistics."""
    return num_users * rank // world, num_users * (rank + 1) // world


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


class CSR:
    """Per-user item lists in CSR form (indptr, indices sorted within a row) of the users
    first..num_users-1 (all users by default; a rank's own range in `TrainData`'s part; rows of
    users outside it are not there and must not be asked for)."""

    def __init__(self, pairs: Pairs, num_users: int, first: int = 0):
        self.first = first
        u, i = pairs.users, pairs.items
        if len(u) > 1 and ((u[1:] < u[:-1]) | ((u[1:] == u[:-1]) & (i[1:] <= i[:-1]))).any():
            self.indices = i[np.lexsort((i, u))]
        else:  # sorted already (what `Pairs` holds from a dataset): the items are the rows
            self.indices = i
        counts = np.bincount(pairs.users - first, minlength=num_users - first)
        self.indptr = np.zeros(num_users - first + 1, dtype=np.int64)
        np.cumsum(counts, out=self.indptr[1:])

    def row(self, u: int) -> np.ndarray:
        u -= self.first
        return self.indices[self.indptr[u]:self.indptr[u + 1]]

    def cells(self, users: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """(row in `users`, item - lo) of every entry of `users`' rows with item in [lo, hi)."""
        users = users - self.first
        starts, ends = self.indptr[users], self.indptr[users + 1]
        counts = ends - starts
        rows = np.repeat(np.arange(len(users)), counts)
        offs = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        cols = self.indices[np.repeat(starts, counts) + offs]
        keep = (cols >= lo) & (cols < hi)
        return rows[keep], cols[keep] - lo
