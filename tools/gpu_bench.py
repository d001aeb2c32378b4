"""GPU benchmark in one command, for a machine with one NVIDIA GPU and torch (no Ray, no FBGEMM
CUDA kernels): the trainer's MBA step on the plain-torch backend (`bench.train.bench_worker`, the
code `mba-dist bench` runs) at batch 2048 and 65536 on a Beibei-shaped and a 2M x 500k synthetic
set, the authors'-style step beside it, a per-op profile of the step, and the evaluator's
scores/s against a bare matrix product.

    PYTHONPATH=. python tools/gpu_bench.py --out "$OUT"     # gpu_bench.json, .md, profile_*.txt

`--quick` shrinks every size (a CPU smoke run of the script itself). Each section is written as
soon as it is measured, and a section that fails is recorded and skipped, so a run cut short
keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mba_dist.bench.eval import TAOBAO_SHAPE, eval_speed  # noqa: E402
from mba_dist.bench.train import BenchSpec, _config, _train_data, authors_row, bench_worker  # noqa: E402

INDUSTRIAL = (2_000_000, 500_000, 50_000_000)  # users, items, auxiliary rows (a third target)
# (optim.mode, config settings, batches): torch's coalescing optimizers beside `row_optim`'s, and
# one batch-assembly thread beside the default (a thread per four cores, at most 4)
SPARSE_PATHS = ("rows", "coalesce")
VARIANTS = [(o, (f"optim.torch_sparse={impl}",), (2048, 65536))
            for o in ("adagrad", "sparse_adam") for impl in SPARSE_PATHS]
VARIANTS.append(("adagrad", ("optim.torch_sparse=rows", "train.data_threads=1"), (65536,)))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sections", default="steps,eval", help="comma-separated: steps, eval")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(a.device)
    card = torch.cuda.get_device_name(0) if dev.type == "cuda" else platform.processor() or "cpu"
    res = {"card": card, "torch": torch.__version__, "device": str(dev), "steps": [], "eval": [],
           "errors": []}
    q = a.quick
    base = BenchSpec(backend="torch", device=a.device)
    shapes = {"beibei": (base.users, base.items, base.rows),
              "industrial": (20_000, 5_000, 200_000) if q else INDUSTRIAL}

    def log(r: dict) -> None:
        print(json.dumps(r), flush=True)
        (out / "gpu_bench.json").write_text(json.dumps(res, indent=2))

    def section(name: str, fn) -> None:
        try:
            fn()
        except Exception as e:  # keep the other sections' figures
            res["errors"].append({"section": name, "error": f"{type(e).__name__}: {e}"})
            traceback.print_exc()
            log(res["errors"][-1])

    def steps_of(name: str, nu: int, ni: int, rows: int) -> None:
        spec = replace(base, users=nu, items=ni, rows=rows)
        t0 = time.perf_counter()
        cfg = _config(spec)
        data = _train_data(spec, cfg)
        info = {"data": name, "users": nu, "items": ni, "pairs": len(data.aux)}
        print(f"{name}: {len(data.aux):,} pairs ({len(data.target):,} target) in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        for optim, sets, batches in VARIANTS:
            for batch in batches:
                steps = 4 if q else (100 if batch == 2048 else 30)
                run = replace(spec, optim=optim, batch=batch, steps=steps, warmup=3 if q else 10,
                              overrides=sets)
                res["steps"].append({**info, **bench_worker(run, data)})
                log(res["steps"][-1])
        if name == "beibei":
            # where a small step's time goes (the profiler's overhead: not a throughput row)
            for impl in SPARSE_PATHS:
                prof = replace(spec, batch=2048, steps=4 if q else 20, warmup=3 if q else 10,
                               overrides=(f"optim.torch_sparse={impl}",),
                               profile_table=str(out / f"profile_beibei_2048_{impl}.txt"))
                bench_worker(prof, data)
            # its per-user Python sets take minutes to build at 50M rows
            res["steps"].append({**info, **authors_row(replace(spec, batch=2048), data,
                                                       2 if q else 10, cfg.model.dim)})
            log(res["steps"][-1])

    parts = a.sections.split(",")
    for name, shape in shapes.items() if "steps" in parts else ():
        section(f"steps {name}", lambda: steps_of(name, *shape))

    evals = ((*TAOBAO_SHAPE, TAOBAO_SHAPE[0], 1024), (200_000, 1_000_000, 16_384, 512))
    for nu, ni, measured, mb in evals if "eval" in parts else ():
        if q:
            nu, ni, measured, mb = 3000, 5000, 1000, 16

        def ev():
            res["eval"].append(eval_speed(nu, ni, measured_users=measured, memory_mb=mb, device=a.device))
            log(res["eval"][-1])
        section(f"eval {nu}x{ni}", ev)

    (out / "gpu_bench.md").write_text(markdown(res))
    print(markdown(res))
    return 0


def markdown(res: dict) -> str:
    lines = [f"GPU benchmark on {res['card']} (torch {res['torch']}, plain-torch backend)", "",
             "| data | users x items | pairs | step | batch | triples/s | data / fwd / bwd / opt "
             "| peak MB |", "|---|---|---|---|---|---|---|---|"]
    for r in res["steps"]:
        split = (" / ".join(f"{r[f'{p}_frac']:.0%}" for p in ("data", "forward", "backward", "optimizer"))
                 if "data_frac" in r else "")
        peak = r.get("peak_mb_per_worker", 0)
        lines.append(f"| {r['data']} | {r['users']:,} x {r['items']:,} | {r['pairs']:,} | "
                     f"{r['method']} | {r['batch']} | {r['triples_per_s']:,.0f} | {split} | {peak:,.0f} |")
    lines += ["", "| users x items | scorer | bare mm scores/s | evaluator scores/s | ratio | "
              "dense topk scores/s | vs dense topk |", "|---|---|---|---|---|---|---|"]
    for r in res["eval"]:
        for sc in ("mf", "mba"):
            e = r[sc]
            lines.append(f"| {r['users']:,} x {r['items']:,} | {sc} | {e['bare_mm_scores_per_s']:.3g} | "
                         f"{e['ours_scores_per_s']:.3g} | {e['ours_vs_bare_mm']:.2f} | "
                         f"{e['dense_topk_scores_per_s']:.3g} | {e['ours_vs_dense_topk']:.2f} |")
    lines += [f"- {e['section']}: {e['error']}" for e in res["errors"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
