"""Full-ranking evaluation and top-N export: exact, distributed over ranks, bounded in memory.

Layout of one evaluation (W ranks, E users with at least one evaluation item, I items):

    users, in blocks of W*b:  [ block 0 ........ | block 1 ........ | ... ]   same on every rank
    rank r scores block[r::W] (b users) against item chunks [lo, hi) of n items:
        scores  = sum_k w_k * sigma(U_k[users] . I_k[lo:hi]^T)      one [b, n] buffer per part
        scores[user's target train items] = -inf                    CSR cells, no dense mask
        running top-K  <- merge(running top-K, top-K of the chunk)
    Recall/NDCG sums and user counts: all-reduced (float64) at the end.

Item and user factors come from a `Factors` source: local tensors (`LocalFactors`), or the
torchrec shards (`tables.torchrec_tables.ShardedFactors`), which assemble one item chunk (or one user
block) at a time from the shards every rank holds; every rank therefore walks the same blocks
and chunks, in the same order, whether or not it has users left in a block.

Ties are broken by item id (lower first), in every chunking and on every rank, so the metrics do
not depend on `memory_mb` or the number of ranks; they agree with a brute-force stable argsort
exactly as long as the matrix product rounds a user's scores the same way in every batch shape.

Chunk sizes follow `memory_mb`: the score buffers (`BYTES_PER_SCORE` per user x item cell) fit in
it; the top-K buffers, the chunk's item factors and the CSR cells of the block are the overhead.

Metrics (DESIGN §1), averaged over users with at least one evaluation item:
    Recall@K = |top-K  ∩  eval items of u| / |eval items of u|
    NDCG@K   = sum_{r < K, top[r] in eval} 1/log2(r+2)  /  sum_{r < min(K, |eval of u|)} 1/log2(r+2)
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from mba_dist.data.pairs import CSR, Pairs, contains
from mba_dist.dist.collective import all_reduce_sum, rank_world
from mba_dist.eval.scorers import Scorer

# Per (user, item) cell of a block: two float32 score buffers (t and pre_f) and torch.topk's
# selection workspace (measured at about 0.7 bytes a cell on CPU).
BYTES_PER_SCORE = 10
MAX_ITEM_CHUNK = 1 << 16


def chunk_sizes(num_users: int, num_items: int, memory_mb: int) -> tuple[int, int]:
    """(users per rank per block, items per chunk): one block's score buffers fit `memory_mb`."""
    budget = memory_mb * 2**20
    item_chunk = max(1, min(num_items, MAX_ITEM_CHUNK))
    user_chunk = max(1, min(num_users, budget // (item_chunk * BYTES_PER_SCORE)))
    return user_chunk, item_chunk


def _by_score_then_item(v: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of (value, item) reordered by value descending, ties by item ascending."""
    i, p = torch.sort(i, dim=1)
    v = torch.gather(v, 1, p)
    v, q = torch.sort(v, dim=1, descending=True, stable=True)
    return v, torch.gather(i, 1, q)


def chunk_top_k(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of `s` [b, n] by (score desc, column asc), exactly.

    `torch.topk` picks arbitrarily among equal scores at the k-th place; rows where the (k+1)-th
    score equals the k-th take their k from every column scoring at least the k-th score.
    """
    b, n = s.shape
    if k >= n:
        return _by_score_then_item(s, torch.arange(n, device=s.device).expand(b, n))
    v, i = torch.topk(s, k + 1, dim=1)
    tied = (v[:, k] == v[:, k - 1]).nonzero().squeeze(1)
    v, i = v[:, :k].contiguous(), i[:, :k].contiguous()
    if len(tied):
        # Candidates (row, col) come out of nonzero row-major, columns ascending; two stable
        # sorts order them by (row, score desc, col asc); the first k of each row are kept.
        sub = s[tied]
        r, c = (sub >= v[tied, k - 1:k]).nonzero(as_tuple=True)
        val = sub[r, c]
        o = torch.sort(val, descending=True, stable=True).indices
        r, c, val = r[o], c[o], val[o]
        o = torch.sort(r, stable=True).indices
        r, c, val = r[o], c[o], val[o]
        counts = torch.bincount(r, minlength=len(tied))
        pos = torch.arange(len(r), device=s.device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        keep = pos < k
        v[tied[r[keep]], pos[keep]] = val[keep]
        i[tied[r[keep]], pos[keep]] = c[keep]
    return _by_score_then_item(v, i)


class RunningTopK:
    """Top-k across item chunks visited in ascending item order, ties by item id."""

    def __init__(self, b: int, k: int, device: torch.device):
        self.k = k
        self.values = torch.full((b, 0), -torch.inf, device=device)
        self.items = torch.zeros((b, 0), dtype=torch.int64, device=device)

    def push(self, s: torch.Tensor, lo: int) -> None:
        v, i = chunk_top_k(s, self.k)
        # Earlier chunks hold lower item ids: a stable sort of [kept | new] by score keeps ties
        # in item order.
        v, i = torch.cat([self.values, v], 1), torch.cat([self.items, i + lo], 1)
        v, q = torch.sort(v, dim=1, descending=True, stable=True)
        self.values, self.items = v[:, :self.k], torch.gather(i, 1, q[:, :self.k])


def rank_top_k(scorer: Scorer, users: np.ndarray, k: int, mask: CSR | None, num_items: int,
               memory_mb: int, group=None) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Yield (this rank's user chunk, top-k scores [b, k], top-k items [b, k]) on the CPU,
    masked items excluded. `users` is the full list, the same on every rank."""
    rank, world = rank_world(group)
    k = min(k, num_items)
    user_chunk, item_chunk = chunk_sizes(-(-len(users) // world), num_items, memory_mb)
    block = user_chunk * world
    dev = scorer.device
    for a in range(0, len(users), block):
        bu = users[a:a + block]
        mine = np.arange(rank, len(bu), world)
        uc = bu[mine]
        scorer.set_users(torch.from_numpy(bu), torch.from_numpy(mine))
        top = RunningTopK(len(uc), k, dev)
        for lo in range(0, num_items, item_chunk):
            hi = min(num_items, lo + item_chunk)
            s = scorer.scores(lo, hi)
            if mask is not None:
                rows, cols = mask.cells(uc, lo, hi)
                s[torch.from_numpy(rows).to(dev), torch.from_numpy(cols).to(dev)] = -torch.inf
            top.push(s, lo)
        yield uc, top.values.cpu(), top.items.cpu()


def evaluate(scorer: Scorer, truth: Pairs, mask: CSR | None, num_users: int, num_items: int,
             ks: tuple[int, ...] = (10, 20), memory_mb: int = 256, group=None) -> dict[str, float]:
    """Recall@K and NDCG@K over users with at least one `truth` pair; with a process group,
    every rank ranks its share of the users and the sums are all-reduced."""
    n_truth = np.bincount(truth.users, minlength=num_users)
    users = np.flatnonzero(n_truth).astype(np.int64)
    keys = truth.keys(num_items)
    kmax = max(ks)
    discount = 1.0 / np.log2(np.arange(2, kmax + 2))
    cum_discount = np.r_[0.0, np.cumsum(discount)]
    names = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    sums = dict.fromkeys(names, 0.0)
    for uc, _, top in rank_top_k(scorer, users, kmax, mask, num_items, memory_mb, group):
        hits = contains(keys, (uc[:, None] * num_items + top.numpy()).ravel()).reshape(top.shape)
        n = n_truth[uc]
        for k in ks:
            h = hits[:, :k]
            sums[f"recall@{k}"] += float((h.sum(1) / n).sum())
            idcg = cum_discount[np.minimum(n, k)]
            sums[f"ndcg@{k}"] += float(((h * discount[:h.shape[1]]).sum(1) / idcg).sum())
    total = torch.tensor([sums[n] for n in names], dtype=torch.float64)
    total = all_reduce_sum(total, group)
    out = {n: float(v) / max(len(users), 1) for n, v in zip(names, total)}
    out["users"] = int(len(users))
    return out
