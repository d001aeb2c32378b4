"""`mba-dist bench`: MBA training throughput over worker counts, with a time split.

Each worker count W runs the trainer's MBA step (`train.steps.mba_step`, the same function as
training) on W gloo ranks (or NCCL GPUs) for `warmup + steps` global batches of a dataset or of synthetic
pairs, batches from `MemorySource` (the rank's share of each global batch, negatives drawn by
the vectorised sampler). Throughput comes from the timed steps alone; the split from
`split_steps` more steps (at most `steps`) under the torch profiler (CPU events), which reads the step's
`record_function` ranges and the collectives, as fractions of that segment. Per rank:

    data           next batch from the source (slicing + negative sampling; this loop's timer)
    forward        ("step.forward") lookups in every table group (sharded: includes the lookup all-to-all) + loss
    backward       ("step.backward") autograd, with the fused optimizer of the torchrec tables inside it
    optimizer      ("step.optimizer") the separate optimizer step (torch backend; ~0 when fused)
    communication  time the collectives run (the profiler's `gloo:*` / `nccl:*` events: a
                   gloo collective runs on the process group's thread and lasts until every
                   peer has sent its part, so it counts waiting for the slower rank too; the
                   step waits for each one). A part of forward + backward, reported on its own.
                   With NCCL it is the host-side time only, and on a GPU so are the step's
                   ranges (the time to launch a part's kernels, not to run them).

and peak RSS (CPU) or peak allocated memory (GPU). Rank 0 gathers every rank's figures.
Throughput = global triples / the slowest rank's wall time; scaling efficiency =
triples/s(W) / (W x triples/s(1)).
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist

from torch.profiler import record_function

from mba_dist import config as C
from mba_dist.bench.step import _peak_mb, _reset_peak, sync, synthetic_pairs
from mba_dist.data.batches import MemorySource
from mba_dist.data.dataset import Dataset
from mba_dist.data.pairs import Pairs
from mba_dist.data.train_data import TrainData
from mba_dist.dist.collective import rank_world
from mba_dist.mba.roles import DN_MODELS, DP_MODELS, FROZEN, Model, Phase, phase_of_step
from mba_dist.mba.stages import MBA_INPUT
from mba_dist.train.fit import Worker
from mba_dist.train.steps import L2, backward_and_step, ids_on, mba_step

PARTS = ("data", "forward", "backward", "optimizer")
# the step's parts: its `record_function` ranges (train.steps); "data" is this loop's own
STEP_RANGES = {"forward": "step.forward", "backward": "step.backward",
               "optimizer": "step.optimizer"}
COMM_PREFIXES = ("gloo:", "nccl:")  # the collectives themselves (c10d:: is only their enqueue)


@dataclass(frozen=True)
class BenchSpec:
    data: str | None = None  # a prepared dataset (target + config's aux), or None: synthetic
    # the dataset's config (aux behavior, MBA weights): a file, or its `config.to_dict` mapping
    # (what the CLI passes, so that workers on other nodes need not see the file)
    config: str | dict | None = None
    users: int = 21_716  # synthetic shape (default: Beibei's)
    items: int = 7_977
    rows: int = 860_000  # synthetic auxiliary pairs; a third of them are target pairs
    batch: int = 2048  # global batch (W local batches of batch / W)
    steps: int = 100
    warmup: int = 10
    backend: str = "torchrec"
    optim: str = "adagrad"
    device: str = "cpu"
    threads: int | None = None  # torch threads per worker (None: the host's cores / workers)
    overrides: tuple[str, ...] = ()  # further `key=value` config settings (`--set`)
    # steps after the timed ones (at most `steps`) run under the profiler for the time split
    # (its overhead stays out of the throughput); with `profile_table` the profiler's per-op table of `steps` such
    # steps (rank 0) is written to this file
    split_steps: int = 20
    profile_table: str | None = None
    # "mba": `train.steps.mba_step`; "tables": `tables_step`, the tables' own floor
    step: Literal["mba", "tables"] = "mba"


def _train_data(spec: BenchSpec, cfg: C.Config):
    if spec.data:
        return TrainData.load(Dataset(spec.data), cfg)
    aux = synthetic_pairs(spec.users, spec.items, spec.rows, seed=0)
    keep = np.arange(len(aux)) % 3 == 0
    target = Pairs(aux.users[keep], aux.items[keep])
    return TrainData(spec.users, spec.items, target, aux, target, target, None)


def _config(spec: BenchSpec) -> C.Config:
    return C.load_config(spec.config, [f"model.backend={spec.backend}", f"optim.mode={spec.optim}",
                                       f"train.batch_size={spec.batch}", *spec.overrides])


def bench_worker(spec: BenchSpec, data=None) -> dict | None:
    """One rank of one worker count (a process group of W ranks exists, or none for W = 1 with
    the torch backend) on `data` (a `TrainData`; by default loaded or generated from `spec`).
    Returns the gathered figures on rank 0, None elsewhere."""
    if spec.threads:
        torch.set_num_threads(spec.threads)
    dev = torch.device(spec.device)
    if dev.type == "cuda" and dist.is_initialized():
        # LOCAL_RANK: set by Ray Train (ranks of several nodes); the local launcher's ranks
        # are all on one node
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        dev = torch.device("cuda", local % torch.cuda.device_count())
    cfg = _config(spec)
    data = _train_data(spec, cfg) if data is None else data
    rank, world = rank_world()
    src = MemorySource(data, cfg.train, "interleaved", rank, world)

    group = Worker.of(cfg, data, src, dev).group  # the trainer's tables (LightGCN t too)
    frozen, t = group(FROZEN, False), group([Model.T], True)
    dn, dp = group(DN_MODELS, True), group(DP_MODELS, True)
    reg = L2.of(cfg.optim, data.num_users)
    _reset_peak(dev)

    def batches():
        epoch = 0
        while True:
            epoch += 1
            yield from src.epoch(MBA_INPUT, epoch)

    it = batches()

    def run(n: int, first: int) -> tuple[float, int]:
        """n steps from global step `first`; returns (seconds spent waiting for batches, this
        rank's triples)."""
        waited, triples = 0.0, 0
        for s in range(first, first + n):
            t0 = time.perf_counter()
            kind, u, pos, neg, _ = next(it)  # one auxiliary behavior: no per-pair masks
            waited += time.perf_counter() - t0
            phase = phase_of_step(s)
            ids = ids_on(dev, u, pos, neg)
            h = dn if phase is Phase.DN else dp
            if spec.step == "mba":
                mba_step(cfg.mba, reg, kind, phase, ids, frozen, t, h)
            else:
                tables_step(ids, frozen, t, h)
            triples += len(u)
        sync(dev)
        return waited, triples

    run(spec.warmup, 0)
    if dist.is_initialized():
        dist.barrier()
    t_start = time.perf_counter()
    data_s, triples = run(spec.steps, spec.warmup)  # the timed steps: nothing but the steps
    wall = time.perf_counter() - t_start
    peak = _peak_mb(dev)  # before the profiler's own buffers
    # The split: the step's record_function ranges (train.steps) and the collectives, read by
    # the profiler over `split_steps` more steps (all `steps` with --profile), as fractions of
    # that segment, applied to the timed wall time.
    split = {p: 0.0 for p in (*STEP_RANGES, "comm")}
    n_split = spec.steps if spec.profile_table else min(spec.split_steps, spec.steps)
    if n_split > 0:
        if dist.is_initialized():
            dist.barrier()
        acts = [torch.profiler.ProfilerActivity.CPU]
        if dev.type == "cuda" and spec.profile_table:
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=acts) as prof:
            t0 = time.perf_counter()
            run(n_split, spec.warmup + spec.steps)
            seg = time.perf_counter() - t0
        ops = prof.key_averages()
        comm = sum(e.cpu_time_total for e in ops if e.key.startswith(COMM_PREFIXES))
        split["comm"] = comm / 1e6 / seg
        for part, r in STEP_RANGES.items():
            split[part] = sum(e.cpu_time_total for e in ops if e.key == r) / 1e6 / seg
        if spec.profile_table and rank == 0:
            _write_profile(spec, ops, dev)
    it.close()
    mine = {"wall_s": wall, "triples": triples, "peak_mb": peak, "data_s": data_s,
            **{f"{p}_s": f * wall for p, f in split.items()}}
    every = [mine]
    if world > 1:
        every = [None] * world
        dist.all_gather_object(every, mine)
        if rank != 0:
            return None
    return _summary(spec, every)


