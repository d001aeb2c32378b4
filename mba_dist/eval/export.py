"""Top-N recommendation lists in raw ids (what `mba-dist run` and `recommend` export)."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
import torch

from mba_dist.data.dataset import Dataset
from mba_dist.data.pairs import CSR
from mba_dist.eval.ranking import rank_top_k
from mba_dist.eval.scorers import Scorer


def _block(ds: Dataset, users: np.ndarray, items: np.ndarray, ranks: np.ndarray,
           scores: np.ndarray) -> pa.Table:
    return pa.table({"user": ds.raw_id_array("user", users),
                     "item": ds.raw_id_array("item", items),
                     "rank": pa.array(ranks, pa.int32()), "score": pa.array(scores, pa.float32())})


def top_n_blocks(scorer: Scorer, ds: Dataset, users: np.ndarray, mask: CSR, n: int,
                 memory_mb: int) -> Iterator[pa.Table]:
    """(user, item, rank, score) in raw ids, one table per block of `users` (`rank_top_k`:
    collective with sharded factors, each rank its own users); rank 1 is the best; masked
    items never appear. A rank without users yields one empty table."""
    empty = True
    for uc, v, i in rank_top_k(scorer, users, n, mask, ds.num_items, memory_mb):
        keep = torch.isfinite(v).numpy().ravel()  # fewer than n unmasked items: shorter list
        k = v.shape[1]
        if len(uc):
            empty = False
            yield _block(ds, np.repeat(uc, k)[keep], i.numpy().ravel()[keep],
                         np.tile(np.arange(1, k + 1), len(uc))[keep], v.numpy().ravel()[keep])
    if empty:
        none = np.zeros(0, np.int64)
        yield _block(ds, none, none, none, np.zeros(0, np.float32))


def top_n_table(scorer: Scorer, ds: Dataset, users: np.ndarray, mask: CSR, n: int,
                memory_mb: int) -> pa.Table:
    """`top_n_blocks` as one table."""
    return pa.concat_tables(top_n_blocks(scorer, ds, users, mask, n, memory_mb))
