"""`mba-dist bench`: the MBA rows over worker counts and the reference rows beside them, written
as bench.md / .csv / .json / .png (and profile.txt) under the bench's own output directory."""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from mba_dist import config as C
from mba_dist.bench import train as B
from mba_dist.data.dataset import Dataset
from mba_dist.errors import ArgumentError
from mba_dist.files import atomic_write_bytes, ensure_dir


@dataclass(frozen=True)
class Suite:
    workers: list[int]
    data: str | None = None
    config: str | None = None
    users: int = 21_716
    items: int = 7_977
    rows: int = 860_000
    batch: int = 2048
    steps: int = 100
    warmup: int = 10
    optim: str = "adagrad"
    repeat: int = 1
    device: str = "cpu"
    baselines: bool = True
    profile: bool = False
    ray: bool = False
    lightgcn: bool = False  # also the plain-torch step with t = LightGCN (`model.t: lightgcn`)


def _rows(s: Suite, spec: B.BenchSpec) -> list[dict]:
    """MBA over the worker counts, then the reference rows."""
    rows = B.run_workers(spec, s.workers, s.repeat, s.ray)
    if s.device == "cpu" and max(s.workers) > 1:
        # W workers on W cores can at best reach W x one worker on one core
        one_core = B.run_workers(dataclasses.replace(spec, threads=1), [1], s.repeat, s.ray)[0]
        rows.append({**one_core, "scaling_efficiency": None,
                     "note": "per-core reference: W workers on W cores reach at most W x this"})
    torch_spec = B.with_backend(spec, "torch", "sparse_adam")
    if s.baselines or s.lightgcn:
        print("side by side: plain-torch backend" + (", t = LightGCN" if s.lightgcn else "")
              + (", tables only, authors'-style step, implicit BPR" if s.baselines else ""),
              file=sys.stderr)
        torch_row = B.run_workers(torch_spec, [1], s.repeat, s.ray)[0]
        rows.append({**torch_row, "scaling_efficiency": None})
    if s.lightgcn:  # the same step, t propagated over the target graph every step
        lg = B.run_workers(dataclasses.replace(
            torch_spec, overrides=(*spec.overrides, "model.t=lightgcn")), [1], s.repeat, s.ray)[0]
        rows.append({**lg, "scaling_efficiency": None,
                     "note": f"{lg['triples_per_s'] / torch_row['triples_per_s']:.2f}x the "
                             "plain-torch MF row (each step propagates the whole graph)"})
    if s.baselines:
        floor = B.run_workers(dataclasses.replace(spec, step="tables"), [1], s.repeat, s.ray)[0]
        rows.append({**floor, "scaling_efficiency": None,
                     "note": "the same lookups and fused updates, no MBA maths: the floor"})
        rows += B.baseline_rows(spec, authors_steps=max(2, s.steps // 10))
    return rows


def run_suite(s: Suite, out: Path) -> str:
    """Runs the suite, writes its files under `out`, returns the report."""
    if s.repeat < 1:
        raise ArgumentError(f"--repeat must be at least 1, got {s.repeat}")
    # Read here: a missing or bad config fails before any worker starts, and workers (Ray Train
    # ones run elsewhere, in another directory) get its content and the dataset's absolute path.
    config = C.to_dict(C.load_config(s.config)) if s.config else None
    data = str(Path(s.data).resolve()) if s.data else None
    if data:
        Dataset(data)  # a missing or incomplete dataset: one clear line, here
    spec = B.BenchSpec(data=data, config=config, users=s.users, items=s.items, rows=s.rows,
                       batch=s.batch, steps=s.steps, warmup=s.warmup, device=s.device,
                       optim=s.optim)
    what = f"dataset {s.data}" if s.data else f"synthetic {s.users:,} x {s.items:,}, {s.rows:,} rows"
    where = "Ray Train workers" if s.ray else "local processes"
    print(f"benchmarking the MBA step on {what}, workers {s.workers} ({where}), global batch "
          f"{s.batch}, {s.steps} steps after {s.warmup}", file=sys.stderr)
    started_ray = False
    if s.ray:  # one Ray session for every row (each row's workers are a new Ray Train run)
        from mba_dist.dist.ray import init_ray
        started_ray = init_ray()
    try:
        rows = _rows(s, spec)
    finally:
        if started_ray:
            import ray
            ray.shutdown()
    ensure_dir(out)
    if s.profile:  # one more 1-worker run under the profiler, local (the file is written here)
        print("profiling the 1-worker step", file=sys.stderr)
        B.run_workers(dataclasses.replace(spec, profile_table=str((out / "profile.txt").resolve())),
                      [1])
    report = B.markdown(rows, f"MBA step, {what}, global batch {s.batch} ({s.device})")
    report += B.ratios(rows)
    atomic_write_bytes(out / "bench.md", (report + "\n").encode())
    atomic_write_bytes(out / "bench.csv", B.csv_text(rows).encode())
    atomic_write_bytes(out / "bench.json", json.dumps(rows, indent=2).encode())
    png = B.plot_png(rows, out / "bench.png", f"MBA step, {what}, global batch {s.batch} "
                                              f"({s.device})")
    print(f"wrote {out}/bench.md, bench.csv, bench.json" + (", bench.png" if png else
          " (no bench.png: matplotlib is not installed)") + (", profile.txt" if s.profile else ""),
          file=sys.stderr)
    return report
