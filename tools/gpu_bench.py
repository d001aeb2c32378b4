"""GPU benchmark in one command, for a machine with one NVIDIA GPU and torch (no Ray, no FBGEMM
CUDA kernels): the plain-torch backend's MBA step at batch 2048 and 65536, the authors'-style step
beside it, and the evaluator's scores/s against a bare matrix product.

    PYTHONPATH=. python tools/gpu_bench.py --out "$OUT"     # writes gpu_bench.json and .md

`--quick` shrinks every size (a CPU smoke run of the script itself).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mba_dist.bench_eval import TAOBAO_SHAPE, eval_speed  # noqa: E402
from mba_dist.bench_step import BEIBEI_SHAPE, authors_speed, ours_speed, synthetic_pairs  # noqa: E402

INDUSTRIAL = (2_000_000, 500_000, 50_000_000)  # users, items, interaction rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(a.device)
    card = torch.cuda.get_device_name(0) if dev.type == "cuda" else platform.processor() or "cpu"
    res = {"card": card, "torch": torch.__version__, "device": str(dev), "steps": [], "eval": []}
    q = a.quick
    shapes = {"beibei": (*BEIBEI_SHAPE, 300_000),
              "industrial": (20_000, 5_000, 200_000) if q else INDUSTRIAL}

    def log(r: dict) -> None:
        print(json.dumps(r), flush=True)
        (out / "gpu_bench.json").write_text(json.dumps(res, indent=2))

    for name, (nu, ni, rows) in shapes.items():
        t0 = time.perf_counter()
        pairs = synthetic_pairs(nu, ni, rows, seed=0)
        print(f"{name}: {len(pairs):,} pairs in {time.perf_counter() - t0:.1f} s", flush=True)
        for batch in (2048, 65536):
            steps = 4 if q else (100 if batch == 2048 else 30)
            r = {"data": name, "users": nu, "items": ni, "pairs": len(pairs),
                 **ours_speed(nu, ni, pairs, batch, steps, warmup=3 if q else 10, device=a.device)}
            res["steps"].append(r)
            log(r)
        if name == "beibei":  # its per-user Python sets take minutes to build at 50M rows
            r = {"data": name, "users": nu, "items": ni, "pairs": len(pairs),
                 **authors_speed(nu, ni, pairs, 2048, 2 if q else 10, device=a.device)}
            res["steps"].append(r)
            log(r)
        del pairs

    for nu, ni, measured, mb in ((*TAOBAO_SHAPE, TAOBAO_SHAPE[0], 1024), (200_000, 1_000_000, 16_384, 512)):
        if q:
            nu, ni, measured, mb = 3000, 5000, 1000, 16
        r = eval_speed(nu, ni, measured_users=measured, memory_mb=mb, device=a.device)
        res["eval"].append(r)
        log(r)

    lines = [f"GPU benchmark on {card} (torch {torch.__version__}, plain-torch backend)", "",
             "| data | users x items | pairs | step | batch | triples/s | peak MB |",
             "|---|---|---|---|---|---|---|"]
    for r in res["steps"]:
        lines.append(f"| {r['data']} | {r['users']:,} x {r['items']:,} | {r['pairs']:,} | "
                     f"{r['method']} | {r['batch']} | {r['triples_per_s']:,.0f} | {r['peak_mb']:,.0f} |")
    lines += ["", "| users x items | scorer | bare mm scores/s | evaluator scores/s | ratio | "
              "dense topk scores/s | vs dense topk |", "|---|---|---|---|---|---|---|"]
    for r in res["eval"]:
        for sc in ("mf", "mba"):
            e = r[sc]
            lines.append(f"| {r['users']:,} x {r['items']:,} | {sc} | {e['bare_mm_scores_per_s']:.3g} | "
                         f"{e['ours_scores_per_s']:.3g} | {e['ours_vs_bare_mm']:.2f} | "
                         f"{e['dense_topk_scores_per_s']:.3g} | {e['ours_vs_dense_topk']:.2f} |")
    (out / "gpu_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
