"""`mba-dist prepare` throughput against `pyarrow.csv.read_csv` of the same file.

    .venv/bin/python tools/ingest_bench.py [--rows 20000000] [--repeat 3] [--out runs/ingest]

Writes a CSV of `--rows` integer (user, item) pairs (plus a small test file), then, `--repeat`
times in turn: `pyarrow.csv.read_csv` of it, `data_prep.readers.read_pairs` (the parse prepare
does), and the whole `prepare` (parse, ids, dedup, validation carve, Parquet). Prints the
median seconds and rows/s of each and the ratios to read_csv.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=20_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--out", default="runs/ingest")
    a = p.parse_args(argv)
    import pyarrow as pa
    import pyarrow.csv as pcsv

    from data_prep.prepare import PrepareSpec, parse_source, prepare
    from data_prep.readers import read_pairs

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = out / "buy.csv", out / "test.csv"
    if not train.exists() or sum(1 for _ in open(train, "rb")) != a.rows:
        rng = np.random.default_rng(0)
        users = rng.integers(0, max(a.rows // 20, 10), a.rows)
        items = rng.integers(0, max(a.rows // 50, 10), a.rows)
        pcsv.write_csv(pa.table({"user": users, "item": items}), train,
                       pcsv.WriteOptions(include_header=False, quoting_style="none"))
        test.write_text("".join(f"{u},{i}\n" for u, i in zip(users[:1000], items[1000:2000])))
    times: dict[str, list[float]] = {"pyarrow.csv.read_csv": [], "read_pairs": [], "prepare": []}
    for _ in range(a.repeat):
        t = time.perf_counter()
        pcsv.read_csv(train)
        times["pyarrow.csv.read_csv"].append(time.perf_counter() - t)
        t = time.perf_counter()
        read_pairs(train, ints=True)  # as prepare reads integer ids
        times["read_pairs"].append(time.perf_counter() - t)
        shutil.rmtree(out / "ds", ignore_errors=True)
        t = time.perf_counter()
        prepare(PrepareSpec(out=out / "ds", sources=[parse_source("train", f"purchase={train}"),
                                                     parse_source("test", f"purchase={test}")]),
                log=lambda m: None)
        times["prepare"].append(time.perf_counter() - t)
    base = statistics.median(times["pyarrow.csv.read_csv"])
    print(f"{a.rows:,} rows, median of {a.repeat}:")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"  {name:22s} {m:7.2f} s  {a.rows / m / 1e6:6.2f} M rows/s  "
              f"{base / m:5.2f}x read_csv  (min {min(ts):.2f}, max {max(ts):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
