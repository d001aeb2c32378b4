"""`mba-dist search`: the space file's checks, and a small search end to end on Ray Tune."""
import csv
import json

import pytest

from launch.cli import main
from mba_dist import config as C
from mba_dist.search import load_space

FAST = ["--set", "pretrain.epochs=2", "--set", "mba.epochs=4", "--set", "mba.patience=2"]


def _space(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("space: {mba.alpah: [1, 10]}", "mba.alpah is not a config key"),
    ("space: {mba.alpha: 10}", "space.mba.alpha: expected a list of values"),
    ("space: {mba.alpha: {normal: [1, 2]}}", "space.mba.alpha: expected a list of values"),
    ("space: {mba.c1: {loguniform: [0, 10]}}", "loguniform bounds must be positive"),
    ("space: {mba.beta: [0.5, 2]}", "space.mba.beta: mba.beta must be in [0, 1], got 2"),
    ("points: [{mba.alpha: -1}]", "points[0]: mba.alpha must be at least 0.0"),
    ("space: {mba.alpha: [1]}\nscheduler: {grace: 2}", "scheduler takes grace_period"),
    ("[1, 2]", "expected a mapping of points, space and scheduler"),
    ("points: [{optim.lr: 0.0001}]", "optim.lr is not an MBA-stage key: every trial shares"),
])
def test_a_bad_space_file_is_one_error_naming_it(tmp_path, text, message):
    path = _space(tmp_path, text)
    with pytest.raises(C.ConfigError) as e:
        load_space(path, C.Config())
    assert str(path) in str(e.value) and message in str(e.value)


def test_the_shipped_space_is_the_papers_grid():
    space = load_space("configs/search/paper.yaml", C.Config())
    assert space.params["mba.alpha"] == space.params["mba.c1"] == [1, 10, 100, 1000]
    assert space.params["mba.beta"] == [0.7, 0.8, 1.0]
    assert {"mba.alpha": 1000, "mba.c1": 1000, "mba.c2": 1, "mba.beta": 0.7,
            "mba.lambda_t": 1e-4} in space.points  # the authors' run.sh setting


@pytest.mark.parametrize("config, key", [("configs/beibei_cart.yaml", "mba.blend_g"),
                                         ("configs/taobao_click_cart.yaml", "mba.blend_each")])
def test_the_papers_grid_on_a_blended_config_says_how_to_run_it(config, key):
    # beta 1 leaves no score share for the shipped configs' blend: the error names the
    # override that gives the paper's score, and with it the grid loads
    with pytest.raises(C.ConfigError) as e:
        load_space("configs/search/paper.yaml", C.load_config(config))
    zero = f"{key}=[]" if key.endswith("each") else f"{key}=0"
    assert "space.mba.beta" in str(e.value) and f"--set {zero}" in str(e.value)
    assert load_space("configs/search/paper.yaml", C.load_config(config, [zero])).params


