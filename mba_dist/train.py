"""Training: stage 1 (BPR pretraining of pre_f and pre_g) and stage 2 (MBA), as worker functions.

`run_training(cfg, data_dir, out_dir)` is the worker function: it takes a typed config, reads the
prepared dataset, trains every stage, and writes checkpoints, `log.jsonl` and `metrics.json`. It
never creates a process group (a launcher or Ray Train does), so tests call it directly.

Model selection: early stopping on validation Recall@20 (patience in epochs); the best epoch's
weights are kept and the test set is read once, at the end. `train.select_on: test` is the
authors' protocol (validation pairs folded back into training, selection on the test set); every
output of such a run says so.
"""
from __future__ import annotations

import dataclasses
import io
import itertools
import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
import torch.distributed as dist

from mba_dist import config as C
from mba_dist.batches import MBA_INPUT, MF_TRAIN_SETS, Batch, MemorySource, StageInput, bpr_input
from mba_dist.dataset import CSR, Dataset, Pairs, atomic_write_bytes, merge_pairs
from mba_dist import baselines
from mba_dist.evaluate import Scorer, evaluate, mba_scorer, mf_scorer
from mba_dist.losses import Kind, Logits, Phase, bpr_loss, l2, mba_loss, phase_of_step
from mba_dist.models import (DN_MODELS, DP_MODELS, FROZEN, Model, TableGroup, build_group,
                             init_weights)

Progress = Callable[[str, int, int, dict], None]  # (stage, epoch, max_epochs, info)
TEST_SELECTION_LABEL = "test (authors' protocol: reproduction only, not a clean estimate)"


class Source(Protocol):
    """Where a stage's batches come from (`batches.MemorySource`, `stream.StreamSource`)."""

    def check(self, stage: StageInput) -> None: ...

    def epoch(self, stage: StageInput, epoch: int) -> Iterator[Batch]: ...


class Checkpointer(Protocol):
    """Called by every rank after every epoch; `state()` is collective (all ranks call it the
    same epochs) and returns the resumable state (`Trainer._state`)."""

    def epoch_end(self, record: dict, state: Callable[[], dict]) -> None: ...


class NoCheckpoints:
    def epoch_end(self, record: dict, state: Callable[[], dict]) -> None:
        pass


RESUME_FORMAT = 1


def _stage_dict(st: "StageResult") -> dict:
    return {f.name: getattr(st, f.name) for f in dataclasses.fields(st)}


def selected(record: dict) -> dict:
    """The model-selection metrics of an epoch record ({} when the epoch did not validate)."""
    return record.get("valid") or record.get("test") or {}


def _no_progress(stage: str, epoch: int, total: int, info: dict) -> None:
    pass


def _no_step_hook() -> None:
    pass


def _no_lap(part: str) -> None:
    pass


@dataclass
class TrainData:
    """Everything the stages read, built once from the dataset."""

    num_users: int
    num_items: int
    target: Pairs  # target train pairs (plus validation pairs when selecting on test)
    aux: Pairs | None
    valid: Pairs | None  # None when selecting on test
    test: Pairs
    truth: Pairs | None  # planted preferences (synthetic data only)
    mask: CSR  # target train items of each user, masked in every ranking

    @classmethod
    def load(cls, ds: Dataset, cfg: C.Config) -> "TrainData":
        tgt = cfg.data.target
        if tgt != ds.target:
            raise C.ConfigError(f"data.target is {tgt!r} but {ds.root} was prepared with target "
                                f"{ds.target!r}")
        aux = None
        if C.needs_aux(cfg):
            aux = ds.pairs("train", cfg.data.aux)
        target, valid = ds.pairs("train", tgt), ds.pairs("valid", tgt)
        # Test rankings mask all known train purchases, validation pairs included (authors'
        # protocol masks every train purchase); validation rankings mask the train pairs only.
        if cfg.train.select_on == "test":
            target, valid = merge_pairs([target, valid], ds.num_items), None
        truth = ds.pairs("truth", tgt) if ds.has("truth", tgt) else None
        return cls(ds.num_users, ds.num_items, target, aux, valid, ds.pairs("test", tgt), truth,
                   CSR(target, ds.num_users))

    @cached_property
    def test_mask(self) -> CSR:
        """All known target pairs (train + validation): masked in test rankings."""
        known = [self.target] + ([self.valid] if self.valid is not None else [])
        return CSR(merge_pairs(known, self.num_items), self.num_users)


