"""The ablation table of paper Table 4, and the variants of DESIGN §10, on one dataset.

    .venv/bin/python tools/ablations.py --data data/beibei --config runs/search/best.yaml \\
        --pretrained runs/search/base --out runs/ablations_beibei [--only mba,mba_kl]

Each variant is a full `mba-dist run --local` of the config with the variant's values, on the
stage-1 models of --pretrained (MBA-PT trains its own), in OUT/<variant>; ablations.md / .csv
list validation Recall@20 (what selected each run's epoch) and test Recall@20 / NDCG@20 of
every variant, beside the MF rows of the same split. An ablation table reads the test set of
every variant by design: it compares variants, it selects nothing. A finished variant is not
trained again.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from mba_dist.files import atomic_write_bytes
from mba_dist.jobs import train_run
from mba_dist.run_dir import RunDir

VARIANTS = {  # name -> (what it is, --set values)
    "mba": ("MBA, the config as given", []),
    "mba_kl": ("MBA-KL: no KL terms (paper Table 4)", ["mba.alpha=0", "mba.alpha_f=null",
                                                       "mba.alpha_g=null"]),
    "mba_pt": ("MBA-PT: pre_f, pre_g trained with MBA, no pretraining (paper Table 4)",
               ["mba.joint_pretrain=true", "mba.t_init=random"]),
    "kl_g_only": ("KL towards pre_g only (alpha_f 0)", ["mba.alpha_f=0"]),
    "kl_f_only": ("KL towards pre_f only (alpha_g 0)", ["mba.alpha_g=0"]),
    "t_from_pre_g": ("t initialised from pre_g", ["mba.t_init=pre_g"]),
    "blend_g": ("score blend with pre_g (blend_g = (1 - beta) / 2)", ["BLEND"]),
}


def _sets(cfg_beta: float, values: list[str]) -> list[str]:
    return [f"mba.blend_g={(1.0 - cfg_beta) / 2:g}" if v == "BLEND" else v for v in values]


def main(argv=None) -> int:
    from mba_dist import config as C

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--pretrained", required=True, help="a finished run with the stage-1 models")
    p.add_argument("--out", required=True)
    p.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args(argv)
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    beta = C.load_config(a.config, a.set).mba.beta
    out = Path(a.out)
    rows, mf = [], {}
    for name in names:
        what, values = VARIANTS[name]
        sets = a.set + _sets(beta, values)
        if name != "mba_pt":
            sets.append(f"pretrain.from_run={Path(a.pretrained).resolve()}")
        run = RunDir(out / name)
        if run.metrics_path.is_file():
            m = run.read_metrics()
        else:
            print(f"[ablations] {name}: {what}", file=sys.stderr, flush=True)
            m, _ = train_run(a.data, run.root, a.config, sets, local=True)
        test = m["baselines"]["mba"]["test"]
        rows.append({"variant": name, "what": what, "valid_recall@20": m["valid"]["recall@20"],
                     "test_recall@20": test["recall@20"], "test_ndcg@20": test["ndcg@20"],
                     "best_epoch": m["best_epoch"]})
        if name != "mba_pt":  # the MF rows of the shared stage-1 models
            mf = {n: r["test"] for n, r in m["baselines"].items() if n.startswith("mf_")}
    lines = ["| variant | valid R@20 | test R@20 | test N@20 | best epoch |", "|---|---|---|---|---|"]
    lines += [f"| {r['what']} | {r['valid_recall@20']:.4f} | {r['test_recall@20']:.4f} | "
              f"{r['test_ndcg@20']:.4f} | {r['best_epoch']} |" for r in rows]
    lines += [f"| {n} (MF-BPR, same split) | | {t['recall@20']:.4f} | {t['ndcg@20']:.4f} | |"
              for n, t in mf.items()]
    report = "\n".join(lines) + "\n"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(out / "ablations.md", report.encode())
    atomic_write_bytes(out / "ablations.csv", buf.getvalue().encode())
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