def test_a_search_selects_on_validation_and_resumes(tiny_dataset, tmp_path, capsys):
    """Stage 1 once (SEARCH/base), 3 trials under ASHA, the winner by validation Recall@20 run
    once in SEARCH/best; the same command again resumes; other settings are refused. A key
    only a point sets, a list among them, reaches that trial alone."""
    space = _space(tmp_path, "points: [{mba.alpha: 1, mba.c1: 10}, {mba.blend_each: [0.1]}]\n"
                             "space: {mba.alpha: [1, 100], mba.c1: {loguniform: [1, 1000]}}\n"
                             "scheduler: {grace_period: 1, reduction_factor: 2}\n")
    out = tmp_path / "search"
    argv = ["search", "--data", str(tiny_dataset), "--out", str(out), "--config",
            "configs/synthetic.yaml", "--space", str(space), "--trials", "3"] + FAST
    assert main(argv) == 0
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 3 and rows[0]["mba.alpha"] == "1" and rows[0]["mba.c1"] == "10"
    assert [r["mba.blend_each"] for r in rows] == ["[]", "[0.1]", "[]"]
    blended = json.loads((out / "tune" / "search").glob("*_00001_*/params.json").__next__()
                         .read_text())
    assert blended["mba.blend_each"] == "[0.1]"  # JSON text in Tune, a list in the trial
    best = max(rows, key=lambda r: float(r["valid_recall@20"]))
    metrics = json.loads((out / "best" / "metrics.json").read_text())
    # the winner's run reproduces its trial, and is the search's only read of the test set
    assert metrics["valid"]["recall@20"] == pytest.approx(float(best["valid_recall@20"]))
    assert "test" in metrics["baselines"]["mba"]
    chosen = C.load_config(out / "best.yaml")
    assert chosen.mba.alpha == float(best["mba.alpha"])
    assert chosen.mba.c1 == pytest.approx(float(best["mba.c1"]))
    assert (out / "base" / "checkpoints" / "pre_f" / "stage.pt").is_file()
    assert not (out / "best" / "checkpoints" / "pre_f").samefile(
        out / "base" / "checkpoints" / "pre_f")
    assert (out / "search.png").read_bytes()[:4] == b"\x89PNG"
    report = capsys.readouterr().out
    assert f"test R@20 {metrics['baselines']['mba']['test']['recall@20']:.4f}" in report

    before = (out / "trials.csv").read_text()
    assert main(argv) == 0  # resumed: nothing trained again, the same table
    assert "continuing the Ray Tune experiment" in capsys.readouterr().err
    assert (out / "trials.csv").read_text() == before

    assert main(argv[:-len(FAST)] + ["--set", "mba.epochs=5"]) == 2
    assert "(differs in config: pretrain.epochs 2 there, 300 here, mba.epochs 4 there, 5 here" \
        in capsys.readouterr().err
    assert main(argv[:argv.index("--trials") + 1] + ["2"] + FAST) == 2
    assert "holds a search of 3 trials: --trials may grow, not shrink (got 2)" in \
        capsys.readouterr().err

    # more trials: the first three are kept as they were, one more is drawn in a new experiment
    more = argv[:argv.index("--trials") + 1] + ["4"] + FAST
    assert main(more) == 0
    said = capsys.readouterr()
    assert "adding 1 trials to the 3 of the search" in said.err
    assert "ASHA compares the new trials with each other and the 3 earlier ones" in said.err
    assert "trial 4 " in said.err and "(4 of 4 ended)" in said.err
    grown = list(csv.DictReader((out / "trials.csv").open()))
    assert grown[:3] == rows and grown[3]["trial"] == "4"
    assert json.loads((out / "search.json").read_text())["parts"] == [3, 1]
    assert len(list((out / "tune" / "search-2").glob("_trial_*"))) == 1
    best4 = max(grown, key=lambda r: float(r["valid_recall@20"]))
    if best4["trial"] != best["trial"]:  # the earlier winner's run is kept, not overwritten
        assert (out / "best-earlier-1" / "metrics.json").is_file()
    metrics4 = json.loads((out / "best" / "metrics.json").read_text())
    assert metrics4["valid"]["recall@20"] == pytest.approx(float(best4["valid_recall@20"]))

    # a growth recorded but stopped before its experiment began does not bind: 4 resumes
    recorded = json.loads((out / "search.json").read_text())
    (out / "search.json").write_text(json.dumps({**recorded, "trials": 6, "parts": [3, 1, 2]}))
    assert main(more) == 0 and "adding" not in capsys.readouterr().err
    assert list(csv.DictReader((out / "trials.csv").open())) == grown


def test_an_earlier_winners_run_is_moved_aside_not_reused(tmp_path):
    from mba_dist.run_dir import RunDir
    from mba_dist.search import keep_earlier_winner

    root, said = tmp_path / "search", []
    (root / "best").mkdir(parents=True)
    (root / "best" / "config.yaml").write_text(
        C.config_yaml(C.load_config("configs/synthetic.yaml", ["mba.alpha=10"])))
    (root / "best-earlier-1").mkdir()
    (root / "best.yaml").write_text(
        C.config_yaml(C.load_config("configs/synthetic.yaml", ["mba.alpha=10"])))
    keep_earlier_winner(RunDir(root / "best"), root / "best.yaml", said.append)
    assert (root / "best" / "config.yaml").is_file() and not said  # the same winner: kept
    (root / "best.yaml").write_text(
        C.config_yaml(C.load_config("configs/synthetic.yaml", ["mba.alpha=100"])))
    keep_earlier_winner(RunDir(root / "best"), root / "best.yaml", said.append)
    assert not (root / "best").exists()
    assert C.load_config(root / "best-earlier-2" / "config.yaml").mba.alpha == 10
    assert said == [f"more trials chose another winner: the earlier winner's run is now in "
                    f"{root / 'best-earlier-2'}"]


