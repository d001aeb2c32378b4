"""The fit loop of a stage: epochs of steps, validation, early stopping, resumable states.

`fit_stage` runs one stage (BPR pretraining of a model, or MBA) on one worker: it draws the
stage's batches from the worker's source, calls the stage's step function (`train.steps`) on
each, validates every `train.eval_every` epochs (or every `train.eval_every_steps` steps),
keeps the best epoch's weights, stops when `patience` epochs passed since the best validation,
and hands a resumable state to the checkpointer after each epoch.

Model selection: on validation Recall@20; `train.select_on: test` is the authors' protocol
(validation pairs folded back into training, selection on the test set), labelled as such.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Protocol

import torch

from mba_dist import config as C
from mba_dist import provenance
from mba_dist.data.batches import Batch, MemorySource
from mba_dist.data.pairs import CSR, Pairs
from mba_dist.data.train_data import TrainData
from mba_dist.dist.collective import all_reduce_sum, rank_world
from mba_dist.errors import DivergedError
from mba_dist.eval.ranking import evaluate
from mba_dist.eval.baselines import mba_blend
from mba_dist.eval.scorers import Scorer, mf_scorer
from mba_dist.mba.roles import AuxRoles, Kind, Model, Phase, model_name, phase_of_step
from mba_dist.mba.stages import MBA_INPUT, StageInput, graph_models
from mba_dist.tables.base import TableGroup
from mba_dist.tables.build import build_group
from mba_dist.tables.stage_tables import StageTables, merge
from mba_dist.train import checkpoint
from mba_dist.train.steps import L2, bpr_step, ids_on, mba_step

Progress = Callable[[str, int, int, dict], None]  # (stage, epoch, max_epochs, info)


class Source(Protocol):
    """Where a stage's batches come from (`data.batches.MemorySource`, `data.stream.StreamSource`)."""

    def check(self, stage: StageInput) -> None: ...

    def epoch(self, stage: StageInput, epoch: int) -> Iterator[Batch]: ...


class Checkpointer(Protocol):
    """Called by every rank after every epoch; `save(directory)` is collective (all ranks call
    it the same epochs) and writes the resumable state there (`checkpoint.save_resume`: each
    rank its shards, so ranks may pass directories of their own that are merged later)."""

    def epoch_end(self, record: dict, save: Callable[[Path], None]) -> None: ...


class NoCheckpoints:
    def epoch_end(self, record: dict, save: Callable[[Path], None]) -> None:
        pass


def no_progress(stage: str, epoch: int, total: int, info: dict) -> None:
    pass


def selected(record: dict) -> dict:
    """The model-selection metrics of an epoch record ({} when the epoch did not validate)."""
    return record.get("valid") or record.get("test") or {}


@dataclass
class FitState:
    """The epoch loop's progress within a stage (saved in every resumable state)."""

    epoch: int = 0  # last finished epoch
    stage_steps: int = 0
    best: dict = field(default_factory=lambda: {"recall@20": -1.0})
    best_epoch: int = -1  # its tables: each rank's part (`TableGroup.snapshot`)
    history: list = field(default_factory=list)
    seconds: float = 0.0
    triples: int = 0


@dataclass
class StageResult:
    name: str
    best_epoch: int
    best_select: dict[str, float]
    epochs_run: int
    seconds: float
    triples: int
    history: list[dict] = field(default_factory=list)
    tables: StageTables | None = None  # the best epoch's, this rank's part (never whole)

    @property
    def triples_per_s(self) -> float:
        return self.triples / max(self.seconds, 1e-9)

    def info(self) -> dict:
        """Every field but the tables, and the tables' models (what a resumable state keeps
        in state.pt)."""
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if f.name != "tables"}, "models": list(self.tables.models if self.tables else ())}

    def only(self, model: str) -> "StageResult":
        """One model's part of this stage, as a stage of its own (named after the model)."""
        return dataclasses.replace(self, name=model, history=[],
                                   tables=self.tables.only([model]))


