"""The worker function: every stage of a config on a dataset, then the test metrics.

`run_training(cfg, data_dir, out)` reads the prepared dataset, trains the stages of
`mba.stages.stage_plan` in order (skipping those reused from `pretrain.from_run` or finished
in a resumed state), reads the test set once for the selected epochs, and returns the content
of `metrics.json`. It never creates a process group (a launcher or Ray Train does), and it
writes nothing itself: rank 0 hands every record, stage checkpoint and the metrics to `out`
(a `run_dir.RunDir`; any object with the `RunOutputs` methods).
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import ContextManager, Protocol

import torch

from mba_dist import config as C
from mba_dist.data.dataset import Dataset
from mba_dist.data.pairs import user_range
from mba_dist.data.train_data import TrainData
from mba_dist.dist.collective import from_rank0, peak_rss_mb, rank_world
from mba_dist.errors import ConfigError
from mba_dist.files import write_parquet_parts
from mba_dist.eval import baselines
from mba_dist.eval.export import top_n_blocks
from mba_dist.eval.ranking import own_users
from mba_dist.mba.roles import AuxRoles, Model
from mba_dist.mba.stages import LIGHTGCN_BPR, MBA_INPUT, main_model, stage_plan
from mba_dist.train import checkpoint
from mba_dist.train.fit import (Checkpointer, Progress, Source, StageResult, Worker, fit_bpr,
                                fit_mba, no_progress)

TEST_SELECTION_LABEL = "test (authors' protocol: reproduction only, not a clean estimate)"


class RunOutputs(Protocol):
    """Where rank 0 puts what a run produces (`run_dir.RunDir`)."""

    def append_log(self, record: dict) -> None: ...

    def rewrite_log(self, records: list[dict]) -> None: ...

    # each a directory that takes its final place when the block ends (`write_together`)
    def new_stage(self, name: str) -> "ContextManager[Path]": ...

    def new_resume_state(self) -> "ContextManager[Path]": ...

    def new_recommendations(self) -> "ContextManager[Path]": ...

    def write_metrics(self, metrics: dict) -> None: ...


class FileCheckpoints:
    """The `Checkpointer` of a run outside Ray Train (`--local`): every `every` epochs the
    resumable state replaces the previous one in `out` (rank 0's; the ranks of one host write
    their shards into the directory it stages, which it swaps in once all have written)."""

    def __init__(self, every: int, out: RunOutputs | None):
        self.every, self.out = every, out

    def epoch_end(self, record: dict, save) -> None:
        if self.every and record["epoch"] % self.every == 0:
            write_together(self.out, lambda out: out.new_resume_state(), save)


def write_together(out: RunOutputs | None, new, write) -> None:
    """A directory that every rank writes its part of: rank 0 opens it (`new(out)`, a context
    giving a directory that takes its final place when the block ends), every rank calls
    `write(directory)` (collective), and rank 0 leaves the block once all have written. `out`
    is rank 0's (None elsewhere; None on rank 0 writes nothing)."""
    out = out if rank_world()[0] == 0 else None
    with (new(out) if out is not None else nullcontext()) as d:
        d = from_rank0(d)
        if d is None:
            return
        write(Path(d))  # collective
        if rank_world()[1] > 1:
            torch.distributed.barrier()  # every rank's part is written


class FinishedStages(Protocol):
    """A finished run's stage checkpoints and metrics (`run_dir.FinishedRun`)."""

    cfg: C.Config

    def stage_checkpoint(self, name: str) -> Path: ...

    def has_stage(self, name: str) -> bool: ...

    def stage_info(self, name: str) -> dict: ...