def tables_step(ids: list[torch.Tensor], frozen, t, h) -> None:
    """The floor of an MBA step on these tables: the same three group lookups and fused
    updates as `train.steps.mba_step`, with the sum of the trained rows as the loss in place of
    the MBA maths (logits, KL and likelihood terms, L2). No step on these tables can run
    faster."""
    with record_function("step.forward"):
        frozen.lookup(*ids)
        loss = t.lookup(*ids).packed.sum() + h.lookup(*ids).packed.sum()
    backward_and_step(loss, (t, h))


def _write_profile(spec: BenchSpec, ops, dev: torch.device) -> None:
    """The per-op tables of the timed steps: by self device time (GPU) and by self CPU time."""
    from pathlib import Path

    head = (f"MBA step, {spec.backend} backend, {spec.optim}, batch {spec.batch}, "
            f"{spec.steps} steps on {dev}\n")
    tables = [ops.table(sort_by=k, row_limit=30) for k in
              (("self_device_time_total",) if dev.type == "cuda" else ()) + ("self_cpu_time_total",)]
    Path(spec.profile_table).write_text(head + "\n\n".join(tables))


def _summary(spec: BenchSpec, ranks: list[dict]) -> dict:
    w = len(ranks)
    wall = max(r["wall_s"] for r in ranks)
    triples = sum(r["triples"] for r in ranks)
    threads = f", {spec.threads} thread{'s' if spec.threads > 1 else ''}" if spec.threads else ""
    sets = "".join(f", {o}" for o in spec.overrides)
    what = "mba" if spec.step == "mba" else "tables only"
    row = {"method": f"{what} ({spec.backend}, {spec.optim}{threads}{sets})", "workers": w,
           "batch": spec.batch, "steps": spec.steps, "triples_per_s": triples / wall,
           "triples_per_s_per_worker": triples / wall / w,
           "peak_mb_per_worker": max(r["peak_mb"] for r in ranks)}
    for p in PARTS + ("comm",):
        row[f"{p}_frac"] = float(np.mean([r[f"{p}_s"] / r["wall_s"] for r in ranks]))
    return row


