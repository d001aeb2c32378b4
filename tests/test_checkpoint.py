"""Resumable epoch checkpoints: a run resumed from any epoch's state ends exactly where the
uninterrupted run ends (in-memory batches draw per-epoch randomness), and the table groups
restore weights and optimizer state exactly."""
import io
import json

import pytest
import torch

from mba_dist import config as C
from mba_dist.run_dir import RunDir
from mba_dist.train.runner import run_training

SETS = ["pretrain.epochs=3", "pretrain.patience=100", "mba.epochs=3", "mba.patience=100",
        "train.merged_baseline=true", "train.batch_size=256"]


class Recorder:
    """Keeps every epoch's resumable state, serialised as a checkpoint file would be."""

    def __init__(self):
        self.states = []

    def epoch_end(self, record, state):
        buf = io.BytesIO()
        torch.save(state(), buf)
        self.states.append((record["stage"], record["epoch"], buf.getvalue()))


def _load(blob):
    return torch.load(io.BytesIO(blob), weights_only=True)


def _log(run):
    drop = ("time", "seconds", "triples_per_s", "data_s")
    return [{k: v for k, v in json.loads(ln).items() if k not in drop}
            for ln in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("at", [("pre_g", 2), ("mf_merged", 1), ("mba", 1), ("mba", 3)])
def test_resume_ends_where_the_uninterrupted_run_ends(tiny_dataset, tmp_path, at):
    cfg = C.load_config("configs/synthetic.yaml", SETS)
    rec = Recorder()
    full = run_training(cfg, tiny_dataset, RunDir(tmp_path / "full"), checkpointer=rec)
    blob = next(b for st, ep, b in rec.states if (st, ep) == at)
    resumed = run_training(cfg, tiny_dataset, RunDir(tmp_path / "resumed"), resume=_load(blob))
    assert resumed["test"] == full["test"]
    assert resumed["baselines"] == full["baselines"]
    assert _log(tmp_path / "resumed") == _log(tmp_path / "full")


def test_resume_refuses_another_config(tiny_dataset, tmp_path):
    cfg = C.load_config("configs/synthetic.yaml", SETS + ["mba.epochs=1", "pretrain.epochs=1"])
    rec = Recorder()
    run_training(cfg, tiny_dataset, RunDir(tmp_path / "a"), checkpointer=rec)
    other = C.load_config("configs/synthetic.yaml", SETS + ["mba.epochs=1", "pretrain.epochs=1",
                                                            "mba.alpha=3.5"])
    with pytest.raises(C.ConfigError, match="mba.alpha"):
        run_training(other, tiny_dataset, RunDir(tmp_path / "b"), resume=_load(rec.states[0][2]))


@pytest.mark.parametrize("mode", ["adagrad", "rowwise_adagrad"])
def test_torchrec_group_state_restores_weights_and_optimizer(mode):
    from mba_dist.dist.local import local_process_group
    from mba_dist.config import OptimConfig
    from mba_dist.tables.torchrec_tables import TorchrecTableGroup

    def group():
        return TorchrecTableGroup(["t", "h1_f"], 10, 7, 4, OptimConfig(mode=mode, lr=0.1),
                                  torch.device("cpu"))

    def step(g, k):
        gen = torch.Generator().manual_seed(k)
        rows = g.lookup(torch.randint(0, 10, (3,), generator=gen),
                        *torch.randint(0, 7, (2, 3), generator=gen))
        ((rows.users ** 2).sum() + (rows.items ** 2).sum()).backward()

    def diff(a, b):
        return max(float((x - y).abs().max()) for m in a.models
                   for x, y in zip(a.weights(m), b.weights(m)))

    with local_process_group():
        a = group()
        for k in range(3):
            step(a, k)
        state = a.state()
        b, c = group(), group()
        b.load_state(state)
        c.load_state({"tables": state["tables"], "optim": {}})  # weights only
        for k in range(3, 6):
            step(a, k), step(b, k), step(c, k)
        assert diff(a, b) == 0.0
        assert diff(a, c) > 1e-4  # the optimizer state matters, so the check above can fail


def test_resume_accepts_keys_added_since_with_their_defaults_and_refuses_changed_ones():
    from mba_dist import config as C
    from mba_dist.train.checkpoint import RESUME_FORMAT, check_resumable as _check_resumable

    cfg = C.load_config(None)
    older = C.to_dict(cfg)
    del older["train"]["data_threads"]  # a state written before the key existed
    _check_resumable({"format": RESUME_FORMAT, "config": older}, cfg)
    changed = C.to_dict(C.load_config(None, ["train.data_threads=3", "mba.alpha=7"]))
    with pytest.raises(C.ConfigError, match=r"differs in mba\.alpha, train\.data_threads"):
        _check_resumable({"format": RESUME_FORMAT, "config": changed}, cfg)
    gone = {**C.to_dict(cfg), "old_section": {"x": 1}}
    with pytest.raises(C.ConfigError, match="does not load here"):
        _check_resumable({"format": RESUME_FORMAT, "config": gone}, cfg)


def test_worker_input_errors_surface_from_rays_wrapping():
    from ray.exceptions import RayTaskError
    from ray.train import WorkerGroupError

    from mba_dist.config import ConfigError
    from mba_dist.dist.ray import input_error

    bad = ConfigError("cannot resume: the checkpoint was written with another config")
    wrapped = RayTaskError("train_fn", "traceback text", bad)
    assert input_error(WorkerGroupError("rank 0 failed", {0: wrapped})) is bad
    assert input_error(WorkerGroupError("rank 0 failed", {0: RuntimeError("oom")})) is None
    assert input_error(RuntimeError("not from workers")) is None
    # runs in one shared storage do not share a Ray Train run; a fresh start gets a new one
    from mba_dist.run_dir import RunDir

    a, b = RunDir("/runs/a"), RunDir("/runs/b")
    assert a.ray_run_name(None, False) == "mba-dist"
    assert a.ray_run_name("s3://x", False) != b.ray_run_name("s3://x", False)
    assert a.ray_run_name("s3://x", False) == a.ray_run_name("s3://x", False)
    assert a.ray_run_name("s3://x", True) != a.ray_run_name("s3://x", False)
