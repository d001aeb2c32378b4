"""`mba-dist` command line: prepare, synth, run, search, evaluate, recommend, plot, demo.

    mba-dist prepare --out DIR --target purchase --train purchase=F --train cart=F --test purchase=F
    mba-dist synth --out DIR [--size tiny|small|medium|large] [--users N --items N] [--carts]
    mba-dist run --data DIR --config configs/X.yaml --out RUN_DIR [--model mf] [--set k=v ...]
                 [--workers N] [--gpu] [--max-failures N] [--storage URI] [--local]
    mba-dist search --data DIR --config configs/X.yaml --out SEARCH_DIR [--space F] [--trials N]
    mba-dist evaluate --run RUN_DIR [--baselines] [--aux-first | --denoising] [--workers N]
    mba-dist bench [--workers 1,2] [--data DIR --config F] [--batch B] [--out DIR]   step throughput
    mba-dist bench-eval [--device cuda] [--out DIR]    evaluator speed and memory
    mba-dist recommend --run RUN_DIR --users U1,U2 | --users-file F [--k 20] [--out F.parquet]
    mba-dist plot --run RUN_DIR [--out DIR]    training curves, baseline bars, the paper's Fig. 2
    mba-dist demo [--out DIR]      synthetic data -> pretraining + MBA -> metrics table

Argument parsing and dispatch only: the commands themselves are `mba_dist.api` and
`mba_dist.jobs` (run, evaluate, recommend, plot), `mba_dist.search`, `data_prep` (prepare, synth) and
`mba_dist.bench` (bench, bench-eval). An
`errors.InputError`, or an OS error about a path (`PATH_ERRNOS`: permission, not a directory,
disk full, ...), ends the command with its one line and exit 2; anything else is a bug and
keeps its traceback.
"""
from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from mba_dist.errors import ArgumentError, InputError

# OS errors that are about a path (permission, not a directory, disk full, read-only, quota):
# one line with exit 2 like an InputError; any other OSError keeps its traceback
LOG_LEVELS = ("debug", "info", "warning")
PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.ENOSPC,
               errno.EROFS, errno.EDQUOT, errno.ENOENT, errno.EEXIST, errno.ENAMETOOLONG}


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line (`mba-dist run: error: ...`, exit 2)."""

    def error(self, message: str):
        raise _UsageError(f"{self.prog}: error: {message}")


class _UsageError(Exception):
    pass


def at_least(low: int):
    """An argparse type: an integer >= `low`."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {v}")
        return v
    return parse