def test_a_grown_searchs_asha_stops_new_trials_against_the_earlier_ones():
    import types

    import pandas as pd
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from mba_dist.search import METRIC, seed_rungs

    def asha():
        return ASHAScheduler(metric=METRIC, mode="max", max_t=9, grace_period=1,
                             reduction_factor=3)

    earlier = [types.SimpleNamespace(metrics_dataframe=pd.DataFrame(
        {"training_iteration": [1, 2, 3], METRIC: [v, v, v]})) for v in (0.5, 0.6, 0.7)]
    said = []
    seeded, empty = seed_rungs(asha(), [earlier], said.append), asha()
    trial = types.SimpleNamespace(trial_id="new")
    for sched in (seeded, empty):
        sched.on_trial_add(None, trial)
    weak = {"training_iteration": 1, METRIC: 0.1}
    assert seeded.on_trial_result(None, trial, weak) == TrialScheduler.STOP
    assert empty.on_trial_result(None, trial, weak) == TrialScheduler.CONTINUE  # the first
    assert said == ["ASHA compares the new trials with each other and the 3 earlier ones"]
    assert seed_rungs(object(), [earlier], said.append) is not None and "could not" in said[1]


def test_a_resumed_search_counts_its_lines_on_from_the_trials_that_ended_before(monkeypatch):
    """After a kill, Tune's list holds the trials that ended before: the lines go on counting
    from them (not from 1), number trials as the tables do and name the best so far."""
    import types

    from mba_dist import search_lines as L
    from mba_dist.search import METRIC, best_row

    def trial(i, status, r20):
        return types.SimpleNamespace(trial_id=f"ab12c_{i:05d}", status=status,
                                     config={"mba.alpha": 10 ** i},
                                     last_result={METRIC: r20, "best_epoch": 3,
                                                  "training_iteration": 5})
    said = []
    earlier = [{"trial": n, "valid_recall@20": 0.15 if n == 4 else 0.1, "ended": "finished"}
               for n in range(1, 11)]
    for name, value in {"say": said.append, "total": 44, "earlier_rows": earlier,
                        "ended_as": lambda config, result: "stopped by ASHA",
                        "best_of": best_row}.items():
        monkeypatch.setattr(L, name, value)
    trials = [trial(0, "TERMINATED", 0.16), trial(1, "TERMINATED", 0.12),
              trial(2, "RUNNING", 0.14), trial(3, "PENDING", 0.0)]
    lines = L.TrialLines(METRIC, str)
    lines.on_trial_complete(0, trials, trials[2])
    trials[2].status = "TERMINATED"
    trials[3].status = "ERROR"
    lines.on_trial_error(0, trials, trials[3])
    assert said == [
        "trial 13 stopped by ASHA (13 of 44 ended): mba.alpha=100: best valid R@20 0.1400 at "
        "epoch 3, 5 validations; the best so far: trial 11, 0.1600",
        "trial 14 failed (14 of 44 ended): mba.alpha=1000: best valid R@20 0.0000 at epoch 3, "
        "5 validations; the best so far: trial 11, 0.1600"]


def test_a_resumed_search_drops_tunes_warning_for_the_trials_still_to_run():
    import logging

    from mba_dist.search import _QUIET_TUNE

    def passes(message: str) -> bool:
        return _QUIET_TUNE.filter(logging.LogRecord("t", logging.WARNING, "", 0, message, (), None))
    pending = "- _trial_1: FileNotFoundError('Could not fetch metrics for _trial_1: both ...')"
    broken = "- _trial_2: ParserError('Error tokenizing data')"
    assert not passes(f"Failed to fetch metrics for 2 trial(s):\n{pending}\n{pending}")
    assert passes(f"Failed to fetch metrics for 2 trial(s):\n{pending}\n{broken}")
    assert not passes("Pre-set value `1` is not equal to the value of parameter `mba.alpha`")
    assert passes("something else")