def run_workers(spec: BenchSpec, workers: list[int], repeat: int = 1,
                on_ray: bool = False) -> list[dict]:
    """The MBA step on each worker count, each in fresh processes: local gloo ranks, or with
    `on_ray` Ray Train workers (any number of nodes). With `repeat` > 1 each count runs that
    many times and the run of median triples/s is kept (its `runs` field lists them all):
    shared machines vary from one run to the next."""
    if on_ray:
        from mba_dist.dist.ray import run_ray_ranks
        run = partial(run_ray_ranks, use_gpu=spec.device == "cuda")
    else:
        from mba_dist.dist.local import run_local_ranks as run

    rows = []
    for w in workers:
        C.validate_world(_config(spec), w)
        runs = sorted((run(bench_worker, w, spec)[0] for _ in range(repeat)),
                      key=lambda r: r["triples_per_s"])
        rows.append({**runs[len(runs) // 2],
                     "runs": [round(r["triples_per_s"]) for r in runs] if repeat > 1 else None})
    base = next((r["triples_per_s"] for r in rows if r["workers"] == 1), None)
    for r in rows:
        r["scaling_efficiency"] = (r["triples_per_s"] / (r["workers"] * base)) if base else None
    return rows


def with_backend(spec: BenchSpec, backend: str, optim: str) -> BenchSpec:
    return dataclasses.replace(spec, backend=backend, optim=optim)


# ---- side-by-side baselines (one worker) -------------------------------------------------------
def baseline_rows(spec: BenchSpec, authors_steps: int) -> list[dict]:
    """The side-by-side baselines that run in this process, on one load of the data: the
    authors'-style step and `implicit`'s BPR."""
    cfg = _config(spec)
    data = _train_data(spec, cfg)
    return [authors_row(spec, data, authors_steps, cfg.model.dim), implicit_row(cfg, data)]


def authors_row(spec: BenchSpec, data, steps: int, dim: int) -> dict:
    """The authors'-style step (per-sample Python negatives, dense Adam, seven nn.Embedding
    models) on the same pairs; fewer steps, it is slow."""
    from mba_dist.bench.step import authors_speed

    r = authors_speed(data.num_users, data.num_items, data.target, spec.batch, steps,
                      device=spec.device, dim=dim)
    return {"method": "authors-style step", "workers": 1, "batch": spec.batch, "steps": steps,
            "triples_per_s": r["triples_per_s"], "triples_per_s_per_worker": r["triples_per_s"],
            "peak_mb_per_worker": r["peak_mb"]}


def implicit_row(cfg: C.Config, data, epochs: int = 3) -> dict:
    """`implicit`'s BPR (one MF model, its own multithreaded CPU kernel) on the target pairs:
    triples/s = sampled (user, pos, neg) updates per second = pairs x epochs / wall time."""
    row = {"method": "implicit BPR (target, 1 model)", "workers": 1, "batch": None,
           "steps": None}
    try:
        from implicit.cpu.bpr import BayesianPersonalizedRanking
        from scipy.sparse import csr_matrix
    except ImportError:
        return {**row, "note": "not installed (pip install implicit)"}
    p = data.target
    m = csr_matrix((np.ones(len(p), dtype=np.float32), (p.users, p.items)),
                   shape=(data.num_users, data.num_items))
    model = BayesianPersonalizedRanking(factors=cfg.model.dim, iterations=1,
                                        random_state=0)
    model.fit(m, show_progress=False)  # warm-up (thread pool, allocation)
    model = BayesianPersonalizedRanking(factors=cfg.model.dim, iterations=epochs, random_state=0)
    t0 = time.perf_counter()
    model.fit(m, show_progress=False)
    dt = time.perf_counter() - t0
    tps = len(p) * epochs / dt
    return {**row, "steps": epochs, "triples_per_s": tps, "triples_per_s_per_worker": tps,
            "peak_mb_per_worker": _peak_mb(torch.device("cpu"))}


# ---- report ------------------------------------------------------------------------------------
COLUMNS = ["method", "workers", "batch", "steps", "triples_per_s", "triples_per_s_per_worker",
           "scaling_efficiency", "peak_mb_per_worker", "data_frac", "forward_frac",
           "backward_frac", "optimizer_frac", "comm_frac", "runs", "note"]


def _note(r: dict) -> str | None:
    """The row's note, with every run's triples/s when the row is a median of several."""
    runs = f"median of runs {', '.join(f'{x:,}' for x in r['runs'])}" if r.get("runs") else None
    return "; ".join(x for x in (runs, r.get("note")) if x) or None


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.0f}" if v >= 100 else f"{v:.3f}"
    return str(v)