@dataclass
class Worker:
    """What every stage on one worker shares: the config, the data, where batches come from,
    where records go, and the state that carries across stages."""

    cfg: C.Config
    data: TrainData
    source: Source
    device: torch.device = torch.device("cpu")
    progress: Progress = no_progress
    checkpointer: Checkpointer = field(default_factory=NoCheckpoints)
    log: Callable[[dict], None] = lambda record: None  # one epoch record (rank 0 writes it)
    global_step: int = 0
    finished: dict[str, StageResult] = field(default_factory=dict)  # saved in resumable states
    resume: checkpoint.ResumeState | None = None  # a state to continue from (`fit_stage`)

    @classmethod
    def of(cls, cfg: C.Config, data: TrainData, source: Source | None = None,
           device: torch.device | None = None, **kw) -> "Worker":
        """A worker of the current process group (or of none); default source: the pairs in
        memory, split by rank."""
        rank, world = rank_world()
        C.validate_world(cfg, world)
        if source is None:
            source = MemorySource(data, cfg.train, cfg.mba.batch_order, rank, world)
        return cls(cfg, data, source, device or torch.device("cpu"), **kw)

    def group(self, models, trained: bool, init: bool = True, mba: bool = False) -> TableGroup:
        """The tables of `models`; a trained LightGCN model (`stages.graph_models`) is built over
        the target train graph (a finished one is kept as MF-shaped tables, `tables.lightgcn`).
        `mba`: trained by the MBA stage (its learning rate, `Config.stage_optim`)."""
        c, d = self.cfg, self.data
        names = {model_name(m) for m in models}
        graph = self.graph if trained and names <= graph_models(c) else None
        return build_group(models, d.num_users, d.num_items, c.model,
                           c.stage_optim(mba) if trained else None, self.device, c.train.seed,
                           init, graph)

    @cached_property
    def graph(self):
        """The normalised target train graph, built once per worker (one worker holds every
        user's pairs: `config.validate_world` refuses LightGCN on more)."""
        from mba_dist.tables.lightgcn import Graph
        return Graph(self.data.target, self.data.num_users, self.data.num_items, self.device)

    def selection(self) -> tuple[Pairs, CSR, str]:
        if self.cfg.train.select_on == "test":
            return self.data.test, self.data.test_mask, "test"
        return self.data.valid, self.data.mask, "valid"

    def select_metrics(self, scorer: Scorer) -> dict[str, float]:
        truth, mask, _ = self.selection()
        return evaluate(scorer, truth, mask, self.data.num_users, self.data.num_items,
                        **C.evaluate_args(self.cfg))

    def batches(self, stage: StageInput, epoch: int) -> Iterator[Batch]:
        """The source's batches, capped at `train.max_steps_per_epoch` (the same cap on every
        rank, so ranks stay in lockstep)."""
        cap = self.cfg.train.max_steps_per_epoch
        it = self.source.epoch(stage, epoch)
        return itertools.islice(it, cap) if cap > 0 else it


Step = Callable[[Batch], tuple[float, str | None]]  # a batch -> (loss, a tag counted per epoch)


def _timed(it: Iterator[Batch], waited: list[float]) -> Iterator[Batch]:
    """Adds the time spent waiting for each batch to waited[0] (`data_s` of the record)."""
    while True:
        t0 = time.perf_counter()
        try:
            b = next(it)
        except StopIteration:
            return
        finally:
            waited[0] += time.perf_counter() - t0
        yield b


def _diverged(stage: str, epoch: int, what: str) -> str:
    cure = ("mba.lr (or smaller mba.alpha / mba.c1 / mba.c2)" if stage == MBA_INPUT.name
            else "optim.lr")
    return (f"stage {stage} diverged in epoch {epoch} ({what}): nothing is exported; a smaller "
            f"{cure} usually helps")


