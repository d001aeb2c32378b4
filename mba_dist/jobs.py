"""The commands a user runs on a run directory, as functions (the CLI parses and calls them).

`train_run` is `mba-dist run`: every check before anything is written (config, world size,
dataset, the run of `pretrain.from_run`, what the directory holds), then training in this
process or through Ray Train (whose workers also export the test users' recommendations), then
the results table.
`evaluate_run` and `recommend` read a finished run back.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np

from mba_dist import config as C
from mba_dist import provenance
from mba_dist.data.dataset import Dataset
from mba_dist.data.pair_sets import check_dataset
from mba_dist.data.pairs import subtract_pairs
from mba_dist.errors import ConfigError
from mba_dist.eval import baselines
from mba_dist.eval.baselines import csv_text, markdown
from mba_dist.mba.stages import main_model, stage_plan
from mba_dist.run_dir import FinishedRun, RunDir, evaluate_run_dir
from mba_dist.tracking import Tracking, finish_mlflow, start_mlflow
from mba_dist.train.fit import Progress, no_progress


def results_table(metrics: dict) -> str:
    """Markdown table of the run's model beside its baselines, and how it was selected."""
    return (markdown(metrics["baselines"], highlight=metrics["model"]) + "\n\n"
            f"model selection: {metrics['selected_on']}; best epoch {metrics['best_epoch']}; "
            f"train wall time {metrics['wall_seconds']:.1f} s")


def banner(cfg: C.Config, ds: Dataset, out: Path, workers: int, local: bool, stream: bool,
           gpu: bool) -> str:
    """What a run is about to do, in one line: the data, the stages, the workers, the output."""
    train = ", ".join(f"{b} {m['rows']:,}" for b, m in sorted(ds.meta["splits"]["train"].items()))
    stages = " -> ".join(st.name for st in stage_plan(cfg))
    if cfg.method == "mba" and cfg.pretrain.from_run:
        stages += f" (stage 1 from {cfg.pretrain.from_run})"
    where = ("1 worker in this process (--local)" if local else
             f"{workers} Ray Train worker{'s' * (workers > 1)}{' on GPUs' if gpu else ''}, "
             f"{'streamed (Ray Data)' if stream else 'in-memory'} batches")
    return (f"{ds.root}: {ds.num_users:,} users, {ds.num_items:,} items, train pairs {train}; "
            f"{cfg.method} with {cfg.data.aux_label if cfg.method == 'mba' else 'no'} auxiliary "
            f"behavior; stages {stages}; {where}; {cfg.model.backend} tables; output {out}")


def process_group_for(cfg: C.Config):
    """torchrec tables need a process group; outside Ray Train a 1-rank gloo one is started."""
    if cfg.model.backend != "torchrec":
        return nullcontext()
    from mba_dist.dist.local import local_process_group

    return local_process_group()


