"""Evaluator benchmarks: speed against a bare matrix product and against the straightforward
dense-mask evaluation, and peak memory against `eval.memory_mb`.

Speed (`eval_speed`), side by side on the same factors and users, in scores/s (user x item cells):
  - `bare_mm`: `torch.mm` of each user chunk against every item into a reused buffer, nothing else;
  - `ours`: the evaluator's ranking (`rank_top_k`): scores, CSR mask, exact running top-K;
  - `dense_topk`: the straightforward way (a fresh score matrix per user batch, masked through a
    Python-built index list, `torch.topk`), as the authors' evaluation does it.
Each is run for the MF scorer (one model) and the MBA scorer (t and pre_f blended by sigmoids; its
bare product is two matrix products).

Memory (`eval_memory`): peak RSS growth of one evaluation, measured from /proc in a fresh process
after the factors and masks exist, reported against `memory_mb`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mba_dist.bench.step import sync
from mba_dist.data.pairs import CSR, Pairs, dedup_sorted
from mba_dist.eval.ranking import chunk_sizes, evaluate, rank_top_k
from mba_dist.eval.scorers import mba_scorer, mf_scorer
from mba_dist.files import atomic_write_bytes, ensure_dir

TAOBAO_SHAPE = (48_658, 39_395)


def _random_train(num_users: int, num_items: int, per_user: int, rng) -> Pairs:
    users = np.repeat(np.arange(num_users, dtype=np.int64), per_user)
    items = rng.integers(0, num_items, size=len(users))
    return Pairs(*dedup_sorted(users, items, num_items))


def _timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def eval_speed(num_users: int = TAOBAO_SHAPE[0], num_items: int = TAOBAO_SHAPE[1],
               measured_users: int = 8192, dim: int = 32, memory_mb: int = 256, k: int = 20,
               train_per_user: int = 5, device: str = "cpu", seed: int = 0) -> dict:
    dev = torch.device(device)
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    models = {m: (torch.randn(num_users, dim, generator=g).to(dev) * 0.3,
                  torch.randn(num_items, dim, generator=g).to(dev) * 0.3) for m in ("t", "pre_f")}
    mask = CSR(_random_train(num_users, num_items, train_per_user, rng), num_users)
    users = np.sort(rng.choice(num_users, min(measured_users, num_users), replace=False))
    user_chunk, item_chunk = chunk_sizes(len(users), num_items, memory_mb)
    cells = len(users) * num_items
    scorers = {"mf": (lambda: mf_scorer(models["t"]), ["t"]),
               "mba": (lambda: mba_scorer(models["t"], models["pre_f"], 0.5), ["t", "pre_f"])}

    def ours(make):
        for _ in rank_top_k(make(), users, k, mask, num_items, memory_mb):
            pass

    def bare(names):
        buf = torch.empty(user_chunk, num_items, device=dev)
        for a in range(0, len(users), user_chunk):
            uc = torch.from_numpy(users[a:a + user_chunk]).to(dev)
            for m in names:
                U, I = models[m]
                torch.mm(U[uc], I.T, out=buf[:len(uc)])

    def dense_topk(names):
        for a in range(0, len(users), user_chunk):
            ub = users[a:a + user_chunk]
            uc = torch.from_numpy(ub).to(dev)
            rating = sum(torch.sigmoid(models[m][0][uc] @ models[m][1].T) for m in names)
            rows, cols = [], []
            for r, u in enumerate(ub):  # per-user Python lists, as the straightforward way does
                items = mask.indices[mask.indptr[u]:mask.indptr[u + 1]].tolist()
                rows.extend([r] * len(items))
                cols.extend(items)
            rating[rows, cols] = -(1 << 10)
            torch.topk(rating, k)

    out = {"device": str(dev), "users": int(len(users)), "items": num_items, "dim": dim,
           "memory_mb": memory_mb, "user_chunk": user_chunk, "item_chunk": item_chunk, "k": k}
    for name, (make, names) in scorers.items():
        bare(names)  # warm-up: allocator, thread pools, kernels
        t = {"bare_mm": _timed(lambda: bare(names), dev),
             "ours": _timed(lambda: ours(make), dev),
             "dense_topk": _timed(lambda: dense_topk(names), dev)}
        out[name] = {f"{key}_scores_per_s": cells / v for key, v in t.items()}
        out[name]["ours_vs_bare_mm"] = t["bare_mm"] / t["ours"]
        out[name]["ours_vs_dense_topk"] = t["dense_topk"] / t["ours"]
    return out


def _rss_kib(field: str, pid: int | str = "self") -> int:
    """A memory field of /proc/PID/status (VmRSS, VmHWM) in KiB; OSError once PID is gone."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def _memory_worker(num_items: int, num_users: int, memory_mb: int, dim: int) -> dict:
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    t = (torch.randn(num_users, dim, generator=g), torch.randn(num_items, dim, generator=g))
    f = (torch.randn(num_users, dim, generator=g), torch.randn(num_items, dim, generator=g))
    train = _random_train(num_users, num_items, 20, rng)
    test = _random_train(num_users, num_items, 3, rng)
    mask = CSR(train, num_users)
    test.keys(num_items)
    with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to the current RSS
        fh.write("5")
    before = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    metrics = evaluate(mba_scorer(t, f, 0.5), test, mask, num_users, num_items, (10, 20), memory_mb)
    seconds = time.perf_counter() - t0
    peak = _rss_kib("VmHWM")
    return {"num_items": num_items, "num_users": num_users, "memory_mb": memory_mb,
            "rss_before_mb": before / 1024, "peak_mb": peak / 1024,
            "growth_mb": (peak - before) / 1024, "seconds": seconds, "recall@20": metrics["recall@20"],
            "chunks": chunk_sizes(num_users, num_items, memory_mb)}


