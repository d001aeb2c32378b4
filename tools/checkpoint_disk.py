"""Peak disk use of a run's Ray Train checkpoints, against the size of one checkpoint.

    .venv/bin/python tools/checkpoint_disk.py --out runs/ckpt_disk [--set train.checkpoint_every=1]

Runs `mba-dist demo` (through Ray Train) into OUT and samples the bytes under OUT/run/ray every
20 ms while it trains: the peak total, the largest single checkpoint directory, their ratio,
and what is left once the run has finished. Ray Train keeps two checkpoints
(`CheckpointConfig(num_to_keep=2)`) and deletes the oldest only after the newest is complete,
so the expected peak is three.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _sizes(ray_dir: Path) -> dict[str, int]:
    """Bytes of each checkpoint directory under `ray_dir` (name -> size)."""
    out: dict[str, int] = {}
    for root, _, files in os.walk(ray_dir):
        rel = Path(root).relative_to(ray_dir).parts
        name = next((p for p in rel if p.startswith("checkpoint_")), None)
        if name is None:
            continue
        for f in files:
            try:
                out[name] = out.get(name, 0) + (Path(root) / f).stat().st_size
            except FileNotFoundError:  # deleted while walking
                pass
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/ckpt_disk")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    ray_dir = Path(a.out) / "run" / "ray"
    if (Path(a.out) / "run" / "metrics.json").exists():  # the demo would reuse it: no training
        print(f"{a.out} holds a finished demo run, which would be reused without writing a "
              "checkpoint; choose another --out", file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "launch.cli", "demo", "--out", a.out]
    for kv in a.set:
        cmd += ["--set", kv]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak_total, largest, peak_count, seen = 0, 0, 0, set()
    while proc.poll() is None:
        sizes = _sizes(ray_dir) if ray_dir.is_dir() else {}
        seen |= set(sizes)
        peak_total = max(peak_total, sum(sizes.values()))
        largest = max([largest, *sizes.values()])
        peak_count = max(peak_count, len(sizes))
        time.sleep(0.02)
    if proc.returncode != 0:
        print(f"the demo failed (exit {proc.returncode})", file=sys.stderr)
        return 1
    left = sum(_sizes(ray_dir).values()) if ray_dir.is_dir() else 0
    report = {"checkpoints_written": len(seen), "largest_checkpoint_bytes": largest,
              "peak_bytes": peak_total, "peak_checkpoints": peak_count,
              "peak_in_checkpoints": round(peak_total / largest, 2) if largest else None,
              "bytes_left_after_finish": left, "sets": a.set}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
