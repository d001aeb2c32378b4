"""The Python API, for notebooks and scripts (the CLI is built on it; their runs are the same
run directories):

    import mba_dist
    run = mba_dist.fit("data/beibei", "runs/beibei", config="configs/beibei_cart.yaml",
                       overrides={"mba.alpha": 10}, local=True)
    run.metrics["test"]["recall@20"]          # metrics.json
    run.evaluate(baselines=True)              # {model: {split: {metric: value}}}
    run.recommend(["alice", "bob"], k=10)     # pyarrow table: user, item, rank, score (raw ids)
    run = mba_dist.Run.load("runs/beibei")    # any finished run, from the API or the CLI

Every problem a user can fix raises an `mba_dist.errors.InputError` with the one-line message the
CLI prints.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable

from mba_dist import config as C
from mba_dist import jobs
from mba_dist.run_dir import FinishedRun, RunDir
from mba_dist.tracking import Tracking
from mba_dist.train.fit import Progress, no_progress


def overrides_as_sets(overrides: dict[str, Any] | None) -> list[str]:
    """{"mba.alpha": 10} -> ["mba.alpha=10"] (values as YAML; JSON is YAML)."""
    return [f"{k}={json.dumps(v)}" for k, v in (overrides or {}).items()]


class Run:
    """A finished run directory: its config, metrics, evaluation and recommendations."""

    def __init__(self, finished: FinishedRun, path: str | Path | None = None):
        self._run = finished
        self.path = Path(path if path is not None else finished.root)  # as the user named it

    @classmethod
    def load(cls, path: str | Path) -> "Run":
        """A finished run (written by `fit` or `mba-dist run`); a clear error when it is not."""
        return cls(RunDir(path).load(), path)

    @property
    def config(self) -> C.Config:
        return self._run.cfg

    @property
    def metrics(self) -> dict:
        """metrics.json: the selected model's valid/test metrics, stages, baselines."""
        return RunDir(self.path).read_metrics()

    @property
    def info(self) -> dict:
        """run.json: the dataset, its fingerprint, code version, packages, host, times."""
        return RunDir(self.path).read_info()

    @property
    def results(self) -> str:
        """The results table (Markdown) of the run beside its baselines."""
        return jobs.results_table(self.metrics)

    def evaluate(self, baselines: bool = True, workers: int = 1) -> dict:
        """Full-ranking metrics on the dataset's held-out splits, of this run's model (and
        with `baselines` MostPop, MF per behavior, merged MF, aux memory), on `workers`
        local ranks: {model: {split: {metric: value}}}."""
        return jobs.evaluate_table(self.path, baselines, workers)

    def recommend(self, users: Iterable | None = None, k: int = 20):
        """Top-`k` items (known target items excluded) for raw user ids, or for every user:
        a pyarrow table (user, item, rank, score) in the raw ids of the input files."""
        raw = None if users is None else [str(u) for u in users]
        return jobs.recommend(self.path, raw, k)

    def plot(self, out: str | Path | None = None) -> list[Path]:
        """The PNGs of `mba-dist plot` (training curves, baseline bars, the paper's Fig. 2) in
        RUN/plots or `out`; returns their paths."""
        return jobs.plot_run(self.path, out)

    def __repr__(self) -> str:
        m = self.metrics
        return (f"Run({str(self.path)!r}: {m['model']}, test recall@20 "
                f"{m['test']['recall@20']:.4f}, selected on {m['selected_on']})")


def fit(data: str | Path, out: str | Path, config: str | Path | None = None, *,
        overrides: dict[str, Any] | None = None, sets: Iterable[str] = (),
        workers: int = 1, local: bool = False,
        gpu: bool = False, max_failures: int = 3, storage: str | None = None,
        overwrite: bool = False, cpus_per_worker: float | None = None,
        tensorboard: bool = True, mlflow: str | None = None,
        mlflow_experiment: str = "mba-dist", progress: Progress = no_progress,
        epoch_lines: bool = False, say: Callable[[str], None] = lambda line: None) -> Run:
    """Train every stage of `config` (a YAML file; default: the built-in defaults) with
    `overrides` ({"mba.alpha": 10}; or `sets`, the CLI's "KEY=VALUE" strings, applied first)
    on the prepared dataset `data`, into the run directory `out`, and return the finished run. `local`: in this process without Ray (one worker);
    otherwise through Ray Train on `workers` workers (the cluster at RAY_ADDRESS, or an
    embedded local one). `tensorboard`: event files in OUT/tensorboard; `mlflow`: a tracking
    URI to log the run to (experiment `mlflow_experiment`). `progress(stage, epoch, total,
    record)` is called after every epoch of a local run; through Ray, `epoch_lines` has rank 0
    print a line per epoch. `say` gets the start-up banner and what is resumed. The other
    arguments are those of `mba-dist run`."""
    jobs.train_run(data, out, None if config is None else str(config),
                   list(sets) + overrides_as_sets(overrides), workers=workers, local=local,
                   gpu=gpu, max_failures=max_failures, storage=storage, overwrite=overwrite,
                   cpus_per_worker=cpus_per_worker, progress=progress,
                   epoch_lines=epoch_lines, say=say,
                   tracking=Tracking(tensorboard, mlflow, mlflow_experiment))
    return Run.load(out)
