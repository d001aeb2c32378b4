"""Bad input gets one clear line before any work, and nothing the user had is lost."""
import hashlib

import pytest

from mba_dist import config as C
from launch.cli import main


@pytest.mark.parametrize("item,message", [
    ("optim.lr=0", "optim.lr must be greater than 0.0, got 0.0"),
    ("optim.lr=-1e-3", "optim.lr must be greater than 0.0, got -0.001"),
    ("optim.lr=.nan", "optim.lr must be a finite number, got nan"),
    ("mba.alpha=.inf", "mba.alpha must be a finite number, got inf"),
    ("mba.alpha=-1", "mba.alpha must be at least 0.0, got -1.0"),
    ("mba.c1=-5", "mba.c1 must be at least 0.0, got -5.0"),
    ("mba.c2=-.inf", "mba.c2 must be a finite number, got -inf"),
    ("mba.lambda_t=-1", "mba.lambda_t must be at least 0.0, got -1.0"),
    ("pretrain.lambda0=-1", "pretrain.lambda0 must be at least 0.0, got -1.0"),
    ("model.init_std=0", "model.init_std must be greater than 0.0, got 0.0"),
    ("pretrain.epochs=0", "pretrain.epochs must be at least 1, got 0"),
    ("mba.epochs=-3", "mba.epochs must be at least 1, got -3"),
    ("mba.patience=0", "mba.patience must be at least 1, got 0"),
    ("eval.top_n=0", "eval.top_n must be at least 1, got 0"),
    ("eval.memory_mb=0", "eval.memory_mb must be at least 1, got 0"),
    ("eval.ks=[20]", "eval.ks must contain 10 and 20"),
    ("eval.ks=[10,20,0]", "eval.ks must be at least 1, got [10, 20, 0]"),
    ("train.max_steps_per_epoch=-1", "train.max_steps_per_epoch must be 0 (all steps) or positive"),
    ("mba.alpha=[1", "--set 'mba.alpha=[1': the value is not valid YAML"),
])
def test_bad_config_values_are_refused_at_load(item, message):
    with pytest.raises(C.ConfigError) as e:
        C.load_config("configs/synthetic.yaml", [item])
    assert message in str(e.value)
    assert "\n" not in str(e.value).split(": the value is not valid YAML")[0]


def test_a_bad_value_is_refused_before_the_run_directory_exists(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--local", "--data", str(tiny_dataset), "--out", str(out),
                 "--set", "optim.lr=nan"]) == 2
    assert capsys.readouterr().err.strip() == (
        "mba-dist run: error: optim.lr must be a finite number, got nan")
    assert not out.exists()


