"""The run directory's rule: a rejected command changes nothing on disk."""
import hashlib
from pathlib import Path

import pytest
import torch

from mba_dist import config as C
from mba_dist.run_dir import RunDir
from mba_dist.train import checkpoint
from launch.cli import main

FAST = ["pretrain.epochs=2", "mba.epochs=2", "train.batch_size=256", "train.merged_baseline=false"]


def _sets(items):
    return [a for kv in items for a in ("--set", kv)]


def _snapshot(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["run", "--local", "--data", str(tiny_dataset), "--config",
                 "configs/synthetic.yaml", "--out", str(out)] + _sets(FAST)) == 0
    return out


@pytest.mark.parametrize("args,message", [
    (_sets(["mba.alpah=3"]), "unknown key 'mba.alpah'"),
    (_sets(["mba.beta=2"]), "mba.beta must be in [0, 1]"),
    (["--workers", "2"], "2 workers need model.backend=torchrec"),
    (["--local", "--workers", "2"], "--local runs one in-process worker"),
    (_sets(["data.target=cart"]), "data.target is 'cart'"),
    (_sets(["pretrain.from_run=/nonexistent/run"]), "is not an mba-dist run"),
])
def test_a_rejected_overwrite_leaves_the_finished_run_byte_identical(finished, tiny_dataset,
                                                                     capsys, args, message):
    before = _snapshot(finished)
    rc = main(["run", "--data", str(tiny_dataset), "--config", "configs/synthetic.yaml",
               "--out", str(finished), "--overwrite"] + _sets(FAST) + args)
    assert rc == 2
    assert message in capsys.readouterr().err
    assert _snapshot(finished) == before


def test_an_unresumable_state_is_refused_before_anything_is_written(tiny_dataset, tmp_path,
                                                                    capsys):
    """An unfinished run whose resumable state has another config: a rerun without
    --overwrite would resume it, so it is refused and the directory stays as it was."""
    run = RunDir(tmp_path / "run")
    old = C.load_config("configs/synthetic.yaml", FAST + ["mba.alpha=3"])
    run.begin(old, {"data": str(tiny_dataset)}, overwrite=False)
    state = checkpoint.resume_state(old, {}, "pre_f", 5, {"epoch": 1})
    where = run.root / "ray" / "mba-dist" / "checkpoint_0001" / "state.pt"
    where.parent.mkdir(parents=True)
    torch.save(state, where)
    before = _snapshot(run.root)
    # through Ray Train (which would resume it); refused before Ray starts
    rc = main(["run", "--data", str(tiny_dataset), "--config", "configs/synthetic.yaml",
               "--out", str(run.root)] + _sets(FAST))
    err = capsys.readouterr().err
    assert rc == 2 and "would resume" in err and "mba.alpha" in err
    assert _snapshot(run.root) == before
    # a --local run (it resumes only its own states), or one that starts over, is not held
    # back by that state
    new = C.load_config("configs/synthetic.yaml", FAST)
    assert run.check_new_run(new, overwrite=False, local=True) is None
    assert run.check_new_run(new, overwrite=True) is None


def test_outputs_over_a_file_and_from_run_without_its_stages_are_input_errors(finished, tmp_path,
                                                                              tiny_dataset, capsys):
    from mba_dist.errors import ConfigError
    from mba_dist.train.runner import run_training

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["evaluate", "--run", str(finished), "--out", str(blocker)]) == 2
    assert "is not a directory" in capsys.readouterr().err
    cfg = C.load_config("configs/synthetic.yaml", FAST + [f"pretrain.from_run={finished}"])
    with pytest.raises(ConfigError, match="pretrain.from_run"):
        run_training(cfg, tiny_dataset, None)


def test_finished_runs_load_back_and_refuse_when_incomplete(finished, tmp_path):
    loaded = RunDir(finished).load()
    assert loaded.cfg.data.aux == "click" and loaded.has_stage("mba")
    assert set(loaded.all_stage_weights()) == {"pre_f", "pre_g", "mba"}
    (tmp_path / "half").mkdir()
    with pytest.raises(Exception, match="is not a finished mba-dist run"):
        RunDir(tmp_path / "half").load()


def test_an_unresumable_state_in_a_shared_storage_is_refused_too(tiny_dataset, tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    storage = str(tmp_path / "shared")
    old = C.load_config("configs/synthetic.yaml", FAST + ["mba.c1=7"])
    where = Path(storage) / run.ray_run_name(storage, fresh=False) / "checkpoint_0001" / "state.pt"
    where.parent.mkdir(parents=True)
    torch.save(checkpoint.resume_state(old, {}, "pre_f", 5, {"epoch": 1}), where)
    rc = main(["run", "--data", str(tiny_dataset), "--config", "configs/synthetic.yaml",
               "--out", str(run.root), "--storage", storage] + _sets(FAST))
    assert rc == 2 and "mba.c1" in capsys.readouterr().err
    assert not run.root.exists()


def test_a_local_state_moved_aside_by_a_killed_swap_is_still_resumed(tmp_path):
    """A kill between swap_in's two renames leaves RUN/checkpoint missing and the last state
    under its .old name: the run resumes that one instead of starting over."""
    run = RunDir(tmp_path / "run")
    assert run.latest_resume_state(local=True) is None
    aside = run.root / ".checkpoint.old-123@host-abc" / "state.pt"
    aside.parent.mkdir(parents=True)
    aside.write_bytes(b"x")
    assert run.latest_resume_state(local=True) == aside
    run.local_state_path.parent.mkdir()
    run.local_state_path.write_bytes(b"y")
    assert run.latest_resume_state(local=True) == run.local_state_path