def test_a_space_of_points_only_runs_exactly_its_points(tiny_dataset, tmp_path, capsys):
    space = _space(tmp_path, "points: [{mba.t_init: pre_g}, {mba.blend_g: 0.1}]\n")
    assert main(["search", "--data", str(tiny_dataset), "--out", str(tmp_path / "s"),
                 "--space", str(space), "--trials", "5"]) == 2
    assert "has points only (no space: to draw from): --trials must be 2, got 5" in \
        capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.slow  # a search of its own, stopped by a signal (about 50 s)
def test_ctrl_c_stops_a_search_with_no_winner_and_leaves_it_resumable(tiny_dataset, tmp_path):
    """Ray Tune ends `fit()` normally on Ctrl-C: the search must not go on to pick a winner
    from unfinished trials (nor read the test set), and says the same command resumes it."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from ray import tune

    out, err = tmp_path / "search", tmp_path / "err.txt"
    long = ["--set", "pretrain.epochs=2", "--set", "mba.epochs=500", "--set", "mba.patience=500"]
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "launch.cli", "search", "--data", str(tiny_dataset), "--out",
             str(out), "--config", "configs/synthetic.yaml", "--trials", "3"] + long,
            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.monotonic() + 240
            while (not list((out / "tune" / "search").glob("_trial_*/progress.csv"))
                   and time.monotonic() < deadline and proc.poll() is None):
                time.sleep(0.2)
            assert proc.poll() is None, err.read_text()[-2000:]
            proc.send_signal(signal.SIGINT)  # a trial is reporting: the search is under way
            assert proc.wait(timeout=120) == 130, err.read_text()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    said = err.read_text()
    assert said.rstrip().endswith("mba-dist search: interrupted; the same command resumes the "
                                  "search"), said[-2000:]
    assert "Traceback" not in said
    assert not any((out / name).exists() for name in ("best", "best.yaml", "trials.csv"))
    assert tune.Tuner.can_restore(str(out / "tune" / "search"))


@pytest.mark.slow  # a tool's test: three runs
def test_the_ablation_tool_runs_each_variant_on_the_shared_models(tiny_dataset, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    fast = ["--set", "pretrain.epochs=2", "--set", "mba.epochs=2", "--set", "data.aux=click",
            "--set", "train.merged_baseline=false"]
    pre = tmp_path / "pre"
    assert main(["run", "--local", "--data", str(tiny_dataset), "--out", str(pre)] + fast) == 0
    res = subprocess.run([sys.executable, "tools/ablations.py", "--data", str(tiny_dataset),
                          "--config", "configs/synthetic.yaml", "--pretrained", str(pre),
                          "--out", str(tmp_path / "abl"), "--only", "mba_kl,mba_pt"] + fast,
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "abl" / "ablations.csv").open()))
    assert [r["variant"] for r in rows] == ["mba_kl", "mba_pt"]
    kl = C.load_config(tmp_path / "abl" / "mba_kl" / "config.yaml")
    assert kl.mba.alpha == 0 and kl.pretrain.from_run == str(pre.resolve())
    pt = C.load_config(tmp_path / "abl" / "mba_pt" / "config.yaml")
    assert pt.mba.joint_pretrain and pt.pretrain.from_run is None
    assert "| mf_purchase (MF-BPR, same split) |" in (tmp_path / "abl" / "ablations.md").read_text()


def test_the_search_imports_ray_only_after_the_loopback_environment():
    """Ray reads its network settings at import: nothing the search module imports at load
    may import Ray before `dist.ray.init_ray` has set them."""
    import subprocess
    import sys

    code = "import sys, launch.cli, mba_dist.search; assert 'ray' not in sys.modules"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("RAY_")}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0
