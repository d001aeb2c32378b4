"""Top-N recommendation lists in raw ids (what `mba-dist run` and `recommend` export)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from mba_dist.data.dataset import Dataset
from mba_dist.data.pairs import CSR
from mba_dist.eval.ranking import rank_top_k
from mba_dist.eval.scorers import Scorer


def top_n_table(scorer: Scorer, ds: Dataset, users: np.ndarray, mask: CSR, n: int,
                memory_mb: int) -> pa.Table:
    """(user, item, rank, score) in raw ids; rank 1 is the best; masked items never appear."""
    cols: dict[str, list] = {"user": [], "item": [], "rank": [], "score": []}
    for uc, v, i in rank_top_k(scorer, users, n, mask, ds.num_items, memory_mb):
        keep = torch.isfinite(v).numpy()  # fewer than n unmasked items: shorter list
        k = v.shape[1]
        cols["user"].append(np.repeat(uc, k)[keep.ravel()])
        cols["item"].append(i.numpy().ravel()[keep.ravel()])
        cols["rank"].append(np.tile(np.arange(1, k + 1), len(uc))[keep.ravel()])
        cols["score"].append(v.numpy().ravel()[keep.ravel()])
    u = np.concatenate(cols["user"]) if cols["user"] else np.zeros(0, np.int64)
    it = np.concatenate(cols["item"]) if cols["item"] else np.zeros(0, np.int64)
    return pa.table({
        "user": ds.raw_ids("user", u), "item": ds.raw_ids("item", it),
        "rank": np.concatenate(cols["rank"]).astype(np.int32) if cols["rank"] else np.zeros(0, np.int32),
        "score": np.concatenate(cols["score"]).astype(np.float32) if cols["score"] else np.zeros(0, np.float32),
    })