@dataclass
class _FitState:
    """The epoch loop's progress within a stage (saved in every resumable checkpoint)."""

    epoch: int = 0  # last finished epoch
    stage_steps: int = 0
    best: dict = field(default_factory=lambda: {"recall@20": -1.0})
    best_epoch: int = -1
    best_weights: dict | None = None
    history: list = field(default_factory=list)
    seconds: float = 0.0
    triples: int = 0


@dataclass
class StageResult:
    name: str
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]  # best epoch, per model
    best_epoch: int
    best_select: dict[str, float]
    epochs_run: int
    seconds: float
    triples: int
    history: list[dict] = field(default_factory=list)

    @property
    def triples_per_s(self) -> float:
        return self.triples / max(self.seconds, 1e-9)


class Trainer:
    """Runs the stages of one config on one dataset; one instance per worker."""

    def __init__(self, cfg: C.Config, data: TrainData, out_dir: Path | None,
                 progress: Progress = _no_progress, device: torch.device | None = None,
                 source: Source | None = None):
        self.cfg, self.data, self.out = cfg, data, out_dir
        self.progress = progress
        self.device = device or torch.device("cpu")
        self.log_path = out_dir / "log.jsonl" if out_dir else None
        self.global_step = 0
        self._after_step = _no_step_hook  # set by `_fit` for step-based validation
        self.data_seconds = 0.0  # of the current epoch: waiting for the source's batches
        self.finished: dict[str, StageResult] = {}  # stages done, saved in resumable states
        self.resume: dict | None = None  # a resumable state to continue from (`_fit`)
        self.checkpointer: Checkpointer = NoCheckpoints()
        # Each of W ranks holds 1/W of the global batch, and sharded tables divide the summed
        # row gradients by W (torchrec's gradient division, as DDP averages): a batch mean
        # needs no scaling, but the L2 term is a sum over the batch rows and is scaled by W,
        # so a step equals one on the global batch. Equal local batch sizes assumed.
        distributed = dist.is_available() and dist.is_initialized()
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        self.sum_scale = float(self.world)
        if self.world > 1 and cfg.model.backend != "torchrec":
            raise C.ConfigError(f"{self.world} ranks need model.backend=torchrec (sharded tables); "
                                "the torch backend keeps one unsynchronised copy per rank")
        if self.rank != 0:
            self.log_path = None  # rank 0 writes the log
        t = cfg.train
        self.source = source or MemorySource(data, t.batch_size, t.negatives, t.seed,
                                             cfg.mba.batch_order, self.rank, self.world,
                                             t.data_threads)

    # ---- helpers -------------------------------------------------------------------------
    def _group(self, models, optim_mode: str | None) -> TableGroup:
        c, d = self.cfg, self.data
        g = build_group(c.model.backend, models, d.num_users, d.num_items, c.model.dim,
                        optim_mode, c.optim.lr, self.device, c.optim.torch_sparse)
        for m in g.models:
            g.load(m, init_weights(d.num_users, c.model.dim, c.model.init_std, c.train.seed, m, "user"),
                   init_weights(d.num_items, c.model.dim, c.model.init_std, c.train.seed, m, "item"))
        return g

    def _log(self, record: dict) -> None:
        if self.log_path is not None:
            with self.log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def _selection(self) -> tuple[Pairs, CSR, str]:
        if self.cfg.train.select_on == "test":
            return self.data.test, self.data.test_mask, "test"
        return self.data.valid, self.data.mask, "valid"

    def _select_metrics(self, scorer: Scorer) -> dict[str, float]:
        truth, mask, _ = self._selection()
        return evaluate(scorer, truth, mask, self.data.num_users, self.data.num_items,
                        self.cfg.eval.ks, self.cfg.eval.memory_mb)

    def _fit(self, name: str, max_epochs: int, patience: int, epoch_fn, scorer_fn,
             groups: list[TableGroup]) -> StageResult:
        """Shared epoch loop: train, validate every `eval_every` epochs (or every
        `eval_every_steps` steps, through `_after_step`), keep the best weights, stop when
        `patience` epochs passed since the best validation. Resumes from `self.resume` when it
        holds this stage, and hands a resumable state to the checkpointer after each epoch."""
        f = _FitState()
        if self.resume is not None and self.resume["stage"] == name:
            f = self._restore(self.resume, groups)
            self.resume = None
        every, every_steps = self.cfg.train.eval_every, self.cfg.train.eval_every_steps
        epoch = f.epoch

        def validate() -> dict:
            weights = {m: g.weights(m) for g in groups for m in g.models}
            metrics = self._select_metrics(scorer_fn(weights))
            if metrics["recall@20"] > f.best["recall@20"]:
                f.best, f.best_epoch, f.best_weights = metrics, epoch, weights
            return {"step": f.stage_steps, **metrics}

        mid_epoch: list[dict] = []

        def after_step() -> None:
            f.stage_steps += 1
            if every_steps and f.stage_steps % every_steps == 0:
                mid_epoch.append(validate())

        self._after_step = after_step
        stopped = f.best_weights is not None and f.epoch - f.best_epoch >= patience
        for epoch in range(f.epoch + 1, max_epochs + 1):
            if stopped:
                break
            t0 = time.perf_counter()
            info = epoch_fn(epoch)
            dt = time.perf_counter() - t0
            if self.world > 1:  # every rank's triples
                n = torch.tensor([info["triples"]], dtype=torch.int64,
                                 device=self.device if dist.get_backend() == "nccl" else "cpu")
                dist.all_reduce(n)
                info["triples"] = int(n)
            f.seconds += dt
            f.triples += info["triples"]
            record = {"stage": name, "epoch": epoch, "step": self.global_step, **info,
                      "seconds": round(dt, 3), "triples_per_s": round(info["triples"] / max(dt, 1e-9))}
            sel = self._selection()[2]
            if mid_epoch:
                record[sel] = mid_epoch[-1]
                record[f"{sel}_within_epoch"] = list(mid_epoch)
                mid_epoch.clear()
            elif ((not every_steps and (epoch % every == 0 or epoch == max_epochs))
                  or (epoch == max_epochs and f.best_weights is None)):
                record[sel] = validate()
            self._log(record)
            f.history.append(record)
            f.epoch = epoch
            self.progress(name, epoch, max_epochs, record)
            stopped = f.best_weights is not None and epoch - f.best_epoch >= patience
            self.checkpointer.epoch_end(record, lambda: self._state(name, f, groups))
        self._after_step = _no_step_hook
        return StageResult(name, f.best_weights, f.best_epoch, f.best, f.epoch, f.seconds,
                           f.triples, f.history)

    # ---- resumable state -------------------------------------------------------------------
    def _state(self, name: str, f: "_FitState", groups: list[TableGroup]) -> dict:
        """Everything a restarted worker needs to continue after this epoch (collective: the
        sharded groups gather their tables on every rank)."""
        return {"format": RESUME_FORMAT, "config": C.to_dict(self.cfg),
                "finished": {n: _stage_dict(st) for n, st in self.finished.items()},
                "stage": name, "global_step": self.global_step, "fit": dataclasses.asdict(f),
                "groups": [g.state() for g in groups]}

    def _restore(self, state: dict, groups: list[TableGroup]) -> "_FitState":
        for g, gs in zip(groups, state["groups"], strict=True):
            g.load_state(gs)
        self.global_step = state["global_step"]
        return _FitState(**state["fit"])

    # ---- stage 1: BPR --------------------------------------------------------------------
    def _epoch(self, stage: StageInput, epoch: int) -> Iterator[Batch]:
        """The source's batches, capped at `train.max_steps_per_epoch` (the same cap on every
        rank, so ranks stay in lockstep)."""
        cap = self.cfg.train.max_steps_per_epoch
        it = self.source.epoch(stage, epoch)
        return self._timed(itertools.islice(it, cap) if cap > 0 else it)

    def _timed(self, it: Iterator[Batch]) -> Iterator[Batch]:
        """Counts the time spent waiting for batches (`data_s` of the epoch's record)."""
        self.data_seconds = 0.0
        while True:
            t0 = time.perf_counter()
            try:
                b = next(it)
            except StopIteration:
                return
            finally:
                self.data_seconds += time.perf_counter() - t0
            yield b

    def fit_bpr(self, stage: StageInput) -> StageResult:
        """BPR-MF on the stage's pairs; the model is named after the stage."""
        c, name = self.cfg, stage.name
        self.source.check(stage)
        group = self._group([name], c.optim.mode)
        lam = c.pretrain.lambda0

        def epoch_fn(epoch: int) -> dict:
            total, n = 0.0, 0
            for _, u, pos, j in self._epoch(stage, epoch):
                b = len(u)
                rows = group.lookup(*self._ids(u, pos, j))
                lg = rows.logits()[:, 0]  # the group's one model: [B, 2]
                loss = (bpr_loss(lg[:, 0], lg[:, 1])
                        + lam * self.sum_scale * self._l2(group, name, rows.packed))
                loss.backward()
                group.step()
                self.global_step += 1
                self._after_step()
                total += float(loss.detach()) * b
                n += b
            return {"loss": total / max(n, 1), "triples": n,
                    "data_s": round(self.data_seconds, 3)}

        return self._fit(name, c.pretrain.epochs, c.pretrain.patience, epoch_fn,
                         lambda w: mf_scorer(w[name]), [group])

    def _ids(self, *arrays: np.ndarray) -> list[torch.Tensor]:
        return [torch.from_numpy(a).to(self.device) for a in arrays]

    def _l2(self, group: TableGroup, model: str, *rows: torch.Tensor) -> torch.Tensor:
        """L2 of the authors' form: whole tables in dense mode, the batch rows otherwise."""
        tensors = group.full_tables(model) if self.cfg.optim.mode == "dense_adam" else list(rows)
        return l2(tensors, self.data.num_users)

    # ---- stage 2: MBA --------------------------------------------------------------------
    def fit_mba(self, pre_f: tuple[torch.Tensor, torch.Tensor],
                pre_g: tuple[torch.Tensor, torch.Tensor]) -> StageResult:
        c = self.cfg
        m = c.mba
        frozen = self._group(FROZEN, None)
        frozen.load(Model.PRE_F.value, *pre_f)
        frozen.load(Model.PRE_G.value, *pre_g)
        t = self._group([Model.T], c.optim.mode)
        dn = self._group(DN_MODELS, c.optim.mode)
        dp = self._group(DP_MODELS, c.optim.mode)
        self.source.check(MBA_INPUT)
        self.global_step = 0  # the alternation starts with DP at the first MBA step

        def epoch_fn(epoch: int) -> dict:
            # Homogeneous batches of each kind (the loss differs by kind).
            total, n, phases = 0.0, 0, {Phase.DN: 0, Phase.DP: 0}
            for kind, u, pos, neg in self._epoch(MBA_INPUT, epoch):
                phase = phase_of_step(self.global_step)
                loss = self.mba_step(kind, phase, u, pos, neg, frozen, t,
                                     dn if phase is Phase.DN else dp)
                self.global_step += 1
                self._after_step()
                phases[phase] += 1
                total += loss * len(u)
                n += len(u)
            return {"loss": total / max(n, 1), "triples": n, "data_s": round(self.data_seconds, 3),
                    "dn_steps": phases[Phase.DN],
                    "dp_steps": phases[Phase.DP]}

        def scorer(w):
            return mba_scorer(w[Model.T.value], pre_f, m.beta)

        return self._fit("mba", m.epochs, m.patience, epoch_fn, scorer, [t, dn, dp])

    def mba_step(self, kind: Kind, phase: Phase, u: np.ndarray, pos: np.ndarray, neg: np.ndarray,
                 frozen: TableGroup, t: TableGroup, h: TableGroup,
                 lap: Callable[[str], None] = _no_lap) -> float:
        """One MBA step on a homogeneous batch; moves only t and the phase's h group.
        `lap(part)` is called after the forward pass, the backward pass (with the optimizer
        where it is fused into backward) and the optimizer step (benchmarks time the parts)."""
        m = self.cfg.mba
        ids = self._ids(u, pos, neg)
        t_rows = t.lookup(*ids)
        # group order: frozen (pre_f, pre_g), h (h_f, h_g) as FROZEN / DN_MODELS / DP_MODELS
        lg = Logits(t_rows.logits(), frozen.lookup(*ids).logits(), h.lookup(*ids).logits())
        loss = (mba_loss(kind, phase, lg, m.alpha, m.c1, m.c2)
                + m.lambda_t * self.sum_scale * self._l2(t, Model.T.value, t_rows.packed))
        backward_and_step(loss, (t, h), lap)
        return float(loss.detach())