def train_run(data: str | Path, out: str | Path, config: str | None = None,
              sets: list[str] = (), workers: int = 1, local: bool = False, gpu: bool = False,
              max_failures: int = 3, storage: str | None = None, overwrite: bool = False,
              cpus_per_worker: float | None = None,
              progress: Progress = no_progress, epoch_lines: bool = False,
              say: Callable[[str], None] = lambda line: None,
              tracking: Tracking | None = None) -> tuple[dict, str]:
    """`mba-dist run` (module docstring); returns the metrics and the results table. `say`
    gets the lines a user should see (what is resumed); `tracking`: TensorBoard (default) and
    MLflow (`tracking.Tracking`)."""
    sets = list(sets)
    cfg = C.load_config(config, sets)
    if local and workers != 1:
        raise ConfigError("--local runs one in-process worker; drop --workers or --local")
    tracking = tracking if tracking is not None else Tracking()
    run = RunDir(out, tracking)
    state = run.check_new_run(cfg, overwrite, storage, local=local)
    ds = Dataset(data)
    check_dataset(cfg, ds)
    stream = False
    if not local:  # a streamed epoch splits each global batch into equal local ones
        from mba_dist.train.ray_job import streams
        stream = streams(cfg, data)
        C.validate_world(cfg, workers, stream=stream)
    reused = None
    if cfg.method == "mba" and cfg.pretrain.from_run:
        reused = RunDir(cfg.pretrain.from_run).stages()
        reused.check_reusable(cfg, ds)
    say(banner(cfg, ds, run.root, workers, local, stream, gpu))
    final, run = run, run.build_dir(overwrite)  # a run over a run is built beside it
    run.begin(cfg, {"data": str(Path(data).resolve()), "dataset_fingerprint": ds.fingerprint,
                    "config_file": config, "sets": sets, "workers": 1 if local else workers,
                    "local": local, "gpu": gpu, **provenance.record()}, overwrite, storage)
    start_mlflow(tracking, cfg, final.root.name, {"mba_dist.run_dir": str(final.root),
                                                 "mba_dist.data": str(Path(data).resolve())})
    if tracking.mlflow_run_id is not None:
        run.add_info({"mlflow": {"uri": tracking.mlflow_uri, "run_id": tracking.mlflow_run_id}})
    try:
        metrics = _train(cfg, data, run, state, local, workers, gpu, max_failures, storage,
                         overwrite, reused, progress, epoch_lines, say, cpus_per_worker)
    except BaseException:
        finish_mlflow(tracking, None, [])
        raise
    # the workers wrote every test user's recommendations (`train.runner.export_top_n`)
    report = results_table(metrics)
    run.write_results(report)
    run.remove_checkpoints()  # the stage files are the finished run
    run.add_info({"finished": provenance.now()})
    artifacts = [run.root / n for n in ("results.md", "metrics.json", "config.yaml", "run.json",
                                        "log.jsonl")]
    if tracking.mlflow_run_id is not None:  # the pictures too (RUN/plots)
        artifacts += plot_run(run.root)
    finish_mlflow(tracking, metrics, artifacts)
    final.replace_with(run)
    return metrics, report


def _train(cfg: C.Config, data, run: RunDir, state: Path | None, local: bool, workers: int,
           gpu: bool, max_failures: int, storage: str | None, overwrite: bool, reused,
           progress: Progress, epoch_lines: bool, say: Callable[[str], None],
           cpus_per_worker: float | None) -> dict:
    """The training of `train_run`: in this process (resuming its own state) or on Ray Train."""
    if local:
        from mba_dist.train.checkpoint import load_resume_state
        from mba_dist.train.runner import FileCheckpoints, run_training

        resume = load_resume_state(state) if state is not None else None
        if resume is not None:
            say(f"resuming from {state}: stage {resume['stage']} after epoch "
                f"{resume['fit']['epoch']}")
        elif run.latest_resume_state(storage) is not None and not overwrite:
            say(f"not resuming the Ray Train checkpoint in {run.ray_storage(storage)}: a --local "
                "run resumes only its own (run without --local, with any --workers, to "
                "continue that one)")
        with process_group_for(cfg):
            return run_training(cfg, data, run, progress, resume=resume, reused=reused,
                                checkpointer=FileCheckpoints(cfg.train.checkpoint_every, run))
    from mba_dist.train.ray_job import run_with_ray

    return run_with_ray(cfg, data, run, num_workers=workers, use_gpu=gpu,
                        max_failures=max_failures, storage=storage, fresh=overwrite,
                        reused=reused, epoch_lines=epoch_lines, cpus_per_worker=cpus_per_worker)


def evaluate_table(run_dir: str | Path, with_baselines: bool, workers: int = 1,
                   aux_first: bool = False) -> dict:
    """Full-ranking metrics of a finished run (and its baselines) on `workers` local ranks:
    {model: {split: {metric: value}}}."""
    return _evaluate(RunDir(run_dir).load(), with_baselines, workers, aux_first)


def _evaluate(finished: FinishedRun, with_baselines: bool, workers: int,
              aux_first: bool = False) -> dict:
    if workers > 1:
        from mba_dist.dist.local import run_local_ranks

        return run_local_ranks(evaluate_run_dir, workers, str(finished.root), with_baselines,
                               aux_first)[0]
    return (finished.with_aux_first() if aux_first else finished).evaluate(with_baselines)