def _tree(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("cmd", [
    ["synth", "--size", "tiny", "--overwrite", "--out"],
    ["prepare", "--target", "purchase", "--train", "purchase=RAW", "--test", "purchase=RAW",
     "--overwrite", "--out"],
])
def test_overwrite_refuses_a_directory_that_is_not_a_dataset(tmp_path, capsys, cmd):
    user = tmp_path / "my_logs"
    user.mkdir()
    raw = user / "buy.csv"
    raw.write_text("".join(f"{u}\t{i}\n" for u in range(30) for i in range(u % 5, u % 5 + 4)))
    (user / "notes.txt").write_text("mine")
    before = _tree(user)
    args = [a.replace("RAW", str(raw)) for a in cmd] + [str(user)]
    assert main(args) == 2
    assert "is not an mba-dist dataset" in capsys.readouterr().err
    assert _tree(user) == before


def test_run_overwrite_refuses_a_directory_that_is_not_a_run(tiny_dataset, tmp_path, capsys):
    user = tmp_path / "results"
    user.mkdir()
    (user / "paper.tex").write_text("mine")
    before = _tree(user)
    assert main(["run", "--local", "--data", str(tiny_dataset), "--out", str(user),
                 "--overwrite", "--set", "data.aux=click"]) == 2
    assert "is not an mba-dist run" in capsys.readouterr().err
    assert _tree(user) == before


def test_a_killed_overwrite_leaves_the_earlier_run_evaluating_to_its_metrics(tiny_dataset,
                                                                             tmp_path):
    import json
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    fast = ["--set", "pretrain.epochs=2", "--set", "mba.epochs=2", "--set",
            "train.merged_baseline=false", "--set", "data.aux=click"]
    assert main(["run", "--local", "--data", str(tiny_dataset), "--out", str(out)] + fast) == 0
    recorded = json.loads((out / "metrics.json").read_text())
    before = _tree(out)
    slow = ["--set", "pretrain.epochs=300", "--set", "pretrain.patience=300",
            "--set", "data.aux=click"]
    proc = subprocess.Popen([sys.executable, "-m", "launch.cli", "run", "--local", "--data",
                             str(tiny_dataset), "--out", str(out), "--overwrite"] + slow,
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while (not list(tmp_path.glob(".run.tmp-*/log.jsonl")) and time.monotonic() < deadline
           and proc.poll() is None):
        time.sleep(0.1)
    assert list(tmp_path.glob(".run.tmp-*/log.jsonl")), "the new run was not built beside it"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert _tree(out) == before  # every byte of the earlier run
    assert main(["evaluate", "--run", str(out), "--out", str(tmp_path / "ev")]) == 0
    rows = (tmp_path / "ev" / "evaluation.csv").read_text().splitlines()
    test = next(r.split(",") for r in rows if r.startswith("mba,test,"))
    assert float(test[3]) == pytest.approx(recorded["test"]["recall@20"], abs=1e-6)
    # the next --overwrite clears the leftover and swaps its finished run in
    assert main(["run", "--local", "--data", str(tiny_dataset), "--out", str(out),
                 "--overwrite"] + fast) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev", "run"]  # nothing left beside it
    assert json.loads((out / "metrics.json").read_text())["test"] == recorded["test"]


def test_a_diverging_run_stops_with_the_stage_and_epoch_and_exports_nothing(tiny_dataset,
                                                                           tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--local", "--data", str(tiny_dataset), "--out", str(out),
                 "--set", "method=mf", "--set", "optim.mode=sgd", "--set", "optim.lr=1e30",
                 "--set", "pretrain.epochs=3"]) == 2
    err = capsys.readouterr().err
    import re
    assert re.search(r"error: stage mf_target diverged in epoch \d+ \((loss nan|loss inf|"
                     r"non-finite weights in mf_target)\): nothing is exported; a smaller "
                     r"optim\.lr", err), err
    assert not (out / "metrics.json").exists() and not (out / "recommendations.parquet").exists()


def test_outputs_get_the_permissions_of_the_umask(tmp_path):
    import os

    from mba_dist.files import atomic_dir, atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f.json", b"{}")
        with atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_an_os_error_on_a_path_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(["bench-eval", "--out", str(blocker / "sub"), "--users", "50", "--items", "40",
                 "--measured-users", "10", "--memory-items", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"mba-dist bench-eval: error: {blocker / 'sub'}: Not a directory"


def test_a_mode_the_backend_lacks_is_refused_at_load():
    with pytest.raises(C.ConfigError, match="optim.mode rowwise_adagrad is not available with "
                                            "model.backend=torch"):
        C.load_config(None, ["optim.mode=rowwise_adagrad"])


def test_the_sweep_tool_trains_a_point_through_the_run_command(tiny_dataset, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    fast = ["--set", "pretrain.epochs=2", "--set", "mba.epochs=2", "--set", "data.aux=click",
            "--set", "train.merged_baseline=false"]
    pre = tmp_path / "pre"
    assert main(["run", "--local", "--data", str(tiny_dataset), "--out", str(pre)] + fast) == 0
    res = subprocess.run([sys.executable, "tools/sweep.py", "--data", str(tiny_dataset),
                          "--config", "configs/synthetic.yaml", "--pretrained", str(pre),
                          "--out", str(tmp_path / "sweep"), "--grid", "mba.alpha=1,3"] + fast,
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = (tmp_path / "sweep" / "sweep.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[1].startswith("mba.alpha=1,")


def test_runs_know_their_dataset(tiny_dataset, tmp_path, capsys):
    """A dataset of the same shape is not the same dataset: from_run and evaluate refuse it."""
    import json

    from data_prep.synthetic import SynthSpec, generate

    other = tmp_path / "other"
    generate(SynthSpec(users=300, items=200, topics=10, seed=1), other)
    fast = ["--set", "pretrain.epochs=2", "--set", "mba.epochs=2", "--set", "data.aux=click",
            "--set", "train.merged_baseline=false"]
    first = tmp_path / "first"
    assert main(["run", "--local", "--data", str(tiny_dataset), "--out", str(first)] + fast) == 0
    assert main(["run", "--local", "--data", str(other), "--out", str(tmp_path / "second")]
                + fast + ["--set", f"pretrain.from_run={first}"]) == 2
    assert "was trained on another dataset than" in capsys.readouterr().err
    assert not (tmp_path / "second").exists()
    info = json.loads((first / "run.json").read_text())
    (first / "run.json").write_text(json.dumps({**info, "data": str(other)}))
    assert main(["evaluate", "--run", str(first)]) == 2
    assert "(fingerprint" in capsys.readouterr().err


def _run_until(cmd, cwd, done, timeout=120):
    """Start `cmd`, wait until `done()` holds, then SIGKILL it."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return killed


def test_a_killed_local_run_resumes_to_the_metrics_of_an_uninterrupted_one(tiny_dataset,
                                                                          tmp_path, capsys):
    import json
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sets = ["--set", "pretrain.epochs=3", "--set", "mba.epochs=30", "--set", "mba.patience=30",
            "--set", "train.merged_baseline=false", "--set", "data.aux=click",
            "--set", "train.checkpoint_every=1"]
    assert main(["run", "--local", "--data", str(tiny_dataset), "--out",
                 str(tmp_path / "whole")] + sets) == 0
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "launch.cli", "run", "--local", "--data", str(tiny_dataset),
           "--out", str(out)] + sets

    def in_mba():
        log = out / "log.jsonl"
        return log.is_file() and '"stage": "mba", "epoch": 2,' in log.read_text()

    assert _run_until(cmd, root, in_mba), "the run ended before it could be killed"
    assert (out / "checkpoint" / "state.pt").is_file() and not (out / "metrics.json").exists()
    capsys.readouterr()
    assert main(["run", "--local", "--data", str(tiny_dataset), "--out", str(out)]
                + sets + ["--set", "mba.alpha=7"]) == 2  # another config would resume it
    assert "holds an unfinished run that would resume" in capsys.readouterr().err
    assert main(["run", "--local", "--data", str(tiny_dataset), "--out", str(out)] + sets) == 0
    assert "resuming from" in capsys.readouterr().err
    got = json.loads((out / "metrics.json").read_text())
    want = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert got["test"] == want["test"] and got["baselines"] == want["baselines"]
    from tests.test_checkpoint import _log
    assert _log(out) == _log(tmp_path / "whole")  # the same epochs, losses and selections
    assert not (out / "checkpoint").exists()  # a finished run keeps only its stage files


def test_what_a_killed_writer_left_is_removed_on_the_next_start(tmp_path):
    """Temporaries carry their writer's pid: the next writer of the same name removes those of
    dead writers and leaves a live writer's alone."""
    import os
    from mba_dist.files import atomic_dir, temp_prefix

    dead = 2 ** 22 + 7  # above pid_max: no such process
    dead_tmp = tmp_path / temp_prefix("ds").replace(f"-{os.getpid()}@", f"-{dead}@")
    dead_tmp = dead_tmp.with_name(dead_tmp.name + "abc")
    dead_tmp.mkdir()
    (dead_tmp / "part.parquet").write_bytes(b"half")
    live_tmp = tmp_path / (temp_prefix("ds") + "xyz")
    live_tmp.mkdir()
    dead_old = tmp_path / temp_prefix("ds", "old").replace(f"-{os.getpid()}@", f"-{dead}@")
    dead_old.mkdir()  # an earlier version moved aside while `ds` is missing: the only copy
    with atomic_dir(tmp_path / "ds") as d:
        (d / "x").write_text("1")
    assert not dead_tmp.exists() and live_tmp.exists()
    assert dead_old.exists()  # kept: `ds` was not there when the leftovers were looked at
    with atomic_dir(tmp_path / "ds", overwrite=True) as d:
        (d / "x").write_text("2")
    assert not dead_old.exists() and (tmp_path / "ds" / "x").read_text() == "2"
