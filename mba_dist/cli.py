"""`mba-dist` command line: prepare, synth, run, evaluate, recommend, demo.

    mba-dist prepare --out DIR --target purchase --train purchase=F --train cart=F --test purchase=F
    mba-dist synth --out DIR [--size tiny|small|medium|large] [--users N --items N]
    mba-dist run --data DIR --config configs/X.yaml --out RUN_DIR [--model mf] [--set k=v ...]
                 [--workers N] [--gpu] [--max-failures N] [--storage URI] [--local]
    mba-dist evaluate --run RUN_DIR [--baselines] [--workers N] [--out DIR]
    mba-dist bench [--workers 1,2] [--data DIR --config F] [--batch B] [--out DIR]   step throughput
    mba-dist bench-eval [--device cuda] [--out DIR]    evaluator speed and memory
    mba-dist recommend --run RUN_DIR --users U1,U2 | --users-file F [--k 20] [--out F.parquet]
    mba-dist demo [--out DIR]      synthetic data -> pretraining + MBA -> metrics table
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np


def _progress_bar():
    """A tqdm bar per stage over epochs (falls back to plain lines when stdout is no terminal)."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def progress(stage: str, epoch: int, total: int, info: dict) -> None:
        if stage not in bars:
            for b in bars.values():
                b.close()
            bars[stage] = tqdm(total=total, desc=f"{stage:>10}", unit="ep", dynamic_ncols=True,
                               mininterval=1.0, file=sys.stderr)
        bar = bars[stage]
        from mba_dist.train import selected
        sel = selected(info)
        post = {"loss": f"{info['loss']:.4f}", "trip/s": f"{info['triples_per_s']:,}"}
        if sel:
            post["R@20"] = f"{sel['recall@20']:.4f}"
        bar.set_postfix(post, refresh=False)
        bar.update(1)

    def close() -> None:
        for b in bars.values():
            b.close()

    return progress, close


def format_table(metrics: dict) -> str:
    """Markdown table of the run's model beside its baselines, and how it was selected."""
    from mba_dist.baselines import markdown

    return (markdown(metrics["baselines"], highlight=metrics["model"]) + "\n\n"
            f"model selection: {metrics['selected_on']}; best epoch {metrics['best_epoch']}; "
            f"train wall time {metrics['wall_seconds']:.1f} s")


def cmd_prepare(a) -> int:
    from data_prep.prepare import PrepareSpec, parse_source, prepare

    sources = ([parse_source("train", s) for s in a.train] + [parse_source("valid", s) for s in a.valid]
               + [parse_source("test", s) for s in a.test])
    prepare(PrepareSpec(out=Path(a.out), target=a.target, sources=sources,
                        valid_fraction=a.valid_fraction, seed=a.seed, header=a.header,
                        overwrite=a.overwrite), log=lambda m: print(m, file=sys.stderr))
    return 0


def cmd_synth(a) -> int:
    from tqdm import tqdm

    from data_prep.synthetic import SIZES, SynthSpec, generate

    users, items = SIZES[a.size]
    spec = SynthSpec(users=a.users or users, items=a.items or items, seed=a.seed,
                     false_click_ratio=a.false_click_ratio)
    bar = tqdm(total=spec.users, unit="user", desc="synth", file=sys.stderr, mininterval=1.0)

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    meta = generate(spec, a.out, overwrite=a.overwrite, progress=progress)
    bar.close()
    rows = {f"{s}/{b}": m["rows"] for s, bs in meta["splits"].items() for b, m in bs.items()}
    print(f"wrote {a.out}: {spec.users} users, {spec.items} items, {rows}", file=sys.stderr)
    return 0


def _local_process_group(cfg):
    """torchrec tables need a process group; outside Ray Train we start a 1-rank gloo one."""
    if cfg.model.backend != "torchrec":
        return nullcontext()
    from mba_dist.distenv import local_process_group

    return local_process_group()