def reused_stages(earlier: FinishedStages, cfg: C.Config) -> list[str]:
    """The stages `run_training` takes from an earlier run (`pretrain.from_run`) instead of
    training them: pre_f when the earlier run had the same target; pre_g (each auxiliary
    behavior's pre_<b>) only when it also had the same auxiliary behaviors, and then mf_merged
    too (taken from it or not trained at all: the merged baseline comes with a trained pre_g);
    and the LightGCN-BPR baseline of a `model.t: lightgcn` run where the earlier run has one
    of the same depth over the same graph (`train.select_on`; else it is trained here)."""
    names = ["pre_f"]
    if earlier.cfg.data.aux == cfg.data.aux:
        names += [*AuxRoles(cfg.data.aux_behaviors).pre_aux, "mf_merged"]
    same_graph = earlier.cfg.train.select_on == cfg.train.select_on  # valid pairs in or out
    if (cfg.model.t == "lightgcn" and earlier.has_stage(LIGHTGCN_BPR) and same_graph
            and earlier.cfg.model.layers == cfg.model.layers):
        names.append(LIGHTGCN_BPR)
    return names


def reuse_pretrained(earlier: FinishedStages, w: Worker) -> dict[str, StageResult]:
    """Stage-1 results of an earlier run (`pretrain.from_run`, `reused_stages`), each rank
    reading its part of their tables (a stage-1 model is named after its stage)."""
    cfg = w.cfg
    names = [n for n in reused_stages(earlier, cfg)
             if n != "mf_merged" or (cfg.train.merged_baseline and earlier.has_stage(n))]
    out = {}
    for n in names:
        info = earlier.stage_info(n)
        tables = checkpoint.load_stage_into(earlier.stage_checkpoint(n),
                                            w.group([n], trained=False, init=False))
        out[n] = StageResult(n, info.get("best_epoch", -1), info.get("selection", {}), 0, 0.0,
                             0, tables=tables)
    return out


