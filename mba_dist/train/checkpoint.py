"""The checkpoint schema (versioned): a finished stage, and a resumable state.

A stage checkpoint is a directory, format CHECKPOINT_FORMAT, that no rank writes whole:

    stage.pt  (rank 0) format, kind "stage", config (`config.to_dict`), stage, best_epoch,
              models, num_users, num_items, dim
    shards/   a `torch.distributed.checkpoint` of the best epoch's tables, MODEL_user and
              MODEL_item: each rank writes the shards it holds

A training rank reads back only the parts of its own plan (`load_stage_into`, any world size);
`evaluate` / `recommend` / the plots assemble whole tables (`load_stage_weights`), the only
readers that do. Stage files of format 1 (one `torch.save` of whole tables, `STAGE.pt`; files
written before the schema carried `format` and `kind` read as format 1) are still read.

A resumable state (written every `train.checkpoint_every` epochs) is a directory, format
RESUME_FORMAT, that no rank writes or reads whole either:

    state.pt  (rank 0) format, kind "resume", config, finished {stage: `StageResult.info`},
              stage (in progress), global_step, fit (the epoch loop's state), groups (what a
              table group keeps beside its tensors: a plain-torch optimizer's scalars)
    shards/   per table group n, g{n}/tables/TABLE, g{n}/optim/..., and g{n}/best/TABLE (the
              best epoch so far); per finished stage, s/STAGE/TABLE

Each rank writes the shards it holds, and a rank resuming reads the parts of the plan it has
now, so a state written by W ranks resumes on any other number (DCP reshards). This module
serialises and checks; where the directories go is the run directory's business (`run_dir`).
"""
from __future__ import annotations

import io
import pickle
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from mba_dist import config as C
from mba_dist.dist.collective import rank_world
from mba_dist.errors import CheckpointError, ConfigError
from mba_dist.files import atomic_write_bytes
from mba_dist.tables.stage_tables import StageTables

CHECKPOINT_FORMAT = 2  # stage directories; 1: one whole-table file (still read)
STAGE_FILE = "stage.pt"  # a stage directory's own file
RESUME_STATE_FILE = "state.pt"  # a resumable state's own file, in its directory
SHARDS = "shards"  # the DCP checkpoint beside either
RESUME_FORMAT = 3  # 2: finished stages as whole tables in state.pt; 1: all of it whole there
Weights = dict[str, tuple[torch.Tensor, torch.Tensor]]  # model -> (user, item)