def markdown(rows: list[dict], title: str) -> str:
    head = ["method", "workers", "triples/s", "per worker", "scaling eff.", "peak MB/worker",
            "data", "fwd", "bwd (+fused opt)", "opt", "comm (in fwd+bwd)", "note"]
    keys = ["method", "workers", "triples_per_s", "triples_per_s_per_worker",
            "scaling_efficiency", "peak_mb_per_worker", "data_frac", "forward_frac",
            "backward_frac", "optimizer_frac", "comm_frac", "note"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(_note(r) if k == "note" else r.get(k)) for k in keys)
                     + " |")
    lines += ["", "Time fractions are of each worker's wall time (mean over workers); "
              "communication is the time the collectives run, waiting for peers included, "
              "already counted in fwd and bwd."]
    return "\n".join(lines)


def ratios(rows: list[dict]) -> str:
    """One line per baseline: MBA with one worker (all the host's cores) against it."""
    ours = next((r for r in rows if r["workers"] == 1 and r.get("scaling_efficiency")), None)
    if ours is None:
        return ""
    lines = [f"- MBA, 1 worker: {ours['triples_per_s']:,.0f} triples/s"]
    for r in rows:
        if r is not ours and r.get("triples_per_s") and r["workers"] == 1:
            lines.append(f"  - {ours['triples_per_s'] / r['triples_per_s']:.2f}x {r['method']}")
    floor = next((r for r in rows if r["method"].startswith("tables only")), None)
    bpr = next((r for r in rows if r["method"].startswith("implicit") and r.get("triples_per_s")),
               None)
    if floor and bpr:  # the most any step on these tables could reach against implicit
        lines.append(f"- tables only, 1 worker: {floor['triples_per_s'] / bpr['triples_per_s']:.2f}x "
                     f"{bpr['method']}")
    return "\n\n" + "\n".join(lines)


def csv_text(rows: list[dict]) -> str:
    import csv
    import io
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k) for k in COLUMNS})
    return buf.getvalue()


def plot_png(rows: list[dict], path, title: str = "MBA step throughput") -> bool:
    """Triples/s and scaling efficiency against workers, with the 1-worker baselines as
    horizontal lines (matplotlib; False if absent)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ours = [r for r in rows if r.get("scaling_efficiency") is not None]
    if not ours:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    ws = [r["workers"] for r in ours]
    a.plot(ws, [r["triples_per_s"] for r in ours], "o-", label="MBA step")
    a.plot(ws, [ours[0]["triples_per_s"] * w for w in ws], "--", color="gray",
           label="linear from 1 worker")
    others = [r for r in rows if r.get("scaling_efficiency") is None and r.get("triples_per_s")]
    for k, r in enumerate(others):
        a.axhline(r["triples_per_s"], linestyle=(":", "-.", "--")[k % 3], linewidth=1.2,
                  color=plt.cm.tab10(1 + k % 9), label=f"{r['method']} ({r['workers']} worker)")
    rates = [r["triples_per_s"] for r in ours + others]
    if max(rates) > 20 * min(rates):  # a fast single-model baseline beside the MBA step
        a.set_yscale("log")
    else:
        a.set_ylim(0, None)
    a.set(xlabel="workers", ylabel="triples/s", xticks=ws)
    a.legend(fontsize=7)
    a.grid(alpha=0.3)
    b.bar([str(w) for w in ws], [r["scaling_efficiency"] for r in ours])
    b.set(xlabel="workers", ylabel="scaling efficiency (per-worker rate / 1 worker's)",
          ylim=(0, 1.1))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