def cmd_run(a) -> int:
    from mba_dist import config as C
    from mba_dist.dataset import Dataset, atomic_write_bytes, unique_ints
    from mba_dist.recommend import known_target_mask, top_n_table, write_table
    from mba_dist.train import run_training

    sets = list(a.set or [])
    if a.model:
        sets.append(f"method={a.model}")
    cfg = C.load_config(a.config, sets)
    out = Path(a.out)
    ds = Dataset(a.data)  # fail early on a bad dataset, before creating the run directory
    if (out / "metrics.json").exists() and not a.overwrite:
        raise FileExistsError(f"{out} holds a finished run (metrics.json); pass --overwrite or "
                              "choose another --out")
    if a.overwrite and not a.storage:
        # Ray Train would resume the earlier run's last checkpoint from its storage here
        shutil.rmtree(out / "ray", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "log.jsonl").unlink(missing_ok=True)
    C.dump_config(cfg, out / "config.yaml")
    run_info = {"data": str(Path(a.data).resolve()), "config_file": a.config, "sets": sets,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "python": platform.python_version()}
    atomic_write_bytes(out / "run.json", json.dumps(run_info, indent=2).encode())
    if a.local:
        if a.workers != 1:
            raise ValueError("--local runs one in-process worker; drop --workers or --local")
        progress, close = _progress_bar()
        try:
            with _local_process_group(cfg):
                metrics = run_training(cfg, a.data, out, progress)
        finally:
            close()
    else:
        from mba_dist.ray_train import run_with_ray

        metrics = run_with_ray(cfg, a.data, out, num_workers=a.workers, use_gpu=a.gpu,
                               max_failures=a.max_failures, storage=a.storage,
                               fresh=a.overwrite)
    # Recommendations for every test user, raw ids, known purchases excluded.
    from mba_dist.recommend import load_run

    _, _, scorer = load_run(out)
    users = unique_ints(ds.pairs("test", ds.target).users)
    table = top_n_table(scorer, ds, users, known_target_mask(cfg, ds), cfg.eval.top_n,
                        cfg.eval.memory_mb)
    write_table(out / "recommendations.parquet", table)
    report = format_table(metrics)
    atomic_write_bytes(out / "results.md", (report + "\n").encode())
    print(report)
    print(f"\noutputs in {out}/: metrics.json results.md recommendations.parquet log.jsonl "
          "config.yaml checkpoints/")
    return 0


def cmd_recommend(a) -> int:
    from mba_dist.recommend import known_target_mask, load_run, top_n_table, write_table

    cfg, ds, scorer = load_run(a.run)
    if a.users_file:
        raw = [ln.strip() for ln in Path(a.users_file).read_text().splitlines() if ln.strip()]
    elif a.users:
        raw = [u.strip() for u in a.users.split(",") if u.strip()]
    else:
        raw = None
    users = (np.arange(ds.num_users, dtype=np.int64) if raw is None else ds.dense_ids("user", raw))
    table = top_n_table(scorer, ds, users, known_target_mask(cfg, ds), a.k, cfg.eval.memory_mb)
    if a.out:
        write_table(Path(a.out), table)
        print(f"wrote {table.num_rows} rows to {a.out}", file=sys.stderr)
    else:
        for row in table.to_pylist():
            print(f"{row['user']}\t{row['item']}\t{row['rank']}\t{row['score']:.6f}")
    return 0


def cmd_evaluate(a) -> int:
    from mba_dist import baselines
    from mba_dist.dataset import atomic_write_bytes
    from mba_dist.recommend import evaluate_run, load_run_config

    run, cfg, _ = load_run_config(a.run)  # fail early on an incomplete run
    if a.workers > 1:
        from mba_dist.distenv import run_local_ranks

        tab = run_local_ranks(evaluate_run, a.workers, str(run), a.baselines)[0]
    else:
        tab = evaluate_run(run, a.baselines)
    out = Path(a.out) if a.out else run
    out.mkdir(parents=True, exist_ok=True)
    stem = "baselines" if a.baselines else "evaluation"
    report = baselines.markdown(tab, highlight=baselines.main_model(cfg))
    atomic_write_bytes(out / f"{stem}.md", (report + "\n").encode())
    atomic_write_bytes(out / f"{stem}.csv", baselines.csv_text(tab).encode())
    print(report)
    print(f"\nwrote {out / stem}.md and {stem}.csv", file=sys.stderr)
    return 0


def cmd_bench_eval(a) -> int:
    from mba_dist import bench_eval as B
    from mba_dist.dataset import atomic_write_bytes

    speed = B.eval_speed(a.users, a.items, a.measured_users, memory_mb=a.memory_mb, device=a.device)
    memory = None if a.memory_items <= 0 else B.eval_memory(a.memory_items, memory_mb=a.memory_mb)
    report = B.markdown(speed, memory)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "bench_eval.json",
                       json.dumps({"speed": speed, "memory": memory}, indent=2).encode())
    atomic_write_bytes(out / "bench_eval.md", (report + "\n").encode())
    print(report)
    return 0