def run_training(cfg: C.Config, data_dir: str | Path, out: RunOutputs | None,
                 progress: Progress = no_progress, source: Source | None = None,
                 device: torch.device | None = None, checkpointer: Checkpointer | None = None,
                 resume: checkpoint.ResumeState | None = None,
                 reused: FinishedStages | None = None,
                 read_test: bool = True) -> dict:
    """The worker function (module docstring). Batches come from `source` (default: the
    dataset's pairs in memory, split by rank; with a source, this rank reads only its own
    users' pairs, for its evaluations). After every epoch `checkpointer` may write a
    resumable state; `resume` (one, `checkpoint.load_resume_state`) continues a run: its
    finished stages are kept and its current stage goes on after the saved epoch. `reused`:
    the run of `pretrain.from_run` (its stage-1 models are not trained again). `out` may be
    None (nothing is kept).
    `read_test=False` (a search trial): the test set is not read; the metrics hold the
    validation-selected epoch only, and baseline-only stages (lightgcn_bpr) are not trained."""
    if cfg.method == "mba" and cfg.pretrain.from_run and reused is None:
        raise ConfigError(f"pretrain.from_run {cfg.pretrain.from_run}: pass the earlier run's "
                          "stages as `reused` (run_dir.RunDir(path).stages())")
    rank, _ = rank_world()
    writer = out if rank == 0 else None  # rank 0 writes
    # With a source (the stream) no rank needs the train pairs of other ranks' users: each
    # reads its own users' part, which is all its evaluations look at.
    ds = Dataset(data_dir)
    data = TrainData.load(ds, cfg, user_range(ds.num_users, *rank_world())
                          if source is not None else None)
    w = Worker.of(cfg, data, source, device, progress=progress,
                  log=writer.append_log if writer is not None else (lambda r: None))
    if checkpointer is not None:
        w.checkpointer = checkpointer
    stages = w.finished

    def keep(st: StageResult) -> None:
        # Checkpointed as soon as it exists: a later failure never loses a finished stage, and
        # `pretrain.from_run` can use a run still in progress. Every rank writes its part.
        write_together(writer, lambda out: out.new_stage(st.name),
                       lambda d: checkpoint.save_stage(d, st.name, st.best_epoch, st.tables, cfg))
        stages[st.name] = st

    from_run: set[str] = set()  # not trained here (`reused_stages`), whether loaded or not
    if cfg.method == "mba" and reused is not None:
        for st in reuse_pretrained(reused, w).values():
            keep(st)
        from_run = set(reused_stages(reused, cfg))
    if resume is not None:
        checkpoint.check_resumable(resume, cfg)
        for name, d in resume["finished"].items():
            d = dict(d)
            frozen = w.group(d.pop("models"), trained=False, init=False)
            stages[name] = StageResult(**d, tables=resume.restore_stage(name, frozen))
        w.resume = resume
        if writer is not None:  # the log restarts from the saved epoch
            writer.rewrite_log([r for st in stages.values() for r in st.history]
                               + resume["fit"]["history"])

    t0 = time.perf_counter()
    for stage in stage_plan(cfg):
        if stage.name in stages or stage.name in from_run:
            continue
        if stage.name == LIGHTGCN_BPR and not read_test:  # a baseline row: only the test table
            continue
        if stage is MBA_INPUT and cfg.mba.joint_pretrain:
            st = fit_mba(w, None)
            keep(st)
            for m in (Model.PRE_F.value, Model.PRE_G.value):  # the baseline rows of this run
                keep(st.only(m))
        elif stage is MBA_INPUT:
            keep(fit_mba(w, {m: stages[m].tables
                             for m in AuxRoles(cfg.data.aux_behaviors).frozen}))
        else:
            keep(fit_bpr(w, stage))
    wall = time.perf_counter() - t0
    main_name = main_model(cfg)
    main = stages[main_name]
    if not read_test:
        return {"method": cfg.method, "model": main_name, "valid": main.best_select,
                "selected_on": "valid", "best_epoch": main.best_epoch,
                "epochs_run": main.epochs_run, "wall_seconds": round(wall, 2)}

    # The test set is read here, once, for the selected epochs.
    rows = baselines.scorers(cfg, data, {n: st.tables.factor_map() for n, st in stages.items()})
    table = baselines.table(cfg, data, rows)
    metrics = {
        "method": cfg.method, "model": main_name,
        "valid": main.best_select if cfg.train.select_on == "valid" else None,
        "test": table[main_name]["test"],
        "selected_on": TEST_SELECTION_LABEL if cfg.train.select_on == "test" else "valid",
        "best_epoch": main.best_epoch,
        "stages": {n: {"best_epoch": s.best_epoch, "epochs_run": s.epochs_run,
                       "train_seconds": round(s.seconds, 2), "triples": s.triples,
                       "triples_per_s": round(s.triples_per_s), "selection": s.best_select}
                   for n, s in stages.items()},
        "baselines": table, "wall_seconds": round(wall, 2),
        "peak_rss_mb": peak_rss_mb(),  # per rank (collective)
    }
    if data.truth is not None:
        metrics["truth"] = table[main_name]["truth"]
    if cfg.eval.top_n:
        export_top_n(writer, cfg, ds, data, rows.get(f"{main_name}+aux_first", rows[main_name]))
    if writer is not None:
        writer.write_metrics(metrics)
    return metrics


def export_top_n(writer: RunOutputs | None, cfg: C.Config, ds: Dataset, data: TrainData,
                 scorer) -> None:
    """Every test user's top `eval.top_n` items by `scorer`, raw ids, known purchases excluded:
    each rank ranks its own users from the sharded tables and writes their lists as it goes,
    RUN/recommendations.parquet/part-RANK.parquet (collective)."""
    _, users, _ = own_users(data.test, data.num_users)
    rank = rank_world()[0]
    write_together(writer, lambda out: out.new_recommendations(),
                   lambda d: write_parquet_parts(d / f"part-{rank:05d}.parquet", top_n_blocks(
                       scorer, ds, users, data.test_mask, cfg.eval.top_n, cfg.eval.memory_mb)))
