"""MBA training throughput through Ray Train: the Ray Data stream against in-memory batches.

    .venv/bin/python tools/stream_bench.py --data data/beibei --config configs/beibei_cart.yaml \\
        [--workers 1,2] [--epochs 3] [--repeat 3] [--out runs/stream_bench]

First trains the stage-1 models once (`--local`, one epoch each) so that every measured run
reuses them (`pretrain.from_run`) and trains the MBA stage only. Then, `--repeat` times in
turn, for each worker count: `train.input=memory`, `stream` with `train.stream_shuffle=blocks`
and with `full`, each a fresh `mba-dist run` of `--epochs` MBA epochs (validation only after
the last). Reports each run's MBA triples/s (triples over the epochs' wall time, waiting for
data included) and wall time, the medians, and stream / memory per worker count.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = {"memory": ["train.input=memory"],
         "stream blocks": ["train.input=stream", "train.stream_shuffle=blocks"],
         "stream full": ["train.input=stream", "train.stream_shuffle=full"]}


def _run(cli: list[str], out: Path, sets: list[str], extra: list[str]) -> float:
    shutil.rmtree(out, ignore_errors=True)
    cmd = cli + ["--out", str(out), "-q"] + extra + [a for s in sets for a in ("--set", s)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def _mba_rate(out: Path) -> float:
    recs = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    mba = [r for r in recs if r["stage"] == "mba"]
    return sum(r["triples"] for r in mba) / sum(r["seconds"] for r in mba)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default="runs/stream_bench")
    a = p.parse_args(argv)
    root = Path(a.out)
    cli = [sys.executable, "-m", "launch.cli", "run", "--data", a.data, "--config", a.config]
    base = root / "stage1"
    common = ["train.merged_baseline=false", "model.backend=torchrec", "optim.mode=adagrad",
              "optim.lr=0.003"]
    if not (base / "metrics.json").is_file():
        print(f"stage 1 (one epoch each) into {base}", flush=True)
        _run(cli, base, common + ["pretrain.epochs=1", "mba.epochs=1"], ["--local"])
    sets = common + [f"pretrain.from_run={base}", f"mba.epochs={a.epochs}",
                     f"train.eval_every={a.epochs}", "mba.patience=1000"]
    rates: dict[tuple[int, str], list[float]] = {}
    walls: dict[tuple[int, str], list[float]] = {}
    for rep in range(a.repeat):
        for w in map(int, a.workers.split(",")):
            for mode, more in MODES.items():
                out = root / f"w{w}_{mode.replace(' ', '_')}"
                wall = _run(cli, out, sets + more, ["--workers", str(w)])
                rate = _mba_rate(out)
                rates.setdefault((w, mode), []).append(rate)
                walls.setdefault((w, mode), []).append(wall)
                print(f"repeat {rep + 1} workers {w} {mode:13s} {rate:10,.0f} triples/s  "
                      f"wall {wall:6.1f} s", flush=True)
    print(f"\nMBA triples/s, median of {a.repeat} ({a.epochs} epochs a run):")
    for w in map(int, a.workers.split(",")):
        mem = statistics.median(rates[(w, "memory")])
        for mode in MODES:
            r = statistics.median(rates[(w, mode)])
            print(f"  workers {w} {mode:13s} {r:10,.0f}  ({r / mem:.2f}x memory; min "
                  f"{min(rates[(w, mode)]):,.0f}, max {max(rates[(w, mode)]):,.0f}; wall "
                  f"{statistics.median(walls[(w, mode)]):.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
