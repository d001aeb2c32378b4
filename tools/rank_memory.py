"""Peak memory per process of a streamed run, and what each rank holds of the pairs.

    .venv/bin/python tools/rank_memory.py [--data data/synth_large] [--size large] \\
        [--workers 2] [--repeat 3] [--steps 20] [--user-fraction 0.002] [--out runs/rank_memory]

Writes the synthetic set first when `--data` is not there (`mba-dist synth --size SIZE`).
Then, `--repeat` times:
- `pairs`: in a fresh process each, the peak RSS growth of loading rank 0's `TrainData` with its
  masks and auxiliary candidates, whole (what every streaming worker read before it held its
  own users' part only) and as rank 0's part of `--workers`;
- `run`: one `mba-dist run --workers W --set train.input=stream` of every stage (one epoch of
  `--steps` steps each, evaluations on a `--user-fraction` sample of the users, no export of
  recommendations), with each
  worker's peak RSS from its metrics.json and the driver's peak RSS (VmHWM, polled).
Prints every figure and the medians.
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

from mba_dist.bench.eval import _rss_kib

PAIRS_CODE = """
import json, sys
from mba_dist import config as C
from mba_dist.bench.eval import _rss_kib
from mba_dist.data.dataset import Dataset
from mba_dist.data.train_data import TrainData
from mba_dist.data.pairs import user_range

def hwm():
    return _rss_kib("VmHWM") / 1024.0

root, config, world = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = C.load_config(config)
ds = Dataset(root)
before = hwm()
d = TrainData.load(ds, cfg, user_range(ds.num_users, 0, world) if world else None)
held = [d.mask, d.test_mask] + ([d.csr(d.aux)] if d.aux is not None else [])
print(json.dumps({"growth_mb": hwm() - before,
                  "pairs": sum(len(p) for p in (d.target, d.aux, d.valid, d.test) if p is not None)}))
"""


def _hwm_of(pid: int) -> float | None:
    """The peak RSS (MiB) of process `pid` so far, or None once it is gone."""
    try:
        return _rss_kib("VmHWM", pid) / 1024.0
    except OSError:
        return None


def pairs_growth(data: str, config: str, world: int) -> dict:
    out = subprocess.run([sys.executable, "-c", PAIRS_CODE, data, config, str(world)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def run_once(data: str, config: str, out: Path, workers: int, steps: int,
             fraction: float) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    sets = ["train.input=stream", f"train.max_steps_per_epoch={steps}", "pretrain.epochs=1",
            "mba.epochs=1", f"eval.user_fraction={fraction}", "train.merged_baseline=false",
            "train.checkpoint_every=0", "model.backend=torchrec", "optim.mode=adagrad",
            "optim.lr=0.05", "eval.top_n=0"]
    cmd = [sys.executable, "-m", "launch.cli", "run", "--data", data, "--config", config,
           "--out", str(out), "--workers", str(workers), "-q"]
    cmd += [a for s in sets for a in ("--set", s)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    driver = 0.0
    while proc.poll() is None:
        driver = max(driver, _hwm_of(proc.pid) or 0.0)
        time.sleep(0.5)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"workers_mb": metrics["peak_rss_mb"], "driver_mb": round(driver, 1),
            "seconds": round(time.perf_counter() - t, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/synth_large")
    p.add_argument("--size", default="large")
    p.add_argument("--config", default="configs/synthetic.yaml")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--user-fraction", type=float, default=0.002)
    p.add_argument("--out", default="runs/rank_memory")
    p.add_argument("--skip-run", action="store_true", help="the pairs figures only")
    a = p.parse_args(argv)
    if not Path(a.data, "meta.json").is_file():
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "launch.cli", "synth", "--size", a.size,
                        "--out", a.data], check=True)
        print(f"synthetic set {a.data} written in {time.perf_counter() - t:.0f} s", flush=True)
    rows: dict[str, list] = {"whole": [], "part": [], "run": []}
    for r in range(a.repeat):
        for label, world in (("whole", 0), ("part", a.workers)):
            g = pairs_growth(a.data, a.config, world)
            rows[label].append(g)
            print(f"[{r}] pairs {label}: {g['pairs']:,} pairs, peak RSS growth "
                  f"{g['growth_mb']:.0f} MiB", flush=True)
        if not a.skip_run:
            res = run_once(a.data, a.config, Path(a.out) / f"run{r}", a.workers, a.steps,
                           a.user_fraction)
            rows["run"].append(res)
            print(f"[{r}] run: workers {res['workers_mb']} MiB, driver {res['driver_mb']} MiB, "
                  f"{res['seconds']} s", flush=True)
    med = statistics.median
    print(f"\nmedians of {a.repeat}:")
    for label in ("whole", "part"):
        print(f"  pairs held by rank 0, {label}: {med(g['growth_mb'] for g in rows[label]):.0f} "
              f"MiB ({rows[label][0]['pairs']:,} pairs)")
    if rows["run"]:
        per = list(zip(*(r["workers_mb"] for r in rows["run"])))
        print("  run, worker peak RSS: " + ", ".join(f"rank {k} {med(v):.0f} MiB"
                                                    for k, v in enumerate(per)))
        print(f"  run, driver peak RSS: {med(r['driver_mb'] for r in rows['run']):.0f} MiB; "
              f"wall {med(r['seconds'] for r in rows['run']):.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
