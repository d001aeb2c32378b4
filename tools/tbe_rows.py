"""Cost of one torchrec table's fused lookup and update against its number of rows.

    .venv/bin/python tools/tbe_rows.py [--rows 30000,300000,3000000] [--ids 98304]

One `EmbeddingBagCollection` table of dim 32 (bags of one id, as the MBA step uses them) with
the optimizer fused into backward, in a 1-rank gloo group on loopback. Each line is the mean
forward and backward (with the fused update) time over 10 steps of `--ids` uniform random ids,
per optimizer and table size: what separates a step on Beibei-size tables from one on tables
of millions of rows (DESIGN §9).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mba_dist.dist.local import local_process_group  # noqa: E402


def time_table(optim, rows: int, ids: int, steps: int = 10, warmup: int = 3) -> tuple[float, float]:
    """Mean (forward, backward) seconds of one table of `rows` rows, `ids` ids a step."""
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
        name="t", embedding_dim=32, num_embeddings=rows, feature_names=["f"])],
        device=torch.device("meta"))
    apply_optimizer_in_backward(optim, ebc.parameters(), {"lr": 0.01})
    model = DistributedModelParallel(ebc, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    fwd = bwd = 0.0
    for s in range(warmup + steps):
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=["f"], values=torch.randint(0, rows, (ids,), generator=gen),
            lengths=torch.ones(ids, dtype=torch.int32))
        t0 = time.perf_counter()
        out = model(kjt).values()
        t1 = time.perf_counter()
        out.backward(torch.ones_like(out))
        t2 = time.perf_counter()
        if s >= warmup:
            fwd, bwd = fwd + t1 - t0, bwd + t2 - t1
    return fwd / steps, bwd / steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="30000,300000,3000000", help="comma-separated table sizes")
    ap.add_argument("--ids", type=int, default=98_304, help="ids looked up a step")
    a = ap.parse_args()
    logging.disable(logging.WARNING)  # the planner's warnings, once per table
    warnings.filterwarnings("ignore", category=FutureWarning)
    from mba_dist.tables.torchrec_tables import FUSED_OPTIMIZERS  # the trainer's optim.mode kernels

    print(f"{a.ids:,} ids a step, one table of dim 32, mean of 10 steps\n")
    print("| optimizer | rows | forward ms | backward + fused update ms |")
    print("|---|---|---|---|")
    with local_process_group():
        for name, optim in FUSED_OPTIMIZERS.items():
            for rows in (int(r) for r in a.rows.split(",")):
                fwd, bwd = time_table(optim, rows, a.ids)
                print(f"| {name} | {rows:,} | {fwd * 1e3:.1f} | {bwd * 1e3:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
