"""The checkpoint schema (versioned): a finished stage, and a resumable state.

A stage file is one `torch.save` dict of plain tensors and values (read with
`weights_only=True`), format CHECKPOINT_FORMAT:

    format, kind "stage", config (`config.to_dict`), stage, best_epoch,
    weights {model: {"user": [U, d], "item": [I, d]}}

It is what `evaluate` / `recommend` / `pretrain.from_run` load. Stage files written before the
schema carried `format` and `kind` read as format 1.

A resumable state (written every `train.checkpoint_every` epochs) is a directory, format
RESUME_FORMAT, that no rank writes or reads whole:

    state.pt  (rank 0) format, kind "resume", config, finished {stage: StageResult fields},
              stage (in progress), global_step, fit (the epoch loop's state), groups (what a
              table group keeps beside its tensors: a plain-torch optimizer's scalars)
    shards/   a `torch.distributed.checkpoint` of every rank's shards: per table group n,
              g{n}/tables/TABLE, g{n}/optim/..., and g{n}/best/TABLE (the best epoch so far)

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
from mba_dist.errors import CheckpointError, ConfigError

CHECKPOINT_FORMAT = 1  # stage files
RESUME_STATE_FILE = "state.pt"  # a resumable state's own file, in its directory
RESUME_SHARDS = "shards"  # the DCP checkpoint beside it
RESUME_FORMAT = 2  # 1: one whole-table file that every rank gathered
Weights = dict[str, tuple[torch.Tensor, torch.Tensor]]  # model -> (user, item)


def _bytes(obj: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def stage_bytes(name: str, best_epoch: int, weights: Weights, cfg: C.Config) -> bytes:
    return _bytes({"format": CHECKPOINT_FORMAT, "kind": "stage", "stage": name,
                   "best_epoch": best_epoch, "config": C.to_dict(cfg),
                   "weights": {m: {"user": u, "item": i} for m, (u, i) in weights.items()}})


def resume_state(cfg: C.Config, finished: dict, stage: str, global_step: int, fit: dict
                 ) -> dict:
    """A resumable state's state.pt content, less its groups' extras (`save_resume`)."""
    return {"format": RESUME_FORMAT, "kind": "resume", "config": C.to_dict(cfg),
            "finished": finished, "stage": stage, "global_step": global_step, "fit": fit}


def save_resume(directory: Path, meta: dict, groups: list, best: list | None) -> None:
    """Write a resumable state into `directory` (module docstring): every rank its shards of
    the table `groups` and of their `best` snapshots, rank 0 state.pt. Collective. Under Ray
    Train each rank may write into a directory of its own: the files are merged by name."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    directory = Path(directory)
    tensors, extras = {}, []
    for n, g in enumerate(groups):
        own, extra = g.shard_state(best[n] if best else None)
        tensors.update({f"g{n}/{k}": v for k, v in own.items()})
        extras.append(extra)
    ranked = dist.is_initialized()
    with _one_process_is_meant():
        dcp.save(tensors, storage_writer=dcp.FileSystemWriter(str(directory / RESUME_SHARDS)),
                 no_dist=not ranked)
    if not ranked or dist.get_rank() == 0:
        from mba_dist.files import atomic_write_bytes
        atomic_write_bytes(directory / RESUME_STATE_FILE, _bytes({**meta, "groups": extras}))


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
        return self.path.parent / RESUME_SHARDS

    def restore(self, groups: list) -> list | None:
        """Load this rank's shards of every table group (in place) from the state's shards;
        returns each group's snapshot of the best epoch so far (None before the first
        validation). Collective."""
        import torch.distributed as dist
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
                try:
                    with _one_process_is_meant():
                        dcp.load({prefix + k: v for k, v in targets.items()},
                                 storage_reader=dcp.FileSystemReader(str(self.shards)),
                                 no_dist=not dist.is_initialized())
                except (OSError, RuntimeError, ValueError, KeyError) as e:  # a rank's file lost
                    raise CheckpointError(f"resumable state {self.path.parent}: its shards do "
                                          f"not load ({type(e).__name__}: "
                                          f"{str(e).splitlines()[0][:200] if str(e) else ''})"
                                          ) from None
            sizes = {k[len(prefix):]: m for k, m in saved.items() if k.startswith(prefix)}
            best.append(g.restore(load, sizes, self["groups"][n]))
        return best if all(b is not None for b in best) else None


def _read(path: Path, mmap: bool = False) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
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


def load_stage_weights(path: Path) -> Weights:
    """A stage file's weights {model: (user, item)}."""
    state = _read(path)
    _check(state, path, "stage")
    try:
        return {m: (w["user"], w["item"]) for m, w in state["weights"].items()}
    except (KeyError, TypeError, AttributeError):
        raise CheckpointError(f"checkpoint {path} has no weights of the stage layout") from None


def load_resume_state(path: Path, mmap: bool = False) -> ResumeState:
    """A resumable state from its state.pt; `mmap`: tensors are mapped, not read (a check of
    the config). Its shards are read by `ResumeState.restore`."""
    state = _read(path, mmap)
    if _kind(state) == "resume" and state.get("format", 1) == 1:
        raise CheckpointError(f"resumable state {path} was written by an earlier mba-dist "
                              "(format 1, whole tables): resume it with that version, or pass "
                              "--overwrite to start over")
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
        diff = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
        raise ConfigError(f"cannot resume: the checkpoint was written with another config "
                          f"(differs in {', '.join(diff) or 'layout'})")