def fit_stage(w: Worker, stage: StageInput, max_epochs: int, patience: int, step: Step,
              scorer_of: Callable[[dict], Scorer], groups: list[TableGroup],
              tags: tuple[str, ...] = ()) -> StageResult:
    """The epoch loop of one stage (module docstring). Resumes from `w.resume` when it holds
    this stage. `tags`: the step tags counted in every epoch record (MBA: its phases)."""
    name = stage.name
    f = FitState()
    best: list = []  # each group's snapshot of the best epoch (this rank's part only)
    if w.resume is not None and w.resume["stage"] == name:
        best = w.resume.restore(groups) or []  # this rank's shards, of any earlier world size
        w.global_step = w.resume["global_step"]
        f = FitState(**w.resume["fit"])
        w.resume = None
    every, every_steps = w.cfg.train.eval_every, w.cfg.train.eval_every_steps
    sel = w.selection()[2]
    _, world = rank_world()

    def validate(epoch: int) -> dict:
        # scored from the live tables (a user block and an item chunk at a time); the best
        # epoch is kept as each rank's part of its tables, never as whole copies
        for g in groups:
            for m in g.models:
                if not g.finite(m):
                    raise DivergedError(_diverged(name, epoch, f"non-finite weights in {m}"))
        metrics = w.select_metrics(scorer_of({m: g.factors(m) for g in groups for m in g.models}))
        if metrics["recall@20"] > f.best["recall@20"]:
            f.best, f.best_epoch = metrics, epoch
            best[:] = [g.snapshot() for g in groups]
        return {"step": f.stage_steps, **metrics}

    stopped = bool(best) and f.epoch - f.best_epoch >= patience
    for epoch in range(f.epoch + 1, max_epochs + 1):
        if stopped:
            break
        t0 = time.perf_counter()
        total, n, waited, mid_epoch = 0.0, 0, [0.0], []
        counts = dict.fromkeys(tags, 0)
        for batch in _timed(w.batches(stage, epoch), waited):
            loss, tag = step(batch)
            w.global_step += 1
            f.stage_steps += 1
            if tag is not None:
                counts[tag] += 1
            total += loss * len(batch.users)
            n += len(batch.users)
            if every_steps and f.stage_steps % every_steps == 0:
                mid_epoch.append(validate(epoch))
        dt = time.perf_counter() - t0
        loss = total / max(n, 1)  # this rank's mean
        diverged = not math.isfinite(loss)
        if world > 1:  # every rank's triples, and whether any rank diverged (ranks stop together)
            n, bad = all_reduce_sum(torch.tensor([n, int(diverged)], dtype=torch.int64)).tolist()
            diverged = bad > 0
        if diverged:
            raise DivergedError(_diverged(name, epoch, f"loss {loss}"))
        f.seconds += dt
        f.triples += n
        record = {"time": provenance.now(), "stage": name, "epoch": epoch,
                  "step": w.global_step, "loss": loss,
                  "triples": n, "data_s": round(waited[0], 3), **counts,
                  "seconds": round(dt, 3), "triples_per_s": round(n / max(dt, 1e-9))}
        if mid_epoch:
            record[sel] = mid_epoch[-1]
            record[f"{sel}_within_epoch"] = list(mid_epoch)
        elif ((not every_steps and (epoch % every == 0 or epoch == max_epochs))
              or (epoch == max_epochs and not best)):
            record[sel] = validate(epoch)
        w.log(record)
        f.history.append(record)
        f.epoch = epoch
        w.progress(name, epoch, max_epochs, record)
        stopped = bool(best) and epoch - f.best_epoch >= patience
        w.checkpointer.epoch_end(record, lambda directory: checkpoint.save_resume(
            directory, checkpoint.resume_state(
                w.cfg, {k: st.info() for k, st in w.finished.items()}, name, w.global_step,
                dataclasses.asdict(f)), groups, best,
            {k: st.tables for k, st in w.finished.items()}))
    # each rank keeps its own part of the best epoch's tables (`snapshot`), never whole copies
    tables = merge([g.stage_tables(s) for g, s in zip(groups, best)]) if best else None
    return StageResult(name, f.best_epoch, f.best, f.epoch, f.seconds, f.triples, f.history,
                       tables)


