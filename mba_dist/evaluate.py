"""Full-ranking evaluation and top-N export, chunked over users and items.

For each chunk of users and each chunk of items: scores by matrix product, the user's target
train items masked (CSR, never a dense user x item mask), and a running top-K merged across item
chunks. Memory is bounded by `memory_mb` (one score chunk plus top-K buffers).

Metrics (DESIGN §1), averaged over users with at least one evaluation item:
    Recall@K = |top-K  ∩  eval items of u| / |eval items of u|
    NDCG@K   = sum_{r < K, top[r] in eval} 1/log2(r+2)  /  sum_{r < min(K, |eval of u|)} 1/log2(r+2)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

import numpy as np
import torch

from mba_dist.dataset import CSR, Pairs
from mba_dist.sampler import contains

BYTES_PER_SCORE = 8  # two float32 score buffers (t and pre_f), per (user, item) cell


class Scorer(Protocol):
    def scores(self, users: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Scores of `users` [b] against items lo..hi-1; float32 [b, hi-lo]."""


@dataclass
class FactorScorer:
    """sum_k w_k * sigma(U_k[u] . I_k[i]), or the raw logit of one model when `raw=True`."""

    parts: list[tuple[float, torch.Tensor, torch.Tensor]]
    raw: bool = False

    def __post_init__(self):
        # Score chunks are written into reused buffers: a fresh [users, items] tensor per chunk
        # costs as much in page faults as the matrix product itself (K = 32 is write-bound).
        self._bufs: dict[tuple[int, int], list[torch.Tensor]] = {}

    def _buffers(self, b: int, n: int) -> list[torch.Tensor]:
        if (b, n) not in self._bufs:
            self._bufs = {(b, n): [torch.empty(b, n) for _ in self.parts[:2]]}
        return self._bufs[(b, n)]

    def scores(self, users: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        bufs = self._buffers(len(users), hi - lo)
        out = None
        for k, (w, U, I) in enumerate(self.parts):
            s = torch.mm(U[users], I[lo:hi].T, out=bufs[min(k, 1)])
            if not self.raw:
                s = torch.sigmoid_(s).mul_(w)
            out = s if out is None else out.add_(s)
        return out


def mba_scorer(t: tuple[torch.Tensor, torch.Tensor], pre_f: tuple[torch.Tensor, torch.Tensor],
               beta: float) -> FactorScorer:
    """score = beta * sigma(t) + (1 - beta) * sigma(pre_f) (paper Eq. 3)."""
    parts = [(beta, *t)]
    if beta < 1.0:
        parts.append((1.0 - beta, *pre_f))
    return FactorScorer(parts)


def mf_scorer(weights: tuple[torch.Tensor, torch.Tensor]) -> FactorScorer:
    return FactorScorer([(1.0, *weights)], raw=True)  # sigma is monotone: same ranking


@dataclass
class MemoryScorer:
    """Popularity, lifted by 1 for the user's items in `boost` (the "auxiliary memory" heuristic
    when `boost` is the auxiliary behavior; plain MostPop when it is None)."""

    popularity: torch.Tensor  # [num_items], in [0, 1)
    boost: CSR | None = None

    def scores(self, users: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        s = self.popularity[lo:hi].expand(len(users), hi - lo).clone()
        if self.boost is not None:
            rows, cols = _csr_cells(self.boost, users.numpy(), lo, hi)
            s[rows, cols] += 1.0
        return s


def popularity(pairs: Pairs, num_items: int) -> torch.Tensor:
    counts = np.bincount(pairs.items, minlength=num_items).astype(np.float64)
    return torch.from_numpy(counts / (counts.max() + 1.0)).float()


def _csr_cells(csr: CSR, users: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """(row in chunk, column - lo) of every CSR entry of `users` with item in [lo, hi)."""
    starts, ends = csr.indptr[users], csr.indptr[users + 1]
    counts = ends - starts
    rows = np.repeat(np.arange(len(users)), counts)
    offs = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    cols = csr.indices[np.repeat(starts, counts) + offs]
    keep = (cols >= lo) & (cols < hi)
    return rows[keep], cols[keep] - lo


def chunk_sizes(num_users: int, num_items: int, memory_mb: int) -> tuple[int, int]:
    budget = memory_mb * 2**20
    item_chunk = min(num_items, 1 << 16)
    user_chunk = max(1, min(num_users, budget // (item_chunk * BYTES_PER_SCORE)))
    return user_chunk, item_chunk


def rank_top_k(scorer: Scorer, users: np.ndarray, k: int, mask: CSR | None, num_items: int,
               memory_mb: int) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Yield (user chunk, top-k scores [b, k], top-k items [b, k]), masked items excluded."""
    k = min(k, num_items)
    user_chunk, item_chunk = chunk_sizes(len(users), num_items, memory_mb)
    for a in range(0, len(users), user_chunk):
        uc = users[a:a + user_chunk]
        ut = torch.from_numpy(uc)
        best_v = torch.full((len(uc), 0), -torch.inf)
        best_i = torch.zeros((len(uc), 0), dtype=torch.int64)
        for lo in range(0, num_items, item_chunk):
            hi = min(num_items, lo + item_chunk)
            s = scorer.scores(ut, lo, hi)
            if mask is not None:
                rows, cols = _csr_cells(mask, uc, lo, hi)
                s[rows, cols] = -torch.inf
            v, i = torch.topk(s, min(k, hi - lo), dim=1)
            best_v = torch.cat([best_v, v], 1)
            best_i = torch.cat([best_i, i + lo], 1)
            if best_v.shape[1] > k:
                best_v, idx = torch.topk(best_v, k, dim=1)
                best_i = torch.gather(best_i, 1, idx)
        yield uc, best_v, best_i


def evaluate(scorer: Scorer, truth: Pairs, mask: CSR | None, num_users: int, num_items: int,
             ks: tuple[int, ...] = (10, 20), memory_mb: int = 256) -> dict[str, float]:
    """Recall@K and NDCG@K over users with at least one `truth` pair."""
    n_truth = np.bincount(truth.users, minlength=num_users)
    users = np.flatnonzero(n_truth).astype(np.int64)
    keys = truth.keys(num_items)
    kmax = max(ks)
    discount = 1.0 / np.log2(np.arange(2, kmax + 2))
    cum_discount = np.r_[0.0, np.cumsum(discount)]
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    for uc, _, top in rank_top_k(scorer, users, kmax, mask, num_items, memory_mb):
        hits = contains(keys, (uc[:, None] * num_items + top.numpy()).ravel()).reshape(top.shape)
        n = n_truth[uc]
        for k in ks:
            h = hits[:, :k]
            sums[f"recall@{k}"] += float((h.sum(1) / n).sum())
            idcg = cum_discount[np.minimum(n, k)]
            sums[f"ndcg@{k}"] += float(((h * discount[:h.shape[1]]).sum(1) / idcg).sum())
    out = {key: v / max(len(users), 1) for key, v in sums.items()}
    out["users"] = int(len(users))
    return out
