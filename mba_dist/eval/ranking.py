"""Full-ranking evaluation and top-N export: exact, distributed over ranks, bounded in memory.

Layout of one evaluation (W ranks, I items):

    rank r owns the users [lo_r, hi_r) (`data.pairs.user_range`: W contiguous id ranges)
    and ranks those of them with at least one evaluation item, b at a time:
    rank r's users, in blocks of b:  [ block 0 ... | block 1 ... | ... ]   B blocks on every rank
    each block against item chunks [lo, hi) of n items:
        scores  = sum_k w_k * sigma(U_k[users] . I_k[lo:hi]^T)      one [b, n] buffer per part
        scores[user's target train items] = -inf                    CSR cells, no dense mask
        running top-K  <- merge(running top-K, top-K of the chunk)
    Recall/NDCG sums and user counts: all-reduced (float64) at the end.

A rank needs the evaluation pairs and the mask of its own users only (`TrainData` reads just
those when the run streams). Item and user factors come from a `Factors` source: local tensors
(`LocalFactors`), or the torchrec shards (`tables.stage_tables.ShardedFactors`), which
assemble one item chunk (or the ranks' user blocks) at a time from the shards every rank holds;
every rank therefore walks the same number of blocks (B, the largest of the ranks' counts) and
the same chunks in the same order, whether or not it has users left in a block.

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

from mba_dist.data.pairs import CSR, Pairs, contains, user_range
from mba_dist.dist.collective import all_reduce_max, all_reduce_sum, rank_world
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
    """Yield (a block of `users`, top-k scores [b, k], top-k items [b, k]) on the CPU, masked
    items excluded. `users`: this rank's users (each rank its own; collective with sharded
    factors, every rank walking as many blocks as the rank with the most)."""
    k = min(k, num_items)
    user_chunk, item_chunk = chunk_sizes(len(users), num_items, memory_mb)
    blocks = all_reduce_max(-(-len(users) // user_chunk), group)
    dev = scorer.device
    for a in range(0, blocks * user_chunk, user_chunk):
        uc = users[a:a + user_chunk]
        scorer.set_users(torch.from_numpy(uc))
        top = RunningTopK(len(uc), k, dev)
        for lo in range(0, num_items, item_chunk):
            hi = min(num_items, lo + item_chunk)
            s = scorer.scores(lo, hi)
            if mask is not None:
                rows, cols = mask.cells(uc, lo, hi)
                s[torch.from_numpy(rows).to(dev), torch.from_numpy(cols).to(dev)] = -torch.inf
            top.push(s, lo)
        yield uc, top.values.cpu(), top.items.cpu()


def sampled(users: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Whether each user is in the fixed `fraction` sample of `eval.user_fraction`: a hash of
    the id and the seed (splitmix64's finaliser), so that every rank decides alone and every
    world size, evaluation and run of the seed ranks the same users."""
    z = users.astype(np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (seed + 1)) % 2**64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) < fraction * 2.0**53


def own_users(pairs: Pairs, num_users: int, group=None, fraction: float = 1.0,
              seed: int = 0) -> tuple[Pairs, np.ndarray, np.ndarray]:
    """(the pairs of this rank's users, those users, their pair counts): `pairs` may hold every
    user's or only this rank's; with `fraction` < 1 only the users of the sample (`sampled`)."""
    lo, hi = user_range(num_users, *rank_world(group))
    keep = (pairs.users >= lo) & (pairs.users < hi)
    if fraction < 1.0:
        keep &= sampled(pairs.users, fraction, seed)
    if not keep.all():
        pairs = Pairs(pairs.users[keep], pairs.items[keep])
    users, counts = np.unique(pairs.users, return_counts=True)
    return pairs, users.astype(np.int64), counts


def evaluate(scorer: Scorer, truth: Pairs, mask: CSR | None, num_users: int, num_items: int,
             ks: tuple[int, ...] = (10, 20), memory_mb: int = 256, group=None,
             user_fraction: float = 1.0, seed: int = 0) -> dict[str, float]:
    """Recall@K and NDCG@K over users with at least one `truth` pair; with a process group,
    every rank ranks its own users (`truth` and `mask` need hold only theirs) and the sums are
    all-reduced. `user_fraction` < 1: only the users of a fixed sample (`sampled`, by `seed`)."""
    truth, users, n_truth = own_users(truth, num_users, group, user_fraction, seed)
    keys = truth.keys(num_items)
    kmax = max(ks)
    discount = 1.0 / np.log2(np.arange(2, kmax + 2))
    cum_discount = np.r_[0.0, np.cumsum(discount)]
    names = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    sums = dict.fromkeys(names, 0.0)
    at = 0
    for uc, _, top in rank_top_k(scorer, users, kmax, mask, num_items, memory_mb, group):
        hits = contains(keys, (uc[:, None] * num_items + top.numpy()).ravel()).reshape(top.shape)
        n, at = n_truth[at:at + len(uc)], at + len(uc)
        for k in ks:
            h = hits[:, :k]
            sums[f"recall@{k}"] += float((h.sum(1) / n).sum())
            idcg = cum_discount[np.minimum(n, k)]
            sums[f"ndcg@{k}"] += float(((h * discount[:h.shape[1]]).sum(1) / idcg).sum())
    total = torch.tensor([sums[n] for n in names] + [len(users)], dtype=torch.float64)
    *total, n_users = all_reduce_sum(total, group).tolist()
    out = {n: float(v) / max(n_users, 1) for n, v in zip(names, total)}
    out["users"] = int(n_users)
    return out