def evaluate_run(run_dir: str | Path, with_baselines: bool, workers: int = 1,
                 out: str | Path | None = None, aux_first: bool = False) -> tuple[str, Path, str]:
    """`mba-dist evaluate`: the table of `evaluate_table`, written as STEM.md / .csv in the
    run or in `out`; returns (report, the directory written, STEM). `aux_first`: also the
    "+aux_first" rows (`eval.aux_first`)."""
    run = RunDir(run_dir)
    finished = run.load()  # fails early on an incomplete run
    tab = _evaluate(finished, with_baselines, workers, aux_first)
    stem = "baselines" if with_baselines else "evaluation"
    report = markdown(tab, highlight=main_model(finished.cfg))
    where = run.write_report(stem, report, csv_text(tab), Path(out) if out else None)
    return report, where, stem


def denoising_run(run_dir: str | Path, out: str | Path | None = None) -> tuple[str, dict]:
    """`mba-dist evaluate --denoising`: the denoising AUC (`eval.denoise`) of the run's model
    and its MF baselines, written as denoising.md / .csv in the run or `out`."""
    from mba_dist.eval import denoise

    run = RunDir(run_dir)
    finished = run.load()
    data = finished.data()
    if data.aux is None:
        raise ConfigError(f"{run.root}: an {finished.cfg.method} run without an auxiliary "
                          "behavior has nothing to denoise")
    rows = {n: sc for n, sc in baselines.scorers(finished.cfg, data,
                                                 finished.all_stage_weights()).items()
            if not n.startswith("aux_memory")}  # among the candidates it is popularity
    tab = denoise.denoising_table(data, rows, finished.cfg.eval.memory_mb)
    report = denoise.markdown(tab, finished.cfg.data.aux_label)
    csv = "model,denoising_auc,users,candidates,positive,against\n" + "".join(
        f"{n},{r['auc']:.6f},{r['users']},{r['candidates']},{r['positive']},{r['against']}\n"
        for n, r in tab.items())
    run.write_report("denoising", report, csv, Path(out) if out else None)
    return report, tab


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    """`mba-dist plot`: the PNGs of `mba_dist.plots` for a finished run, in RUN/plots or `out`;
    returns the files written."""
    from mba_dist import plots
    from mba_dist.mba.roles import Model

    run = RunDir(run_dir)
    finished = run.load()
    metrics = run.read_metrics()
    name = run.root.name
    pngs = {"training.png": plots.training_png(run.read_log(), f"Training of {name}"),
            "baselines.png": plots.baselines_png(metrics, f"{name}: test metrics")}
    if finished.cfg.method == "mba":
        data = finished.data()
        aux_only, tgt = subtract_pairs(data.aux, data.target, data.num_items), data.target
        users = plots.pick_users(aux_only, tgt, data.num_users)
        clicked = {u: aux_only.items[aux_only.users == u] for u in users}
        bought = {u: tgt.items[tgt.users == u] for u in users}
        factors = {"MF on the target behavior (pre_f)":
                   finished.stage_weights("pre_f")[Model.PRE_F.value][1].numpy(),
                   "MBA (its target model t)":
                   finished.stage_weights("mba")[Model.T.value][1].numpy()}
        pngs["behaviors.png"] = plots.behaviors_png(
            factors, users, clicked, bought, finished.cfg.data.aux_label,
            f"{name}: items of two users, {finished.cfg.data.aux_label} (not bought) and bought "
            "(paper Fig. 2)")
    return run.write_plots(pngs, Path(out) if out else None)


def recommend(run_dir: str | Path, raw_users: list[str] | None, k: int):
    """Top-k lists (a pyarrow table, raw ids) of the given raw user ids, or of every user."""
    run: FinishedRun = RunDir(run_dir).load()
    ds = run.ds
    users = (np.arange(ds.num_users, dtype=np.int64) if raw_users is None
             else ds.dense_ids("user", raw_users))
    return run.recommendations(users, k)
