"""Grid search of MBA hyperparameters over fixed stage-1 models (validation-selected).

    .venv/bin/python tools/sweep.py --data data/beibei --config configs/beibei_cart.yaml \\
        --pretrained runs/beibei --out runs/sweep_beibei \\
        --grid mba.c1=10,100,1000 --grid mba.c2=1,10,100 [--set mba.epochs=30 ...]

Each grid point is a full `mba-dist run --local` (`jobs.train_run`; pretraining reused from --pretrained) in its own run
directory; `sweep.csv` lists validation and test Recall@20 / NDCG@20 per point. The best point
is chosen on validation Recall@20 only; the test columns are reported, never used to choose.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
from pathlib import Path

from mba_dist.jobs import train_run
from mba_dist.run_dir import RunDir


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--pretrained", required=True, help="run directory with checkpoints/pre_*.pt")
    p.add_argument("--out", required=True)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    keys, values = [], []
    for g in a.grid:
        k, vs = g.split("=", 1)
        keys.append(k)
        values.append(vs.split(","))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for combo in itertools.product(*values):
        point = [f"{k}={v}" for k, v in zip(keys, combo)]
        name = "_".join(f"{k.split('.')[-1]}{v}" for k, v in zip(keys, combo)) or "base"
        run_dir = out / name
        if (run_dir / "metrics.json").is_file():
            m = RunDir(run_dir).read_metrics()
        else:
            m, _ = train_run(a.data, run_dir, a.config,
                             a.set + point + [f"pretrain.from_run={a.pretrained}"], local=True)
        row = {"point": " ".join(point), "best_epoch": m["best_epoch"],
               "valid_recall@20": m["valid"]["recall@20"], "valid_ndcg@20": m["valid"]["ndcg@20"],
               "test_recall@20": m["test"]["recall@20"], "test_ndcg@20": m["test"]["ndcg@20"],
               "triples_per_s": m["stages"]["mba"]["triples_per_s"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    with (out / "sweep.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    best = max(rows, key=lambda r: r["valid_recall@20"])
    print(f"best on validation: {best['point']}  valid R@20 {best['valid_recall@20']:.4f}  "
          f"test R@20 {best['test_recall@20']:.4f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