def fit_bpr(w: Worker, stage: StageInput) -> StageResult:
    """BPR-MF on the stage's pairs; the model is named after the stage."""
    c = w.cfg
    w.source.check(stage)
    group = w.group([stage.name], trained=True)
    reg = L2.of(c.optim, w.data.num_users)

    def step(b: Batch) -> tuple[float, None]:
        return bpr_step(group, c.pretrain.lambda0, reg, ids_on(w.device, b.users, b.pos, b.neg)), None

    return fit_stage(w, stage, c.pretrain.epochs, c.pretrain.patience, step,
                     lambda wts: mf_scorer(wts[stage.name]), [group])


class _Logits(NamedTuple):
    """Looked-up logits standing in for a group's `Rows` (`_JointTeachers.lookup`)."""

    value: torch.Tensor

    def logits(self) -> torch.Tensor:
        return self.value


@dataclass
class _JointTeachers:
    """pre_f and pre_g trained beside t (`mba.joint_pretrain`, MBA-PT of paper Table 4): each
    its own trained group, read by the MBA step as the frozen pair, detached (the KL terms
    teach t; the teachers learn only from their BPR steps)."""

    f: TableGroup
    g: TableGroup

    def lookup(self, *ids: torch.Tensor) -> _Logits:
        return _Logits(torch.cat([self.f.lookup(*ids).logits(),
                                  self.g.lookup(*ids).logits()], 1).detach())


def fit_mba(w: Worker, pre: dict[str, StageTables] | None) -> StageResult:
    """Stage 2: t with the DN/DP alternation, the pretrained models `pre` (pre_f and each
    auxiliary behavior's, by name) frozen; with `mba.joint_pretrain` (`pre` None) pre_f and
    pre_g start at random and each MBA batch also takes a BPR step for them (pre_g on every
    batch, pre_f on target batches), and the stage's weights include them."""
    c = w.cfg
    roles = AuxRoles(c.data.aux_behaviors)
    t = w.group([Model.T], trained=True, mba=True)
    teachers: list[TableGroup] = []
    if pre is None:
        teachers = [w.group([Model.PRE_F], trained=True, mba=True),
                    w.group([Model.PRE_G], trained=True, mba=True)]
        frozen = _JointTeachers(*teachers)
    else:
        # the stage-1 tables are copied over a chunk at a time (the groups' plans may differ)
        frozen = w.group(roles.frozen, trained=False, init=False)
        for m in roles.frozen:
            pre[m].copy_into(frozen, m)
        if c.mba.t_init != "random":  # t starts as a copy of a pretrained model
            pre[c.mba.t_init].copy_into(t, c.mba.t_init, Model.T.value)
    dn, dp = w.group(roles.h(1), trained=True, mba=True), w.group(roles.h(2), trained=True, mba=True)
    w.source.check(MBA_INPUT)
    w.global_step = 0  # the alternation starts with DP at the first MBA step (or the resumed one)
    reg = L2.of(c.optim, w.data.num_users)

    def step(b: Batch) -> tuple[float, str]:
        phase = phase_of_step(w.global_step)
        ids = ids_on(w.device, b.users, b.pos, b.neg)
        seen = None if b.positive is None else torch.from_numpy(b.positive).to(w.device)
        loss = mba_step(c.mba, reg, b.kind, phase, ids, frozen, t,
                        dn if phase is Phase.DN else dp, seen)
        if teachers:  # a target pair is positive for both teachers, an auxiliary-only one for g
            for g in teachers[b.kind is not Kind.B:]:
                bpr_step(g, c.pretrain.lambda0, reg, ids)
        return loss, "dn_steps" if phase is Phase.DN else "dp_steps"

    def scorer(wts: dict) -> Scorer:
        if pre is not None:  # the frozen models, read from the stage-1 tables
            wts = {k: v for st in pre.values() for k, v in st.factor_map().items()} | wts
        return mba_blend(c, wts[Model.T.value], wts[Model.PRE_F.value], wts.__getitem__)

    return fit_stage(w, MBA_INPUT, c.mba.epochs, c.mba.patience, step, scorer,
                     [t, dn, dp, *teachers], tags=("dn_steps", "dp_steps"))
