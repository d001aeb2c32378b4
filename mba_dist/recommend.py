"""Top-N recommendations in raw ids, from a finished run directory.

A run directory holds `run.json` (dataset path), `config.yaml` (resolved config) and
`checkpoints/*.pt`; `load_run` rebuilds the scorer of the run's own model.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mba_dist import baselines
from mba_dist import config as C
from mba_dist.dataset import CSR, Dataset, atomic_write_bytes
from mba_dist.evaluate import Scorer, rank_top_k
from mba_dist.train import TrainData, load_checkpoint


class RunError(ValueError):
    """A run directory that is missing or incomplete."""


def load_run_config(run_dir: str | Path) -> tuple[Path, C.Config, Dataset]:
    run = Path(run_dir)
    for name in ("run.json", "config.yaml", "metrics.json"):
        if not (run / name).is_file():
            raise RunError(f"{run / name} is missing: {run} is not a finished mba-dist run")
    info = json.loads((run / "run.json").read_text())
    return run, C.load_config(run / "config.yaml"), Dataset(info["data"])


def stage_weights(run: Path) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Every checkpointed stage of a run: {stage: {model: (user, item)}}."""
    found = sorted((run / "checkpoints").glob("*.pt"))
    if not found:
        raise RunError(f"{run / 'checkpoints'} holds no checkpoint")
    return {p.stem: load_checkpoint(p) for p in found}


def load_run(run_dir: str | Path) -> tuple[C.Config, Dataset, Scorer]:
    """Config, dataset and the scorer of the run's own model."""
    run, cfg, ds = load_run_config(run_dir)
    needed = [baselines.main_model(cfg)] if cfg.method == "mf" else ["mba", "pre_f"]
    stages = {n: load_checkpoint(run / "checkpoints" / f"{n}.pt") for n in needed}
    return cfg, ds, baselines.model_scorer(cfg, stages)


def evaluate_run(run_dir: str | Path, with_baselines: bool = True, group=None) -> dict:
    """{row: {split: metrics}} for a finished run: its model, and the baselines it has
    checkpoints for. Validation is reported unless the run selected on the test set."""
    run, cfg, ds = load_run_config(run_dir)
    data = TrainData.load(ds, cfg)
    stages = stage_weights(run)
    rows = (baselines.scorers(cfg, data, stages) if with_baselines
            else {baselines.main_model(cfg): baselines.model_scorer(cfg, stages)})
    return baselines.table(cfg, data, rows, ("valid", "test", "truth"), group)


def top_n_table(scorer: Scorer, ds: Dataset, users: np.ndarray, mask: CSR, n: int,
                memory_mb: int) -> pa.Table:
    """(user, item, rank, score) in raw ids; rank 1 is the best; masked items never appear."""
    cols: dict[str, list] = {"user": [], "item": [], "rank": [], "score": []}
    for uc, v, i in rank_top_k(scorer, users, n, mask, ds.num_items, memory_mb):
        keep = torch.isfinite(v).numpy()  # fewer than n unmasked items: shorter list
        k = v.shape[1]
        cols["user"].append(np.repeat(uc, k)[keep.ravel()])
        cols["item"].append(i.numpy().ravel()[keep.ravel()])
        cols["rank"].append(np.tile(np.arange(1, k + 1), len(uc))[keep.ravel()])
        cols["score"].append(v.numpy().ravel()[keep.ravel()])
    u = np.concatenate(cols["user"]) if cols["user"] else np.zeros(0, np.int64)
    it = np.concatenate(cols["item"]) if cols["item"] else np.zeros(0, np.int64)
    return pa.table({
        "user": ds.raw_ids("user", u), "item": ds.raw_ids("item", it),
        "rank": np.concatenate(cols["rank"]).astype(np.int32) if cols["rank"] else np.zeros(0, np.int32),
        "score": np.concatenate(cols["score"]).astype(np.float32) if cols["score"] else np.zeros(0, np.float32),
    })


def write_table(path: Path, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue())


def known_target_mask(cfg: C.Config, ds: Dataset) -> CSR:
    """Every known train purchase of each user (train + validation pairs): never recommended."""
    return TrainData.load(ds, cfg).test_mask