def backward_and_step(loss: torch.Tensor, groups: Sequence[TableGroup],
                      lap: Callable[[str], None] = _no_lap) -> None:
    """The end of a step after its forward pass: backward (with the optimizer where it is fused
    into backward), then the groups' own optimizer steps; `lap` marks each part."""
    lap("forward")
    loss.backward()
    lap("backward")
    for g in groups:
        g.step()
    lap("optimizer")


def _tensor_state(weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict:
    return {m: {"user": u, "item": i} for m, (u, i) in weights.items()}


def save_checkpoint(path: Path, stage: StageResult, cfg: C.Config) -> None:
    buf = io.BytesIO()
    torch.save({"stage": stage.name, "best_epoch": stage.best_epoch, "config": C.to_dict(cfg),
                "weights": _tensor_state(stage.weights)}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return {m: (w["user"], w["item"]) for m, w in state["weights"].items()}
    except Exception as e:
        raise ValueError(f"checkpoint {path} is not readable ({type(e).__name__}: {e})") from None


def reuse_pretrained(run: Path, cfg: C.Config) -> dict[str, StageResult]:
    """Stage-1 results of an earlier run (`pretrain.from_run`), weights from its checkpoints.

    pre_f is reused when the earlier run had the same target; pre_g and mf_merged only when it
    also had the same auxiliary behavior (otherwise the caller trains them).
    """
    ckpt = run / "checkpoints"
    earlier_cfg = C.load_config(run / "config.yaml")
    if earlier_cfg.data.target != cfg.data.target:
        raise C.ConfigError(f"pretrain.from_run {run}: target {earlier_cfg.data.target!r} differs "
                            f"from data.target {cfg.data.target!r}")
    names = ["pre_f"]
    if earlier_cfg.data.aux == cfg.data.aux:
        names.append("pre_g")
        if cfg.train.merged_baseline and (ckpt / "mf_merged.pt").is_file():
            names.append("mf_merged")
    metrics_path = run / "metrics.json"
    earlier = json.loads(metrics_path.read_text())["stages"] if metrics_path.is_file() else {}
    out = {}
    for n in names:
        info = earlier.get(n, {})
        out[n] = StageResult(n, load_checkpoint(ckpt / f"{n}.pt"), info.get("best_epoch", -1),
                             info.get("selection", {}), 0, 0.0, 0)
    return out


def _check_resumable(state: dict, cfg: C.Config) -> None:
    if state.get("format") != RESUME_FORMAT:
        raise ValueError(f"resumable state has format {state.get('format')!r}, this mba-dist "
                         f"reads {RESUME_FORMAT}")
    def flat(d: dict, prefix: str = "") -> dict:
        return {k2: v2 for k, v in d.items()
                for k2, v2 in (flat(v, f"{prefix}{k}.") if isinstance(v, dict)
                               else {f"{prefix}{k}": v}).items()}

    try:  # keys added since the state was written count with their defaults
        saved = flat(C.to_dict(C.load_config(state["config"])))
    except C.ConfigError as e:
        raise C.ConfigError(f"cannot resume: the checkpoint's config does not load here ({e})") from None
    now = flat(C.to_dict(cfg))
    if saved != now:
        diff = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
        raise C.ConfigError(f"cannot resume: the checkpoint was written with another config "
                            f"(differs in {', '.join(diff) or 'layout'})")


def run_training(cfg: C.Config, data_dir: str | Path, out_dir: str | Path,
                 progress: Progress = _no_progress, source: Source | None = None,
                 device: torch.device | None = None, checkpointer: Checkpointer | None = None,
                 resume: dict | None = None) -> dict:
    """The worker function: every stage of `cfg` on `data_dir`, outputs under `out_dir`.
    Batches come from `source` (default: the dataset's pairs in memory, split by rank). After
    every epoch `checkpointer` gets a resumable state; `resume` (such a state) continues a run:
    its finished stages are kept and its current stage goes on after the saved epoch.

    Returns the content of `metrics.json`.
    """
    out = Path(out_dir)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    ds = Dataset(data_dir)
    data = TrainData.load(ds, cfg)
    tr = Trainer(cfg, data, out, progress, device=device, source=source)
    if checkpointer is not None:
        tr.checkpointer = checkpointer
    stages = tr.finished

    def keep(name: str, st: StageResult) -> None:
        # Checkpointed as soon as it exists: a later failure never loses a finished stage, and
        # `pretrain.from_run` can use a run still in progress. Rank 0 writes.
        if tr.rank == 0:
            save_checkpoint(out / "checkpoints" / f"{name}.pt", st, cfg)
        stages[name] = st

    reused: set[str] = set()
    if cfg.method == "mba" and cfg.pretrain.from_run:
        for name, st in reuse_pretrained(Path(cfg.pretrain.from_run), cfg).items():
            keep(name, st)
            reused.add(name)
    if resume is not None:
        _check_resumable(resume, cfg)
        for name, d in resume["finished"].items():
            stages[name] = StageResult(**d)
        tr.resume = resume
        if tr.rank == 0:  # the log restarts from the saved epoch
            records = [r for st in stages.values() for r in st.history] + resume["fit"]["history"]
            atomic_write_bytes(tr.log_path, "".join(json.dumps(r) + "\n" for r in records).encode())

    t0 = time.perf_counter()
    if cfg.method == "mf":
        if cfg.mf_train_on != "target" and data.aux is None:
            raise C.ConfigError("mf_train_on: aux/all needs data.aux")
        main_name = baselines.main_model(cfg)
        if main_name not in stages:
            keep(main_name, tr.fit_bpr(bpr_input(main_name, MF_TRAIN_SETS[cfg.mf_train_on])))
    else:
        if "pre_f" not in stages:
            keep("pre_f", tr.fit_bpr(bpr_input(Model.PRE_F.value, "target")))
        if "pre_g" not in stages:
            keep("pre_g", tr.fit_bpr(bpr_input(Model.PRE_G.value, "aux")))
        # The merged baseline comes with a trained pre_g, not with one reused from a run.
        if cfg.train.merged_baseline and "mf_merged" not in stages and "pre_g" not in reused:
            keep("mf_merged", tr.fit_bpr(bpr_input("mf_merged", "merged")))
        if "mba" not in stages:
            keep("mba", tr.fit_mba(stages["pre_f"].weights[Model.PRE_F.value],
                                   stages["pre_g"].weights[Model.PRE_G.value]))
        main_name = "mba"
    wall = time.perf_counter() - t0

    # The test set is read here, once, for the selected epochs.
    rows = baselines.scorers(cfg, data, {n: st.weights for n, st in stages.items()})
    table = baselines.table(cfg, data, rows)
    main = stages[main_name]
    selected = TEST_SELECTION_LABEL if cfg.train.select_on == "test" else "valid"
    metrics = {
        "method": cfg.method, "model": main_name,
        "valid": main.best_select if cfg.train.select_on == "valid" else None,
        "test": table[main_name]["test"],
        "selected_on": selected, "best_epoch": main.best_epoch,
        "stages": {n: {"best_epoch": s.best_epoch, "epochs_run": s.epochs_run,
                       "train_seconds": round(s.seconds, 2), "triples": s.triples,
                       "triples_per_s": round(s.triples_per_s), "selection": s.best_select}
                   for n, s in stages.items()},
        "baselines": table, "wall_seconds": round(wall, 2),
    }
    if data.truth is not None:
        metrics["truth"] = table[main_name]["truth"]
    if tr.rank == 0:
        atomic_write_bytes(out / "metrics.json", json.dumps(metrics, indent=2).encode())
    return metrics