def _bytes(obj: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_stage(directory: Path, name: str, best_epoch: int, tables: StageTables,
               cfg: C.Config) -> None:
    """Write a finished stage into `directory` (module docstring): every rank its parts of the
    tables, rank 0 stage.pt. Collective."""
    directory = Path(directory)
    _dcp_save(dict(tables.tables), directory / SHARDS)
    if rank_world()[0] == 0:
        atomic_write_bytes(directory / STAGE_FILE, _bytes({
            "format": CHECKPOINT_FORMAT, "kind": "stage", "stage": name,
            "best_epoch": best_epoch, "config": C.to_dict(cfg), "models": list(tables.models),
            "num_users": tables.num_users, "num_items": tables.num_items, "dim": tables.dim}))


def resume_state(cfg: C.Config, finished: dict, stage: str, global_step: int, fit: dict
                 ) -> dict:
    """A resumable state's state.pt content, less its groups' extras (`save_resume`)."""
    return {"format": RESUME_FORMAT, "kind": "resume", "config": C.to_dict(cfg),
            "finished": finished, "stage": stage, "global_step": global_step, "fit": fit}


def save_resume(directory: Path, meta: dict, groups: list, best: list | None,
                finished: dict[str, StageTables]) -> None:
    """Write a resumable state into `directory` (module docstring): every rank its shards of
    the table `groups`, of their `best` snapshots and of the `finished` stages' tables, rank 0
    state.pt. Collective. Under Ray Train each rank may write into a directory of its own: the
    files are merged by name."""
    directory = Path(directory)
    tensors, extras = {}, []
    for n, g in enumerate(groups):
        own, extra = g.shard_state(best[n] if best else None)
        tensors.update({f"g{n}/{k}": v for k, v in own.items()})
        extras.append(extra)
    for name, st in finished.items():
        tensors.update({f"s/{name}/{k}": v for k, v in st.tables.items()})
    _dcp_save(tensors, directory / SHARDS)
    if rank_world()[0] == 0:
        atomic_write_bytes(directory / RESUME_STATE_FILE, _bytes({**meta, "groups": extras}))


def _dcp_save(tensors: dict, where: Path) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    with _one_process_is_meant():
        dcp.save(tensors, storage_writer=dcp.FileSystemWriter(str(where)),
                 no_dist=not dist.is_initialized())


def _dcp_load(targets: dict, where: Path, what: str, ranked: bool = True) -> None:
    """Fill `targets` in place from the DCP checkpoint `where`; `what` names it in errors;
    `ranked=False`: this process reads alone (whole tables), even inside a process group."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    try:
        with _one_process_is_meant():
            dcp.load(targets, storage_reader=dcp.FileSystemReader(str(where)),
                     no_dist=not (ranked and dist.is_initialized()))
    except (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError, EOFError,
            CheckpointException) as e:
        raise CheckpointError(f"{what}: its shards do not load ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None


@contextmanager
def _one_process_is_meant() -> Iterator[None]:
    """DCP warns that it assumes one process when there is no process group: that is meant
    (a plain-torch run)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


class ResumeState(dict):
    """A resumable state's state.pt content (a dict), and its shards (`restore`)."""

    def __init__(self, meta: dict, path: Path):
        super().__init__(meta)
        self.path = Path(path)

    @property
    def shards(self) -> Path:
        return self.path.parent / SHARDS

    def restore_stage(self, name: str, group) -> StageTables:
        """A finished stage's tables, loaded into `group` (a frozen group of its models, each
        rank its part). Collective."""
        _dcp_load({f"s/{name}/{k}": v for k, v in group.live_tables().items()}, self.shards,
                  f"resumable state {self.path.parent} (stage {name})")
        return group.stage_tables()

    def restore(self, groups: list) -> list | None:
        """Load this rank's shards of every table group (in place) from the state's shards;
        returns each group's snapshot of the best epoch so far (None before the first
        validation). Collective."""
        import torch.distributed.checkpoint as dcp

        try:
            saved = dcp.FileSystemReader(str(self.shards)).read_metadata().state_dict_metadata
        except (OSError, RuntimeError, ValueError, pickle.UnpicklingError, EOFError) as e:
            raise CheckpointError(f"resumable state {self.path.parent}: its shards are missing "
                                  f"or unreadable ({type(e).__name__})") from None
        best = []
        for n, g in enumerate(groups):
            prefix = f"g{n}/"

            def load(targets: dict, prefix=prefix) -> None:
                _dcp_load({prefix + k: v for k, v in targets.items()}, self.shards,
                          f"resumable state {self.path.parent}")
            sizes = {k[len(prefix):]: m for k, m in saved.items() if k.startswith(prefix)}
            best.append(g.restore(load, sizes, self["groups"][n]))
        return best if all(b is not None for b in best) else None


def _read(path: Path, mmap: bool = False, missing: str | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(missing or f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is not readable "
                              f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is not an mba-dist checkpoint")
    return state


def _kind(state: dict) -> str | None:
    implied = "stage" if "weights" in state else "resume" if "groups" in state else None
    return state.get("kind", implied)


def _check(state: dict, path: Path, kind: str, fmt: int = CHECKPOINT_FORMAT) -> None:
    if _kind(state) == kind and state.get("format", 1) != fmt:
        raise CheckpointError(f"checkpoint {path} has format {state.get('format')!r}, this "
                              f"mba-dist reads {fmt}")
    if _kind(state) != kind:
        raise CheckpointError(f"checkpoint {path} is not a {kind} checkpoint of mba-dist")


def _stage_meta(path: Path) -> dict:
    state = _read(path / STAGE_FILE, missing=f"checkpoint {path} is incomplete (no {STAGE_FILE})")
    _check(state, path, "stage")
    try:
        int(state["num_users"]), int(state["num_items"]), int(state["dim"]), list(state["models"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"checkpoint {path} has no tables of the stage layout") from None
    return state


def load_stage_weights(path: Path) -> Weights:
    """A stage checkpoint's whole weights {model: (user, item)}, read by this process alone
    (`evaluate`, `recommend`, the plots: the commands that need them whole)."""
    path = Path(path)
    if not path.is_dir():  # format 1
        state = _read(path)
        _check(state, path, "stage", 1)
        try:
            return {m: (w["user"], w["item"]) for m, w in state["weights"].items()}
        except (KeyError, TypeError, AttributeError):
            raise CheckpointError(f"checkpoint {path} has no weights of the stage layout") from None
    meta = _stage_meta(path)
    n = {"user": meta["num_users"], "item": meta["num_items"]}
    targets = {f"{m}_{e}": torch.empty(n[e], meta["dim"]) for m in meta["models"]
               for e in ("user", "item")}
    _dcp_load(targets, path / SHARDS, f"checkpoint {path}", ranked=False)
    return {m: (targets[f"{m}_user"], targets[f"{m}_item"]) for m in meta["models"]}


def load_stage_into(path: Path, group) -> StageTables:
    """A stage checkpoint's tables of `group`'s models, loaded into `group` (a frozen group:
    each rank its part; format 1 files are read whole first). Collective."""
    path = Path(path)
    if path.is_dir():
        meta = _stage_meta(path)
        if (meta["num_users"], meta["num_items"], meta["dim"]) != (
                group.num_users, group.num_items, group.dim):
            raise CheckpointError(
                f"checkpoint {path} holds tables of {meta['num_users']} users x "
                f"{meta['num_items']} items, dim {meta['dim']}; this run has {group.num_users} "
                f"x {group.num_items}, dim {group.dim}")
        held = meta["models"]
    else:
        held = whole = load_stage_weights(path)
    missing = [m for m in group.models if m not in held]
    if missing:
        raise CheckpointError(f"checkpoint {path} has no tables of model {', '.join(missing)}")
    if path.is_dir():
        _dcp_load(group.live_tables(), path / SHARDS, f"checkpoint {path}")
    else:
        for m in group.models:
            group.load(m, *whole[m])
    return group.stage_tables()


def load_resume_state(path: Path, mmap: bool = False) -> ResumeState:
    """A resumable state from its state.pt; `mmap`: tensors are mapped, not read (a check of
    the config). Its shards are read by `ResumeState.restore`."""
    state = _read(path, mmap)
    if _kind(state) == "resume" and state.get("format", 1) < RESUME_FORMAT:
        raise CheckpointError(f"resumable state {path} was written by an earlier mba-dist "
                              f"(format {state.get('format', 1)}, whole tables): resume it with "
                              "that version, or pass --overwrite to start over")
    _check(state, path, "resume", RESUME_FORMAT)
    return ResumeState(state, path)


def check_resumable(state: dict, cfg: C.Config) -> None:
    """Whether `state` continues a run of `cfg`: same format, and the same config (keys added
    since the state was written count with their defaults)."""
    if state.get("format") != RESUME_FORMAT:
        raise CheckpointError(f"resumable state has format {state.get('format')!r}, this "
                              f"mba-dist reads {RESUME_FORMAT}")
    try:
        saved = C.dotted(C.load_config(state["config"]))
    except ConfigError as e:
        raise ConfigError(f"cannot resume: the checkpoint's config does not load here ({e})") from None
    now = C.dotted(cfg)
    if saved != now:
        diff = sorted(C.differing_keys(saved, now))
        raise ConfigError(f"cannot resume: the checkpoint was written with another config "
                          f"(differs in {', '.join(diff) or 'layout'})")
