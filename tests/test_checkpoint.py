"""Resumable epoch checkpoints: a run resumed from any epoch's state ends exactly where the
uninterrupted run ends (in-memory batches draw per-epoch randomness), and the table groups
restore weights, optimizer state and the best epoch exactly, on another number of ranks too
(sharded checkpoints)."""
import json
from pathlib import Path

import pytest
import torch

from mba_dist import config as C
from mba_dist.run_dir import RunDir
from mba_dist.train.runner import run_training

SETS = ["pretrain.epochs=3", "pretrain.patience=100", "mba.epochs=3", "mba.patience=100",
        "train.merged_baseline=true", "train.batch_size=256"]


class Recorder:
    """Keeps every epoch's resumable state, each in a directory of its own under `root`."""

    def __init__(self, root: Path):
        self.root, self.states = Path(root), []

    def epoch_end(self, record, save):
        d = self.root / f"{record['stage']}-{record['epoch']}"
        save(d)
        self.states.append((record["stage"], record["epoch"], d))


def _load(directory):
    from mba_dist.train.checkpoint import RESUME_STATE_FILE, load_resume_state

    return load_resume_state(Path(directory) / RESUME_STATE_FILE)


def _log(run):
    drop = ("time", "seconds", "triples_per_s", "data_s")
    return [{k: v for k, v in json.loads(ln).items() if k not in drop}
            for ln in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("at", [("pre_g", 2), ("mf_merged", 1), ("mba", 1), ("mba", 3)])
def test_resume_ends_where_the_uninterrupted_run_ends(tiny_dataset, tmp_path, at):
    cfg = C.load_config("configs/synthetic.yaml", SETS)
    rec = Recorder(tmp_path / "states")
    full = run_training(cfg, tiny_dataset, RunDir(tmp_path / "full"), checkpointer=rec)
    blob = next(b for st, ep, b in rec.states if (st, ep) == at)
    resumed = run_training(cfg, tiny_dataset, RunDir(tmp_path / "resumed"), resume=_load(blob))
    assert resumed["test"] == full["test"]
    assert resumed["baselines"] == full["baselines"]
    assert _log(tmp_path / "resumed") == _log(tmp_path / "full")


def test_resume_in_a_lightgcn_stage_ends_where_the_uninterrupted_run_ends(tiny_dataset, tmp_path):
    cfg = C.load_config("configs/synthetic.yaml", SETS + ["model.t=lightgcn",
                                                           "train.merged_baseline=false"])
    rec = Recorder(tmp_path / "states")
    full = run_training(cfg, tiny_dataset, RunDir(tmp_path / "full"), checkpointer=rec)
    assert "lightgcn_bpr" in full["baselines"]
    # within LightGCN-BPR (layer-0 tables, Adam state, best epoch's snapshot), and within MBA
    # (t likewise, the finished LightGCN-BPR stage read back as MF-shaped tables)
    for at in (("lightgcn_bpr", 2), ("mba", 1)):
        blob = next(b for st, ep, b in rec.states if (st, ep) == at)
        out = tmp_path / f"resumed-{at[0]}"
        resumed = run_training(cfg, tiny_dataset, RunDir(out), resume=_load(blob))
        assert resumed["baselines"] == full["baselines"]
        assert _log(out) == _log(tmp_path / "full")


def test_resume_refuses_another_config(tiny_dataset, tmp_path):
    cfg = C.load_config("configs/synthetic.yaml", SETS + ["mba.epochs=1", "pretrain.epochs=1"])
    rec = Recorder(tmp_path / "states")
    run_training(cfg, tiny_dataset, RunDir(tmp_path / "a"), checkpointer=rec)
    other = C.load_config("configs/synthetic.yaml", SETS + ["mba.epochs=1", "pretrain.epochs=1",
                                                            "mba.alpha=3.5"])
    with pytest.raises(C.ConfigError, match="mba.alpha"):
        run_training(other, tiny_dataset, RunDir(tmp_path / "b"), resume=_load(rec.states[0][2]))


MODES = ("adagrad", "rowwise_adagrad")


def _group(mode):
    from mba_dist.config import OptimConfig
    from mba_dist.tables.torchrec_tables import TorchrecTableGroup

    return TorchrecTableGroup(["t", "h1_f"], 10, 7, 4, OptimConfig(mode=mode, lr=0.1),
                              torch.device("cpu"))


def _steps(g, ks):
    for k in ks:  # the same batch on every rank: W ranks average W equal gradients
        gen = torch.Generator().manual_seed(k)
        rows = g.lookup(torch.randint(0, 10, (3,), generator=gen),
                        *torch.randint(0, 7, (2, 3), generator=gen))
        ((rows.users ** 2).sum() + (rows.items ** 2).sum()).backward()


def _whole(g):
    return {m: [t.clone() for t in g.weights(m)] for m in g.models}


def _save_sharded(root):
    """On every rank: 3 steps (a snapshot after 2), a sharded state, 3 more steps."""
    from mba_dist.train import checkpoint

    out = {}
    for mode in MODES:
        g = _group(mode)
        _steps(g, [0, 1])
        best = g.snapshot()
        _steps(g, [2])
        meta = {"format": checkpoint.RESUME_FORMAT, "kind": "resume"}
        checkpoint.save_resume(Path(root) / mode, meta, [g], [best], {})
        out[mode] = {"best": {m: g.stage_tables(best).whole(m) for m in g.models},
                     "saved": _whole(g)}
        _steps(g, [3, 4, 5])
        out[mode]["end"] = _whole(g)
    return out


def _resume_sharded(root):
    """On every rank: restore the state of `_save_sharded` (written on another number of
    ranks), and take the same 3 steps; and the same from the tables without the optimizer."""
    from mba_dist.train import checkpoint

    out = {}
    for mode in MODES:
        state = checkpoint.load_resume_state(Path(root) / mode / checkpoint.RESUME_STATE_FILE)
        g = _group(mode)
        [best] = state.restore([g])
        out[mode] = {"best": {m: g.stage_tables(best).whole(m) for m in g.models},
                     "saved": _whole(g)}
        fresh = _group(mode)
        for m, (u, i) in out[mode]["saved"].items():
            fresh.load(m, u, i)
        _steps(g, [3, 4, 5])
        _steps(fresh, [3, 4, 5])
        out[mode]["end"], out[mode]["no_optimizer"] = _whole(g), _whole(fresh)
    return out


def _both(root_from, root_to):
    return _resume_sharded(root_from), _save_sharded(root_to)


def test_sharded_state_resumes_on_another_number_of_ranks(tmp_path):
    """A state written by 2 ranks resumes on 1 and one written by 1 on 2: the tables, the
    optimizer state and the best epoch come back exactly (DCP reshards), and the next steps
    are those of the uninterrupted group."""
    from mba_dist.dist.local import run_local_ranks

    on_two = run_local_ranks(_save_sharded, 2, str(tmp_path / "two"))[0]
    from_two, on_one = run_local_ranks(_both, 1, str(tmp_path / "two"), str(tmp_path / "one"))[0]
    from_one = run_local_ranks(_resume_sharded, 2, str(tmp_path / "one"))[0]
    for written, resumed in ((on_two, from_two), (on_one, from_one)):
        for mode in MODES:
            w, r = written[mode], resumed[mode]
            for m in w["saved"]:
                for key in ("saved", "best"):
                    assert all(torch.equal(a, b) for a, b in zip(w[key][m], r[key][m]))
                for a, b, c in zip(w["end"][m], r["end"][m], r["no_optimizer"][m]):
                    torch.testing.assert_close(b, a, rtol=0, atol=1e-7)
                    assert float((c - a).abs().max()) > 1e-4  # the optimizer state matters
    with pytest.raises(Exception, match="format 1, whole tables"):
        from mba_dist.train import checkpoint

        old = tmp_path / "old.pt"
        torch.save({"format": 1, "kind": "resume", "groups": []}, old)
        checkpoint.load_resume_state(old)


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
