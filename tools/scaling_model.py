"""A scaling model on paper: the bytes an MBA step moves through collectives, measured on gloo
ranks here, and the efficiency they predict on many GPUs.

    .venv/bin/python tools/scaling_model.py [--workers 2,4] [--batch 2048] [--out runs/scaling]

1. **Measured.** `bench.train.bench_worker` (the trainer's `mba_step` on torchrec-sharded
   tables) runs on W local gloo ranks twice, with few and with more steps, with every
   `torch.distributed` collective wrapped to count what each rank sends to the others (an
   all-to-all's own split excluded). The difference over the extra steps is the per-step
   traffic (the one-time plan, barriers and gathers cancel). Synthetic sets of two shapes show
   that the traffic does not depend on the table rows.
2. **Model.** Each lookup of a model row owned by another rank moves d floats forward and
   their gradient back; with the rows spread over W ranks a rank's share of remote lookups is
   (W - 1) / W. So a rank sends `c * b * (W - 1) / W` bytes a step for a local batch b, with c
   (bytes per remote triple) fitted to the measurements. A step on W GPUs (weak scaling, b per
   GPU) takes `b / R + n * lat + bytes / bw` with R the one-GPU step rate measured on an H100
   (RESULTS §6), n the collectives a step, lat their latency; efficiency = (b / R) / that, with
   no overlap of communication and compute (an upper bound on the time, so a lower bound on
   efficiency). Two networks: every GPU on NVLink (450 GB/s a direction, an NVSwitch domain),
   and 8 GPUs a node on NVLink with nodes on one 100 Gb/s Ethernet link each (the off-node
   share of each rank's traffic, (W - 8) / (W - 1), through the node's link shared by its 8).

Writes OUT/scaling.md and prints it.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

COLLECTIVES = ("all_to_all_single", "all_reduce", "all_gather", "all_gather_into_tensor",
               "reduce_scatter", "reduce_scatter_tensor", "broadcast")
# One-GPU MBA step rates (triples/s, torch backend, Adagrad, H100; RESULTS §6) by batch, for the
# Beibei shape and for 2M x 500k (also used for 100M x 10M, which was not measured)
GPU_RATE = {"beibei": {2048: 311_479, 65_536: 4_959_024},
            "2M x 500k": {2048: 238_063, 65_536: 5_529_321}}
SHAPES = {"beibei": (21_716, 7_977), "2M x 500k": (2_000_000, 500_000),
          "100M x 10M": (100_000_000, 10_000_000)}
MODELS, DIM = 7, 32  # pre_f, pre_g, t, h1_f, h1_g, h2_f, h2_g; paper dim
NVLINK, ETHERNET = 450e9, 100e9 / 8  # bytes/s a direction: H100 NVLink 4, one 100 Gb/s link
LATENCY = {"nvlink": 10e-6, "ethernet": 30e-6}  # per collective
GPU_MEMORY = 80e9


def _nbytes(x) -> int:
    import torch

    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(t) for t in x)
    return 0


def count_collectives() -> dict:
    """Wrap the torch.distributed collectives of this process; returns the running counts
    {"bytes": sent to other ranks, "calls": collectives}."""
    import torch.distributed as dist

    counts = {"bytes": 0, "calls": 0}
    for name in COLLECTIVES:
        real = getattr(dist, name, None)
        if real is None:
            continue

        def wrapped(*args, _real=real, _name=name, **kw):
            world = dist.get_world_size(kw.get("group"))
            rank = dist.get_rank(kw.get("group"))
            counts["calls"] += 1
            if _name == "all_to_all_single":
                inp = args[1] if len(args) > 1 else kw["input"]
                splits = kw.get("input_split_sizes") or (args[3] if len(args) > 3 else None)
                total = _nbytes(inp)
                if splits:
                    row = total // max(inp.shape[0], 1) if inp.dim() else 0
                    counts["bytes"] += total - splits[rank] * row
                else:
                    counts["bytes"] += total * (world - 1) // world
            else:  # every other collective: what this rank contributes, once
                counts["bytes"] += _nbytes(args[1] if _name.endswith("into_tensor") or
                                           _name.startswith("reduce_scatter") else args[0])
            return _real(*args, **kw)

        setattr(dist, name, wrapped)
    return counts


def measure_rank(spec) -> dict:
    """One rank: `bench_worker` with the collectives counted (run by `run_local_ranks`)."""
    from mba_dist.bench.train import bench_worker

    counts = count_collectives()
    bench_worker(spec)
    return dict(counts)


def measure(users: int, items: int, rows: int, batch: int, workers: int) -> dict:
    """Per-step bytes sent by each rank and collectives a step, from two runs."""
    from mba_dist.bench.train import BenchSpec
    from mba_dist.dist.local import run_local_ranks

    spec = BenchSpec(users=users, items=items, rows=rows, batch=batch, warmup=1, split_steps=0,
                     threads=1)
    few, more = 2, 10
    a = run_local_ranks(measure_rank, workers, dataclasses.replace(spec, steps=few))
    b = run_local_ranks(measure_rank, workers, dataclasses.replace(spec, steps=more))
    per_rank = [(y["bytes"] - x["bytes"]) / (more - few) for x, y in zip(a, b)]
    calls = [(y["calls"] - x["calls"]) / (more - few) for x, y in zip(a, b)]
    local = batch // workers
    mean = sum(per_rank) / workers
    return {"users": users, "items": items, "batch": batch, "workers": workers,
            "bytes_per_rank": mean, "calls": max(calls),
            "c": mean / (local * (workers - 1) / workers)}  # bytes per remote triple


def predict(c: float, calls: float, batch: int, rate: float, gpus: int, net: str) -> dict:
    """One row of the model (module docstring): local batch `batch` on each of `gpus`."""
    compute = batch / rate
    sent = c * batch * (gpus - 1) / gpus
    if net == "nvlink" or gpus <= 8:
        comm = sent / NVLINK
        lat = LATENCY["nvlink"]
    else:  # the off-node share through the node's one link, shared by its 8 GPUs
        off = sent * (gpus - 8) / (gpus - 1)
        comm = (sent - off) / NVLINK + 8 * off / ETHERNET
        lat = LATENCY["ethernet"]
    step = compute + calls * lat + comm
    return {"efficiency": compute / step, "step_ms": step * 1e3, "comm_ms": comm * 1e3}


def state_gb(users: int, items: int) -> float:
    """Tables and Adagrad state (one accumulator per weight) of the seven models."""
    return MODELS * (users + items) * DIM * 4 * 2 / 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="2,4")
    p.add_argument("--batch", type=int, default=2048, help="global batch of the measurement")
    p.add_argument("--out", default="runs/scaling")
    a = p.parse_args(argv)
    workers = [int(w) for w in a.workers.split(",")]
    measured = [measure(u, i, r, a.batch, w) for (u, i, r) in
                ((21_716, 7_977, 120_000), (200_000, 50_000, 120_000)) for w in workers]
    c = max(m["c"] for m in measured)  # the most any run needed
    calls = max(m["calls"] for m in measured)
    lines = ["### Collective traffic of an MBA step, measured (gloo, torchrec table-wise)", "",
             "| users x items | workers | global batch | bytes sent / rank / step | "
             "collectives / step | bytes per remote triple |", "|---|---|---|---|---|---|"]
    lines += [f"| {m['users']:,} x {m['items']:,} | {m['workers']} | {m['batch']:,} | "
              f"{m['bytes_per_rank']:,.0f} | {m['calls']:.1f} | {m['c']:,.0f} |" for m in measured]
    lines += ["", f"Model constants: c = {c:,.0f} bytes per remote triple, {calls:.0f} "
              "collectives a step.", "",
              "### Predicted efficiency (weak scaling, local batch per GPU; no overlap)", "",
              "| table shape | state GB (tables + Adagrad) | GPUs needed (80 GB) | local batch | "
              "network | 8 GPUs | 32 GPUs | 128 GPUs |", "|---|---|---|---|---|---|---|---|"]
    for shape, (u, i) in SHAPES.items():
        gb = state_gb(u, i)
        need = max(1, -(-int(gb * 1e9) // int(GPU_MEMORY * 0.8)))
        rates = GPU_RATE.get(shape, GPU_RATE["2M x 500k"])
        for b, rate in rates.items():
            for net in ("nvlink", "ethernet"):
                cells = []
                for g in (8, 32, 128):
                    r = predict(c, calls, b, rate, g, net)
                    cells.append(f"{r['efficiency']:.2f} ({r['step_ms']:.1f} ms)")
                name = "NVLink" if net == "nvlink" else "8/node, 100 Gb/s"
                lines.append(f"| {shape} | {gb:,.1f} | {need} | {b:,} | {name} | "
                             + " | ".join(cells) + " |")
    lines += ["", "Step time in brackets. One-GPU rates: RESULTS §6 (H100; 100M x 10M takes the "
              "2M x 500k rate, not measured). Table-wise sharding leaves ranks without tables "
              "beyond 14 GPUs (7 models x 2 tables); the model assumes rows spread over all "
              "ranks (row-wise sharding), whose lookups are remote in the same (W - 1) / W share."]
    report = "\n".join(lines) + "\n"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