def finite(text: str) -> float:
    """An argparse type: a finite number (the command checks its range)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return v


def positive(text: str) -> float:
    """An argparse type: a finite number > 0."""
    v = finite(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return v


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
        from mba_dist.train.fit import selected
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


def cmd_prepare(a) -> int:
    from data_prep.prepare import PrepareSpec, parse_source, prepare

    sources = ([parse_source("train", s) for s in a.train] + [parse_source("valid", s) for s in a.valid]
               + [parse_source("test", s) for s in a.test])
    verbose = a.log_level != "warning"
    bars: dict = {}

    def progress(path: str, rows: int) -> None:  # rows parsed so far, and rows/s
        from tqdm import tqdm
        if path not in bars:
            for bar in bars.values():  # the previous file is done
                bar.close()
            # shown once a file takes more than a second
            bars[path] = tqdm(desc=f"parsing {Path(path).name}", unit=" rows", unit_scale=True,
                              file=sys.stderr, mininterval=1.0, delay=1.0, leave=False)
        bars[path].update(rows - bars[path].n)

    try:
        prepare(PrepareSpec(out=Path(a.out), target=a.target, sources=sources,
                            valid_fraction=a.valid_fraction, seed=a.seed, header=a.header,
                            ids=a.ids, overwrite=a.overwrite),
                log=lambda m: print(m, file=sys.stderr) if verbose or m.startswith("warning")
                else None, progress=progress if verbose else None)
    finally:
        for bar in bars.values():
            bar.close()
    return 0


def cmd_synth(a) -> int:
    from tqdm import tqdm

    from data_prep.synthetic import SIZES, SynthSpec, generate

    users, items = SIZES[a.size]
    spec = SynthSpec(users=a.users or users, items=a.items or items, seed=a.seed,
                     false_click_ratio=a.false_click_ratio, carts=a.carts,
                     false_cart_ratio=a.false_cart_ratio)
    bar = tqdm(total=spec.users, unit="user", desc="synth", file=sys.stderr, mininterval=1.0)

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    meta = generate(spec, a.out, overwrite=a.overwrite, progress=progress)
    bar.close()
    rows = {f"{s}/{b}": m["rows"] for s, bs in meta["splits"].items() for b, m in bs.items()}
    print(f"wrote {a.out}: {spec.users} users, {spec.items} items, {rows}", file=sys.stderr)
    return 0


def cmd_run(a) -> int:
    from mba_dist.api import fit
    from mba_dist.train.fit import no_progress

    sets = list(a.set or []) + ([f"method={a.model}"] if a.model else [])
    verbose = a.log_level != "warning"
    # --local: a tqdm bar per stage; through Ray, rank 0 prints a line per epoch
    progress, close = (_progress_bar() if a.local and verbose else (no_progress, lambda: None))
    try:
        run = fit(a.data, a.out, a.config, sets=sets, workers=a.workers, local=a.local,
                  gpu=a.gpu, max_failures=a.max_failures, storage=a.storage,
                  overwrite=a.overwrite, cpus_per_worker=a.cpus_per_worker,
                  tensorboard=not a.no_tensorboard, mlflow=a.mlflow,
                  mlflow_experiment=a.mlflow_experiment, progress=progress,
                  epoch_lines=verbose, say=_say if verbose else (lambda line: None))
    finally:
        close()
    print(run.results)
    if verbose:
        written = (Path(a.out) / "recommendations.parquet").exists()
        rec = " recommendations.parquet" if written else ""
        print(f"\noutputs in {a.out}/: metrics.json results.md{rec} "
              "log.jsonl config.yaml run.json checkpoints/ tensorboard/", file=sys.stderr)
    return 0


def _say(line: str) -> None:
    print(f"[mba-dist] {line}", file=sys.stderr)


def cmd_recommend(a) -> int:
    from mba_dist.files import atomic_write_parquet
    from mba_dist.api import Run

    raw = None
    if a.users_file:
        if not Path(a.users_file).is_file():
            raise ArgumentError(f"--users-file {a.users_file} does not exist")
        try:
            text = Path(a.users_file).read_text()
        except UnicodeDecodeError:
            raise ArgumentError(f"--users-file {a.users_file} is not a text file") from None
        raw = [ln.strip() for ln in text.splitlines() if ln.strip()]
    elif a.users:
        raw = [u.strip() for u in a.users.split(",") if u.strip()]
    table = Run.load(a.run).recommend(raw, a.k)
    if a.out:
        atomic_write_parquet(Path(a.out), table)
        print(f"wrote {table.num_rows} rows to {a.out}", file=sys.stderr)
    else:
        for row in table.to_pylist():
            print(f"{row['user']}\t{row['item']}\t{row['rank']}\t{row['score']:.6f}")
    return 0


def cmd_evaluate(a) -> int:
    from mba_dist.jobs import denoising_run, evaluate_run

    if a.denoising:
        report, _ = denoising_run(a.run, a.out)
        print(report)
        return 0
    report, out, stem = evaluate_run(a.run, a.baselines, a.workers, a.out, a.aux_first)
    print(report)
    print(f"\nwrote {out / stem}.md and {stem}.csv", file=sys.stderr)
    return 0


def cmd_plot(a) -> int:
    from mba_dist.jobs import plot_run

    written = plot_run(a.run, a.out)
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


def cmd_bench_eval(a) -> int:
    from mba_dist.bench.eval import run_bench_eval

    print(run_bench_eval(Path(a.out), a.users, a.items, a.measured_users, a.memory_mb,
                         a.memory_items, a.device))
    return 0


def cmd_bench(a) -> int:
    """MBA step throughput over worker counts, beside the authors'-style step, implicit's BPR
    and the plain-torch backend, on the same data."""
    from mba_dist.bench.suite import Suite, run_suite

    try:
        workers = [int(w) for w in a.workers.split(",")]
    except ValueError:
        raise ArgumentError(f"--workers {a.workers!r}: expected counts like 1,2,4") from None
    print(run_suite(Suite(workers=workers, data=a.data,
                          config=a.config, users=a.users, items=a.items, rows=a.rows,
                          batch=a.batch, steps=a.steps, warmup=a.warmup, optim=a.optim,
                          repeat=a.repeat, device=a.device, baselines=not a.no_baselines,
                          profile=a.profile, ray=a.ray, lightgcn=a.lightgcn), Path(a.out)))
    return 0


def cmd_search(a) -> int:
    from mba_dist.search import search_run

    verbose = a.log_level != "warning"
    res = search_run(a.data, a.out, a.config, a.space, a.set or [], a.trials, a.pretrained,
                     a.cpus_per_trial, a.concurrent, say=_say if verbose else (lambda line: None))
    print(res["report"])
    if verbose:
        print(f"\noutputs in {a.out}/: search.md trials.csv search.png best.yaml best/ tune/"
              + ("" if a.pretrained else " base/"), file=sys.stderr)
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


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's help shows its default (unless the help says it, or there is none: a
    flag, an option that is off unless given); descriptions keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    usage = __doc__.split("\n\nArgument parsing")[0]  # the rest is for developers
    p = _Parser(prog="mba-dist", description=usage, formatter_class=_Help,
                epilog="`mba-dist COMMAND --help` lists a command's options and defaults.")
    p.add_argument("--version", action="version", version=f"mba-dist {_version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                        help="info: progress and a start-up banner, Ray's warnings; debug: "
                             "also everything Ray and torchrec print; warning: results only")
    common.add_argument("-q", "--quiet", dest="log_level", action="store_const",
                        const="warning", help="the same as --log-level warning")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def command(name: str, helptext: str, fn) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=helptext, description=helptext, parents=[common],
                           formatter_class=_Help)
        s.set_defaults(fn=fn)
        return s

    s = command("prepare", "raw behavior logs -> a Parquet dataset", cmd_prepare)
    s.add_argument("--out", required=True, help="the dataset directory to write")
    s.add_argument("--target", default="purchase", help="the target behavior")
    s.add_argument("--train", action="append", default=[], metavar="BEHAVIOR=FILE",
                   help="a train file of a behavior (repeat; BEHAVIOR=@TARGET adds the "
                        "target's train pairs)")
    s.add_argument("--valid", action="append", default=[], metavar="BEHAVIOR=FILE",
                   help="a validation file of the target (default: carved from its train "
                        "pairs, --valid-fraction)")
    s.add_argument("--test", action="append", default=[], metavar="BEHAVIOR=FILE",
                   help="a test file of the target")
    s.add_argument("--valid-fraction", type=finite, default=0.1,
                   help="share of each user's target train pairs carved out for validation")
    s.add_argument("--seed", type=int, default=0, help="seed of the validation carve")
    s.add_argument("--header", choices=["auto", "yes", "no"], default="auto",
                   help="whether text files start with a header line")
    s.add_argument("--ids", choices=["auto", "int", "str"], default="auto",
                   help="id type of users and items: int, str, or auto (int when every id is "
                        "one; a log of integers with a few other ids is an error)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace an existing dataset (only one mba-dist wrote)")

    s = command("synth", "a synthetic dataset with planted preferences", cmd_synth)
    s.add_argument("--out", required=True, help="the dataset directory to write")
    s.add_argument("--size", choices=["tiny", "small", "medium", "large"], default="small",
                   help="users x items: tiny 300x200 ... large 2M x 500k")
    s.add_argument("--users", type=at_least(0), default=0, help="users (0: the size's)")
    s.add_argument("--items", type=at_least(0), default=0, help="items (0: the size's)")
    s.add_argument("--false-click-ratio", type=finite, default=1.0,
                   help="false clicks per true click")
    s.add_argument("--carts", action="store_true",
                   help="also a second auxiliary behavior, cart: sparser and cleaner than clicks")
    s.add_argument("--false-cart-ratio", type=finite, default=0.1,
                   help="false carts per true item (with --carts)")
    s.add_argument("--seed", type=int, default=0, help="seed of the generator")
    s.add_argument("--overwrite", action="store_true",
                   help="replace an existing dataset (only one mba-dist wrote)")

    for name, fn, helptext in (("run", cmd_run, "train every stage and evaluate"),
                               ("demo", cmd_demo, "synthetic data end to end (the README's "
                                                  "first command)")):
        s = command(name, helptext, fn)
        if name == "run":
            s.add_argument("--data", required=True, help="a prepared dataset directory")
            s.add_argument("--out", required=True, help="the run directory")
            s.add_argument("--model", choices=["mba", "mf"], default=None,
                           help="mf: the BPR baseline on the target behavior only "
                                "(default: the config's method)")
            s.add_argument("--overwrite", action="store_true",
                           help="start over (a finished run is replaced once the new one "
                                "has finished)")
        else:
            s.add_argument("--out", default="runs/demo", help="where the data and run go")
        s.add_argument("--workers", type=at_least(1), default=1,
                       help="Ray Train workers (N > 1 needs model.backend=torchrec)")
        s.add_argument("--gpu", action="store_true", help="one GPU per worker, NCCL")
        s.add_argument("--cpus-per-worker", type=positive, default=None,
                       help="CPUs Ray reserves for each worker, and its torch threads (default: "
                            "0.5 reserved on CPU, none beside a GPU; threads: the node's cores "
                            "shared by its workers)")
        s.add_argument("--max-failures", type=at_least(0), default=3,
                       help="worker failures to recover from (resume from the last checkpoint)")
        s.add_argument("--storage", default=None,
                       help="Ray Train checkpoint storage (default RUN/ray; shared on clusters)")
        s.add_argument("--local", action="store_true",
                       help="train in this process without Ray (one worker, in-memory batches)")
        s.add_argument("--config", default=None,
                       help="a YAML config (default: built-in defaults; demo: "
                            "configs/synthetic.yaml)")
        s.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config value (repeat), e.g. mba.alpha=10")
        s.add_argument("--mlflow", default=None, metavar="URI",
                       help="also log the run to this MLflow tracking server")
        s.add_argument("--mlflow-experiment", default="mba-dist",
                       help="the MLflow experiment of --mlflow")
        s.add_argument("--no-tensorboard", action="store_true",
                       help="no TensorBoard event files in RUN/tensorboard")

    s = command("search", "Ray Tune over MBA's settings on shared stage-1 models (ASHA, "
                          "validation only), then a run of the winner", cmd_search)
    s.add_argument("--data", required=True, help="a prepared dataset directory")
    s.add_argument("--out", required=True,
                   help="the search directory (the same command again resumes it)")
    s.add_argument("--config", default=None, help="the base config (YAML)")
    s.add_argument("--space", default="configs/search/paper.yaml",
                   help="the search space (YAML: points, space, scheduler)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a base config value (repeat)")
    s.add_argument("--trials", type=at_least(1), default=44,
                   help="trials in all, the space file's points included (more than an "
                        "existing search holds: it adds the difference)")
    s.add_argument("--pretrained", default=None, metavar="RUN",
                   help="a finished run whose stage-1 models the trials share (default: a run "
                        "of the base config in SEARCH/base)")
    s.add_argument("--cpus-per-trial", type=positive, default=1.0,
                   help="CPUs Ray reserves for each trial, and its torch threads")
    s.add_argument("--concurrent", type=at_least(0), default=0,
                   help="trials at once (0: as many as the cluster's CPUs hold)")

    s = command("evaluate", "full-ranking metrics of a finished run (and baselines)",
                cmd_evaluate)
    s.add_argument("--run", required=True, help="a finished run directory")
    s.add_argument("--baselines", action="store_true",
                   help="also MostPop, MF per behavior, merged MF, auxiliary memory")
    s.add_argument("--denoising", action="store_true",
                   help="instead: how well each model separates true auxiliary pairs from "
                        "noise (AUC; the planted truth, or later purchases)")
    s.add_argument("--aux-first", action="store_true",
                   help="also rank each user's auxiliary items first, ordered by each model "
                        "(the +aux_first rows; the auxiliary memory orders them by popularity)")
    s.add_argument("--workers", type=at_least(1), default=1,
                   help="local gloo ranks sharing the users")
    s.add_argument("--out", default=None, help="directory for the .md/.csv (default: the run)")

    s = command("plot", "PNG pictures of a finished run (training curves, baseline bars, the "
                        "paper's Fig. 2)", cmd_plot)
    s.add_argument("--run", required=True, help="a finished run directory")
    s.add_argument("--out", default=None, help="directory for the PNGs (default: RUN/plots)")

    s = command("bench-eval", "evaluator speed (vs bare mm, dense topk) and memory",
                cmd_bench_eval)
    s.add_argument("--out", default="runs/bench_eval", help="where the report goes")
    s.add_argument("--users", type=at_least(1), default=48_658, help="users (Taobao's shape)")
    s.add_argument("--items", type=at_least(1), default=39_395, help="items (Taobao's shape)")
    s.add_argument("--measured-users", type=at_least(1), default=8192,
                   help="users whose ranking is timed")
    s.add_argument("--memory-mb", type=at_least(1), default=256,
                   help="the evaluator's score-buffer budget")
    s.add_argument("--memory-items", type=at_least(0), default=1_000_000,
                   help="catalog of the peak-memory measurement (0: skip it)")
    s.add_argument("--device", default="cpu", help="cpu or cuda")

    s = command("bench", "MBA step throughput over worker counts, with baselines", cmd_bench)
    s.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    s.add_argument("--data", default=None, help="prepared dataset (default: synthetic pairs)")
    s.add_argument("--config", default=None, help="config of the dataset (aux behavior)")
    s.add_argument("--users", type=at_least(1), default=21_716,
                   help="synthetic shape (Beibei's)")
    s.add_argument("--items", type=at_least(1), default=7_977, help="synthetic shape")
    s.add_argument("--rows", type=at_least(1), default=860_000, help="synthetic train pairs")
    s.add_argument("--batch", type=at_least(1), default=2048, help="global batch")
    s.add_argument("--steps", type=at_least(1), default=100, help="timed steps per row")
    s.add_argument("--warmup", type=at_least(0), default=10, help="untimed steps first")
    s.add_argument("--optim", default="adagrad", help="torchrec optimizer of the MBA rows")
    s.add_argument("--repeat", type=at_least(1), default=1,
                   help="runs per MBA row; the median is reported (noisy shared machines)")
    s.add_argument("--device", default="cpu", help="cpu or cuda")
    s.add_argument("--no-baselines", action="store_true",
                   help="only the MBA rows (no authors'-style step, implicit, plain torch)")
    s.add_argument("--profile", action="store_true",
                   help="also write profile.txt: the 1-worker step's time per op (torch profiler)")
    s.add_argument("--ray", action="store_true",
                   help="workers as Ray Train workers: the cluster at RAY_ADDRESS (any number "
                        "of nodes), else an embedded local one (default: local processes)")
    s.add_argument("--lightgcn", action="store_true",
                   help="also the plain-torch step with t = LightGCN (model.t: lightgcn), "
                        "beside the plain-torch MF row")
    s.add_argument("--out", default="runs/bench", help="where bench.md/.csv/.png go")

    s = command("recommend", "top-N items for users of a finished run", cmd_recommend)
    s.add_argument("--run", required=True, help="a finished run directory")
    s.add_argument("--users", default=None, help="comma-separated raw user ids (default: all)")
    s.add_argument("--users-file", default=None, help="a text file of raw user ids, one a line")
    s.add_argument("--k", type=at_least(1), default=20, help="items per user")
    s.add_argument("--out", default=None, help="Parquet file (default: TSV on stdout)")
    return p


def _version() -> str:
    from mba_dist import __version__
    return __version__


def main(argv: list[str] | None = None) -> int:
    p = parser()
    try:
        a = p.parse_args(argv)
    except _UsageError as e:
        print(e, file=sys.stderr)
        return 2
    from mba_dist.dist.ray import configure_logs

    configure_logs(a.log_level)
    try:
        return a.fn(a)
    except InputError as e:
        # What the user can fix (config, dataset, raw files, run dirs, checkpoints) ends with
        # one clear line; every other exception keeps its traceback.
        print(f"mba-dist {a.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = {"run": "; the same command resumes from the last checkpoint",
                "search": "; the same command resumes the search"}.get(a.cmd, "")
        print(f"mba-dist {a.cmd}: interrupted{hint}", file=sys.stderr)
        return 130
    except OSError as e:
        if e.filename is None or e.errno not in PATH_ERRNOS:
            raise  # not a problem of a path: a failure of the machine or a bug
        # a path the user named, or the disk under it
        print(f"mba-dist {a.cmd}: error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