def eval_memory(num_items: int = 1_000_000, num_users: int = 2048, memory_mb: int = 256,
                dim: int = 32) -> dict:
    """Peak RSS growth of one MBA-scorer evaluation, measured in a fresh process."""
    code = ("import json, sys; from mba_dist.bench.eval import _memory_worker; "
            f"print(json.dumps(_memory_worker({num_items}, {num_users}, {memory_mb}, {dim})))")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"memory benchmark failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def markdown(speed: dict, memory: dict | None) -> str:
    lines = [f"Evaluator on {speed['device']}: {speed['users']:,} users x {speed['items']:,} items, "
             f"d={speed['dim']}, top-{speed['k']}, memory_mb={speed['memory_mb']} "
             f"(chunks: {speed['user_chunk']} users x {speed['item_chunk']} items)", "",
             "| scorer | bare mm scores/s | evaluator scores/s | evaluator / bare mm | "
             "dense-mask topk scores/s | evaluator / dense topk |", "|---|---|---|---|---|---|"]
    for sc in ("mf", "mba"):
        e = speed[sc]
        lines.append(f"| {sc} | {e['bare_mm_scores_per_s']:.3g} | {e['ours_scores_per_s']:.3g} | "
                     f"{e['ours_vs_bare_mm']:.2f} | {e['dense_topk_scores_per_s']:.3g} | "
                     f"{e['ours_vs_dense_topk']:.2f} |")
    if memory:
        lines += ["", f"Peak RSS growth of one MBA evaluation over {memory['num_items']:,} items "
                  f"({memory['num_users']:,} users), memory_mb={memory['memory_mb']}: "
                  f"{memory['growth_mb']:.0f} MB against a budget of {memory['memory_mb']} MB, "
                  f"{memory['seconds']:.1f} s"]
    return "\n".join(lines)


def run_bench_eval(out: Path, users: int, items: int, measured_users: int, memory_mb: int,
                   memory_items: int, device: str) -> str:
    """`mba-dist bench-eval`: speed (and peak memory unless memory_items <= 0), written as
    bench_eval.json / .md under `out`; returns the report."""
    speed = eval_speed(users, items, measured_users, memory_mb=memory_mb, device=device)
    memory = None if memory_items <= 0 else eval_memory(memory_items, memory_mb=memory_mb)
    report = markdown(speed, memory)
    out = ensure_dir(Path(out))
    atomic_write_bytes(out / "bench_eval.json",
                       json.dumps({"speed": speed, "memory": memory}, indent=2).encode())
    atomic_write_bytes(out / "bench_eval.md", (report + "\n").encode())
    return report
