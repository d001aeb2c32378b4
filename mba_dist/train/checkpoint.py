"""The checkpoint schema (one, versioned): a finished stage, and a resumable state.

Both are `torch.save` dicts of plain tensors and values (read with `weights_only=True`):

    common  format (CHECKPOINT_FORMAT), kind ("stage" | "resume"), config (`config.to_dict`)
    stage   stage, best_epoch, weights {model: {"user": [U, d], "item": [I, d]}}
    resume  finished {stage: StageResult fields}, stage (in progress), global_step,
            fit (the epoch loop's state), groups (each table group's tables + optimizer state)

A stage file is what `evaluate` / `recommend` / `pretrain.from_run` load; a resumable state is
what Ray Train keeps after every `train.checkpoint_every` epochs. Stage files written before
the schema carried `format` and `kind` read as format 1. This module serialises and checks;
where the bytes go is the run directory's business (`run_dir`).
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch

from mba_dist import config as C
from mba_dist.errors import CheckpointError, ConfigError

CHECKPOINT_FORMAT = 1
RESUME_STATE_FILE = "state.pt"  # a resumable state's name in a Ray Train checkpoint
RESUME_FORMAT = CHECKPOINT_FORMAT  # the format a resumable state carries
Weights = dict[str, tuple[torch.Tensor, torch.Tensor]]  # model -> (user, item)


def _bytes(obj: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def stage_bytes(name: str, best_epoch: int, weights: Weights, cfg: C.Config) -> bytes:
    return _bytes({"format": CHECKPOINT_FORMAT, "kind": "stage", "stage": name,
                   "best_epoch": best_epoch, "config": C.to_dict(cfg),
                   "weights": {m: {"user": u, "item": i} for m, (u, i) in weights.items()}})


def resume_state(cfg: C.Config, finished: dict, stage: str, global_step: int, fit: dict,
                 groups: list[dict]) -> dict:
    return {"format": RESUME_FORMAT, "kind": "resume", "config": C.to_dict(cfg),
            "finished": finished, "stage": stage, "global_step": global_step, "fit": fit,
            "groups": groups}


def resume_bytes(state: dict) -> bytes:
    return _bytes(state)


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


def _check(state: dict, path: Path, kind: str) -> None:
    if state.get("format", 1) != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {state.get('format')!r}, this "
                              f"mba-dist reads {CHECKPOINT_FORMAT}")
    implied = "stage" if "weights" in state else "resume" if "groups" in state else None
    if state.get("kind", implied) != kind:
        raise CheckpointError(f"checkpoint {path} is not a {kind} checkpoint of mba-dist")


def load_stage_weights(path: Path) -> Weights:
    """A stage file's weights {model: (user, item)}."""
    state = _read(path)
    _check(state, path, "stage")
    try:
        return {m: (w["user"], w["item"]) for m, w in state["weights"].items()}
    except (KeyError, TypeError, AttributeError):
        raise CheckpointError(f"checkpoint {path} has no weights of the stage layout") from None


def load_resume_state(path: Path, mmap: bool = False) -> dict:
    """A resumable state; `mmap`: its tensors are mapped, not read (a check of the config)."""
    state = _read(path, mmap)
    _check(state, path, "resume")
    return state


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