def _bench_rows(a, spec, workers: list[int]) -> list[dict]:
    """The rows of `mba-dist bench`: MBA over the worker counts, then the reference rows."""
    from mba_dist import bench_train as B

    rows = B.run_workers(spec, workers, a.repeat, a.ray)
    if a.device == "cpu" and max(workers) > 1:
        # W workers on W cores can at best reach W x one worker on one core
        one_core = B.run_workers(dataclasses.replace(spec, threads=1), [1], a.repeat, a.ray)[0]
        rows.append({**one_core, "scaling_efficiency": None,
                     "note": "per-core reference: W workers on W cores reach at most W x this"})
    if not a.no_baselines:
        print("side by side: plain-torch backend, tables only, authors'-style step, implicit BPR",
              file=sys.stderr)
        torch_row = B.run_workers(B.with_backend(spec, "torch", "sparse_adam"), [1], a.repeat,
                                  a.ray)[0]
        rows.append({**torch_row, "scaling_efficiency": None})
        floor = B.run_workers(dataclasses.replace(spec, step="tables"), [1], a.repeat, a.ray)[0]
        rows.append({**floor, "scaling_efficiency": None,
                     "note": "the same lookups and fused updates, no MBA maths: the floor"})
        rows += B.baseline_rows(spec, authors_steps=max(2, a.steps // 10))
    return rows


def cmd_bench(a) -> int:
    """MBA step throughput over worker counts, beside the authors'-style step, implicit's BPR
    and the plain-torch backend, on the same data."""
    from mba_dist import bench_train as B
    from mba_dist import config as C
    from mba_dist.dataset import Dataset, atomic_write_bytes

    workers = [int(w) for w in a.workers.split(",")]
    if a.repeat < 1:
        raise SystemExit(f"mba-dist bench: --repeat must be at least 1, got {a.repeat}")
    # Read here: a missing or bad config fails before any worker starts, and workers (Ray Train
    # ones run elsewhere, in another directory) get its content and the dataset's absolute path.
    config = C.to_dict(C.load_config(a.config)) if a.config else None
    data = str(Path(a.data).resolve()) if a.data else None
    if data:
        Dataset(data)  # a missing or incomplete dataset: one clear line, here
    spec = B.BenchSpec(data=data, config=config, users=a.users, items=a.items, rows=a.rows,
                       batch=a.batch, steps=a.steps, warmup=a.warmup, device=a.device,
                       optim=a.optim)
    what = f"dataset {a.data}" if a.data else f"synthetic {a.users:,} x {a.items:,}, {a.rows:,} rows"
    where = "Ray Train workers" if a.ray else "local processes"
    print(f"benchmarking the MBA step on {what}, workers {workers} ({where}), global batch "
          f"{a.batch}, {a.steps} steps after {a.warmup}", file=sys.stderr)
    started_ray = False
    if a.ray:  # one Ray session for every row (each row's workers are a new Ray Train run)
        from mba_dist.ray_train import init_ray
        started_ray = init_ray()
    try:
        rows = _bench_rows(a, spec, workers)
    finally:
        if started_ray:
            import ray
            ray.shutdown()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.profile:  # one more 1-worker run under the profiler, local (the file is written here)
        print("profiling the 1-worker step", file=sys.stderr)
        B.run_workers(dataclasses.replace(spec, profile_table=str((out / "profile.txt").resolve())),
                      [1])
    report = B.markdown(rows, f"MBA step, {what}, global batch {a.batch} ({a.device})")
    report += B.ratios(rows)
    atomic_write_bytes(out / "bench.md", (report + "\n").encode())
    atomic_write_bytes(out / "bench.csv", B.csv_text(rows).encode())
    atomic_write_bytes(out / "bench.json", json.dumps(rows, indent=2).encode())
    png = B.plot_png(rows, out / "bench.png")
    print(report)
    print(f"\nwrote {out}/bench.md, bench.csv, bench.json" + (", bench.png" if png else
          " (no bench.png: matplotlib is not installed)") + (", profile.txt" if a.profile else ""),
          file=sys.stderr)
    return 0


DEMO_SETS = ["data.aux=click"]  # the synthetic data's auxiliary behavior


def cmd_demo(a) -> int:
    """The README's first command: synthetic data, pretraining + MBA, metrics table."""
    from data_prep.synthetic import SynthSpec, generate

    root = Path(a.out)
    data = root / "data"
    if not (data / "meta.json").exists():
        generate(SynthSpec(users=3000, items=1500, seed=0), data)
        print(f"synthetic dataset with planted preferences in {data}", file=sys.stderr)
    shipped = Path(__file__).resolve().parents[1] / "configs" / "synthetic.yaml"
    config = a.config or (str(shipped) if shipped.is_file() else None)
    ns = argparse.Namespace(**{**vars(a), "data": str(data), "config": config,
                               "out": str(root / "run"), "model": None, "overwrite": True,
                               "set": DEMO_SETS + list(a.set or [])})
    return cmd_run(ns)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mba-dist", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("prepare", help="raw behavior logs -> Parquet dataset")
    s.add_argument("--out", required=True)
    s.add_argument("--target", default="purchase")
    s.add_argument("--train", action="append", default=[], metavar="BEHAVIOR=FILE")
    s.add_argument("--valid", action="append", default=[], metavar="BEHAVIOR=FILE")
    s.add_argument("--test", action="append", default=[], metavar="BEHAVIOR=FILE")
    s.add_argument("--valid-fraction", type=float, default=0.1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--header", choices=["auto", "yes", "no"], default="auto")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=cmd_prepare)

    s = sub.add_parser("synth", help="synthetic dataset with planted preferences")
    s.add_argument("--out", required=True)
    s.add_argument("--size", choices=["tiny", "small", "medium", "large"], default="small")
    s.add_argument("--users", type=int, default=0)
    s.add_argument("--items", type=int, default=0)
    s.add_argument("--false-click-ratio", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(fn=cmd_synth)

    for name, fn, helptext in (("run", cmd_run, "train every stage and evaluate"),
                               ("demo", cmd_demo, "synthetic data end to end (README)")):
        s = sub.add_parser(name, help=helptext)
        if name == "run":
            s.add_argument("--data", required=True)
            s.add_argument("--out", required=True)
            s.add_argument("--model", choices=["mba", "mf"], default=None,
                           help="mf: BPR baseline on the target behavior only")
            s.add_argument("--overwrite", action="store_true")
        else:
            s.add_argument("--out", default="runs/demo")
        s.add_argument("--workers", type=int, default=1,
                       help="Ray Train workers (N > 1 needs model.backend=torchrec)")
        s.add_argument("--gpu", action="store_true", help="one GPU per worker, NCCL")
        s.add_argument("--max-failures", type=int, default=3,
                       help="worker failures to recover from (resume from the last checkpoint)")
        s.add_argument("--storage", default=None,
                       help="Ray Train checkpoint storage (default RUN/ray; shared on clusters)")
        s.add_argument("--local", action="store_true",
                       help="train in this process without Ray (one worker, in-memory batches)")
        s.add_argument("--config", default=None)
        s.add_argument("--set", action="append", metavar="KEY=VALUE")
        s.set_defaults(fn=fn)

    s = sub.add_parser("evaluate", help="full-ranking metrics of a finished run (and baselines)")
    s.add_argument("--run", required=True)
    s.add_argument("--baselines", action="store_true",
                   help="also MostPop, MF per behavior, merged MF, auxiliary memory")
    s.add_argument("--workers", type=int, default=1, help="local gloo ranks sharing the users")
    s.add_argument("--out", default=None, help="directory for the .md/.csv (default: the run)")
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("bench-eval", help="evaluator speed (vs bare mm, dense topk) and memory")
    s.add_argument("--out", default="runs/bench_eval")
    s.add_argument("--users", type=int, default=48_658, help="default: Taobao's shape")
    s.add_argument("--items", type=int, default=39_395)
    s.add_argument("--measured-users", type=int, default=8192)
    s.add_argument("--memory-mb", type=int, default=256)
    s.add_argument("--memory-items", type=int, default=1_000_000,
                   help="catalog of the peak-memory measurement (0: skip it)")
    s.add_argument("--device", default="cpu")
    s.set_defaults(fn=cmd_bench_eval)

    s = sub.add_parser("bench", help="MBA step throughput over worker counts, with baselines")
    s.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    s.add_argument("--data", default=None, help="prepared dataset (default: synthetic pairs)")
    s.add_argument("--config", default=None, help="config of the dataset (aux behavior)")
    s.add_argument("--users", type=int, default=21_716, help="synthetic shape (Beibei's)")
    s.add_argument("--items", type=int, default=7_977)
    s.add_argument("--rows", type=int, default=860_000)
    s.add_argument("--batch", type=int, default=2048, help="global batch")
    s.add_argument("--steps", type=int, default=100)
    s.add_argument("--warmup", type=int, default=10)
    s.add_argument("--optim", default="adagrad", help="torchrec optimizer of the MBA rows")
    s.add_argument("--repeat", type=int, default=1,
                   help="runs per MBA row; the median is reported (noisy shared machines)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--no-baselines", action="store_true")
    s.add_argument("--profile", action="store_true",
                   help="also write profile.txt: the 1-worker step's time per op (torch profiler)")
    s.add_argument("--ray", action="store_true",
                   help="workers as Ray Train workers: the cluster at RAY_ADDRESS (any number "
                        "of nodes), else an embedded local one (default: local processes)")
    s.add_argument("--out", default="runs/bench")
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("recommend", help="top-N items for users of a finished run")
    s.add_argument("--run", required=True)
    s.add_argument("--users", default=None, help="comma-separated raw user ids (default: all)")
    s.add_argument("--users-file", default=None)
    s.add_argument("--k", type=int, default=20)
    s.add_argument("--out", default=None, help="Parquet file (default: TSV on stdout)")
    s.set_defaults(fn=cmd_recommend)

    a = p.parse_args(argv)
    try:
        return a.fn(a)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        # Input problems (config, dataset, raw files, run dirs) end with one clear line.
        print(f"mba-dist {a.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
