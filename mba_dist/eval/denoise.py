"""Denoising, measured (the paper's RQ2, which it argues but does not measure directly): how well
a model's scores separate a user's auxiliary items that reflect a true preference from the ones
that are noise.

The candidates are each user's auxiliary pairs that are not train purchases (clicks or cart
adds that did not end in a known purchase). Which of them are true:
- on synthetic data, the planted truth says so exactly (`truth` split: true preferences that are
  not train purchases; every other click is a false one);
- on real data, the later purchases stand in for it: a candidate is positive when the user buys
  the item in the test split (validation purchases are left out of the candidates).

A model's denoising AUC is the mean over users (with both kinds of candidates) of the chance that
one of their positive candidates scores above one of their negative ones (ties count half).
"""
from __future__ import annotations

import numpy as np
import torch

from mba_dist.data.pairs import Pairs, contains, merge_pairs, subtract_pairs
from mba_dist.eval.scorers import Scorer


def candidates(data) -> tuple[Pairs, np.ndarray, str]:
    """(candidate pairs, their labels, what the labels are) of a `TrainData` with an auxiliary
    behavior (module docstring)."""
    n = data.num_items
    known = merge_pairs([data.target] + ([data.valid] if data.valid is not None else []), n)
    pairs = subtract_pairs(data.aux, known, n)
    truth, against = ((data.truth, "planted truth") if data.truth is not None
                      else (data.test, "test purchases"))
    return pairs, contains(truth.keys(n), pairs.users * n + pairs.items), against


def pair_scores(scorer: Scorer, pairs: Pairs, num_items: int, memory_mb: int) -> np.ndarray:
    """The scorer's score of every (user, item) pair (pairs sorted by user), one block of users'
    full score rows at a time (`memory_mb` bounds a block)."""
    out = np.empty(len(pairs), dtype=np.float64)
    users, starts = np.unique(pairs.users, return_index=True)
    ends = np.r_[starts[1:], len(pairs)]
    block = max(1, (memory_mb << 20) // (4 * max(num_items, 1)))
    for b in range(0, len(users), block):
        ids = torch.as_tensor(users[b:b + block], dtype=torch.int64)
        scorer.set_users(ids)
        rows = scorer.scores(0, num_items).cpu().numpy()
        for k in range(len(ids)):
            s, e = starts[b + k], ends[b + k]
            out[s:e] = rows[k, pairs.items[s:e]]
    return out


def per_user_auc(users: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """Mean over users with both labels of P(score of a positive > score of a negative), ties
    half (average ranks within each user); returns (AUC, number of users)."""
    order = np.lexsort((scores, users))
    u, s, y = users[order], scores[order], labels[order]
    n = len(u)
    # average ranks (1-based) within each user, equal scores sharing their mean rank
    new_user = np.r_[True, u[1:] != u[:-1]]
    new_run = new_user | np.r_[True, s[1:] != s[:-1]]
    user_start = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
    run_id = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_end = np.r_[run_start[1:], n]
    rank = (run_start + run_end - 1) / 2.0 - user_start[run_start] + 1.0
    ranks = rank[run_id]
    uid = np.cumsum(new_user) - 1
    pos = np.bincount(uid, weights=y.astype(np.float64))
    tot = np.bincount(uid).astype(np.float64)
    neg = tot - pos
    rank_pos = np.bincount(uid, weights=ranks * y)
    both = (pos > 0) & (neg > 0)
    if not both.any():
        return float("nan"), 0
    auc = (rank_pos[both] - pos[both] * (pos[both] + 1) / 2) / (pos[both] * neg[both])
    return float(auc.mean()), int(both.sum())


def denoising_table(data, rows: dict[str, Scorer], memory_mb: int) -> dict[str, dict]:
    """{model: {"auc", "users", "candidates", "positive", "against"}} for the scorers `rows`."""
    pairs, labels, against = candidates(data)
    out = {}
    for name, scorer in rows.items():
        auc, users = per_user_auc(pairs.users, pair_scores(scorer, pairs, data.num_items,
                                                           memory_mb), labels)
        out[name] = {"auc": auc, "users": users, "candidates": int(len(pairs)),
                     "positive": int(labels.sum()), "against": against}
    return out


def markdown(tab: dict, aux: str) -> str:
    first = next(iter(tab.values()))
    lines = [f"Denoising AUC on the {aux} pairs that are not train purchases "
             f"({first['candidates']:,} pairs, {first['positive']:,} positive by the "
             f"{first['against']}; mean over {first['users']:,} users with both kinds)", "",
             "| model | denoising AUC |", "|---|---|"]
    lines += [f"| {name} | {row['auc']:.4f} |" for name, row in tab.items()]
    return "\n".join(lines)
