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
    ("eval.top_n=-1", "eval.top_n must be 0 (no recommendations exported) or positive, got -1"),
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


# ---- raw logs (`mba-dist prepare`): ids are decided explicitly, never silently switched ----

INT_LINES = [f"{u},{100 + (u * 7 + k) % 40}\n" for u in range(200) for k in range(3)]
INT_LOG = "".join(INT_LINES)


def _with(line, at):
    """INT_LOG with `line` as its line number `at`."""
    return "".join(INT_LINES[:at - 1] + [line] + INT_LINES[at - 1:])
TEST_LOG = "".join(f"{u},{100 + (u * 11) % 40}\n" for u in range(0, 200, 3))


def _prepare(tmp_path, train_text, extra=(), test_text=TEST_LOG, name="buy.csv"):
    train = tmp_path / name
    if isinstance(train_text, bytes):
        train.write_bytes(train_text)
    else:
        train.write_text(train_text)
    test = tmp_path / "test.csv"
    test.write_text(test_text)
    return ["prepare", "--out", str(tmp_path / "ds"), "--train", f"purchase={train}",
            "--test", f"purchase={test}", *extra]


@pytest.mark.parametrize("train,extra,message", [
    (_with("x17,104\n", 29), [],
     "buy.csv: line 29: user id 'x17' is not an integer, while 667 of 668 user ids are"),
    ("customer,product\n" + INT_LOG, [],
     "buy.csv: line 1: user id 'customer' is not an integer, while 667 of 668 user ids are: a "
     "header line that was not recognised (--header yes)"),
    (_with("5,1\x0004\n", 4), [],
     "buy.csv: line 4: contains a control character (NUL, ...)"),
    (_with("5\x07,104\n", 4), [],
     "buy.csv: line 4: contains a control character (NUL, ...)"),
    (INT_LOG + f"{2 ** 70},104\n", [],
     f"buy.csv: line 601: user id '{2 ** 70}' does not fit in a 64-bit integer (pass --ids str"),
    ("u1,104\n" + INT_LOG, ["--ids", "int"], "buy.csv: line 1: user id 'u1' is not an integer "
     "(--ids int)"),
    (INT_LOG, ["--ids", "float"], "argument --ids: invalid choice: 'float'"),
    (INT_LOG, ["--valid-fraction", "nan"], "argument --valid-fraction: must be a finite number"),
    (INT_LOG, ["--valid-fraction", "1.5"], "--valid-fraction must be in [0, 1), got 1.5"),
])
def test_raw_logs_with_odd_ids_are_refused_naming_the_line(tmp_path, capsys, train, extra,
                                                          message):
    assert main(_prepare(tmp_path, train, extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the "read ..." lines
    assert err.startswith("mba-dist prepare: error: ") and message in err, err
    assert not (tmp_path / "ds").exists() and not list(tmp_path.glob(".ds*"))


def test_float_parquet_ids_are_the_integers_of_a_text_log(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mba_dist.data.dataset import Dataset

    rows = [ln.split(",") for ln in INT_LOG.split()]
    pq.write_table(pa.table({"user": [float(u) for u, _ in rows],
                             "item": [float(i) for _, i in rows]}), tmp_path / "buy.parquet")
    (tmp_path / "test.csv").write_text(TEST_LOG)
    assert main(["prepare", "--out", str(tmp_path / "ds"), "--train",
                 f"purchase={tmp_path / 'buy.parquet'}", "--test",
                 f"purchase={tmp_path / 'test.csv'}"]) == 0
    ds = Dataset(tmp_path / "ds")
    assert ds.meta["id_types"] == {"user": "int", "item": "int"} and ds.num_users == 200
    assert list(ds.raw_ids("user", [0, 1, 199])) == [0, 1, 199]  # never "0.0"
    pq.write_table(pa.table({"user": [1.0, 2.5], "item": [3.0, 4.0]}), tmp_path / "half.parquet")
    assert main(["prepare", "--out", str(tmp_path / "ds2"), "--train",
                 f"purchase={tmp_path / 'half.parquet'}", "--test",
                 f"purchase={tmp_path / 'test.csv'}"]) == 2
    assert "half.parquet: row 2: user id 2.5 in a float column is not a whole number" in (
        capsys.readouterr().err)


def test_string_ids_of_text_and_integer_parquet_are_one_id(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mba_dist.data.dataset import Dataset

    pq.write_table(pa.table({"user": [3, 4], "item": [10, 11]}), tmp_path / "cart.parquet")
    assert main(_prepare(tmp_path, "3,a\n4,b\n5,a\n", ["--train",
                f"cart={tmp_path / 'cart.parquet'}", "--ids", "str", "--valid-fraction", "0"],
                test_text="3,b\n")) == 0
    ds = Dataset(tmp_path / "ds")
    assert ds.num_users == 3 and sorted(ds.raw_ids("user", [0, 1, 2])) == ["3", "4", "5"]


def test_a_test_file_equal_to_the_train_file_is_refused(tmp_path, capsys):
    (tmp_path / "buy.csv").write_text(INT_LOG)
    (tmp_path / "copy.csv").write_text(INT_LOG)
    assert main(["prepare", "--out", str(tmp_path / "ds"), "--train",
                 f"purchase={tmp_path / 'buy.csv'}", "--test",
                 f"purchase={tmp_path / 'copy.csv'}"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"mba-dist prepare: error: --test purchase={tmp_path / 'copy.csv'} has the same content "
        f"as --train purchase={tmp_path / 'buy.csv'}: held-out pairs must not be train pairs")


def test_held_out_pairs_worth_knowing_about_are_warned_of_with_counts(tmp_path, capsys):
    import json

    # 7 test pairs are train pairs (u a multiple of 30); users 999 and 500 and item 999 are cold
    test = TEST_LOG + "999,104\n500,999\n"
    assert main(_prepare(tmp_path, INT_LOG, ["--valid-fraction", "0"], test_text=test)) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert lines == [
        "warning: valid/purchase is empty: runs cannot select a model on it "
        "(train.select_on=valid needs --valid or --valid-fraction > 0)",
        "warning: test/purchase: 2 of 69 users and 1 of 41 items have no train pair of any "
        "behavior (cold: nothing to learn their factors from)",
        "warning: test/purchase: 7 of 69 pairs are also train/purchase pairs (known train items "
        "are not ranked: these are never hits)"]
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert meta["warnings"] == [ln[len("warning: "):] for ln in lines]


def test_a_dataset_whose_meta_json_does_not_match_its_files_is_refused(tmp_path, capsys,
                                                                     tiny_dataset):
    import json
    import shutil

    assert main(_prepare(tmp_path, INT_LOG)) == 0
    capsys.readouterr()
    meta_path = tmp_path / "ds" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "num_users": meta["num_users"] + 50}))
    args = ["run", "--local", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "run"),
            "--set", "method=mf"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == (
        f"mba-dist run: error: {meta_path}: num_users is 250 but user_map.parquet maps 200 ids")
    ds = tmp_path / "tiny"
    shutil.copytree(tiny_dataset, ds)
    meta = json.loads((ds / "meta.json").read_text())
    meta["splits"]["test"]["purchase"]["rows"] += 10
    (ds / "meta.json").write_text(json.dumps(meta))
    args[3] = str(ds)
    assert main(args) == 2
    rows = meta["splits"]["test"]["purchase"]["rows"]
    assert capsys.readouterr().err.strip() == (
        f"mba-dist run: error: {ds / 'test' / 'purchase.parquet'}: {rows - 10} rows, but "
        f"meta.json lists {rows}")
    assert not (tmp_path / "run").exists()


def test_selection_on_an_empty_validation_split_is_refused_before_training(tmp_path, capsys):
    assert main(_prepare(tmp_path, INT_LOG, ["--valid-fraction", "0"])) == 0
    capsys.readouterr()
    assert main(["run", "--local", "--data", str(tmp_path / "ds"), "--out",
                 str(tmp_path / "run"), "--set", "method=mf"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"mba-dist run: error: {tmp_path / 'ds'}: the valid split of purchase is empty; model "
        "selection needs one (prepare with --valid or --valid-fraction > 0)")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,message", [
    (["run", "--data", "d", "--out", "o", "--workers", "0"],
     "mba-dist run: error: argument --workers: must be at least 1, got 0"),
    (["run", "--data", "d", "--out", "o", "--max-failures", "-1"],
     "mba-dist run: error: argument --max-failures: must be at least 0, got -1"),
    (["evaluate", "--run", "r", "--workers", "two"],
     "mba-dist evaluate: error: argument --workers: expected an integer, got 'two'"),
    (["recommend", "--run", "r", "--k", "0"],
     "mba-dist recommend: error: argument --k: must be at least 1, got 0"),
    (["synth", "--out", "o", "--false-click-ratio", "inf"],
     "mba-dist synth: error: argument --false-click-ratio: must be a finite number, got inf"),
    (["bench", "--steps", "0"], "mba-dist bench: error: argument --steps: must be at least 1, got 0"),
])
def test_bad_arguments_are_one_line_before_any_work(argv, message, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == message


# ---- a finished run whose files were damaged: one line naming the file, nothing written ----

def _damage(kind, run, data):
    if kind == "run.json":
        (run / "run.json").write_text('{"tool": "mba-dist", ')
        return run / "run.json", "not valid JSON"
    if kind == "stage":
        path = run / "checkpoints" / "mba" / "stage.pt"
        path.write_bytes(path.read_bytes()[:100])
        return path, "is not readable"
    if kind == "stage shards":
        [shard] = (run / "checkpoints" / "mba" / "shards").glob("*.distcp")
        shard.write_bytes(shard.read_bytes()[:1000])
        return run / "checkpoints" / "mba", "its shards do not load"
    if kind == "foreign stage":
        import torch
        path = run / "checkpoints" / "mba" / "stage.pt"
        torch.save({"format": 2, "kind": "resume", "config": {}}, path)
        return run / "checkpoints" / "mba", "is not a stage checkpoint of mba-dist"
    if kind == "dataset parquet":
        path = data / "test" / "purchase.parquet"
        path.write_bytes(b"PAR1" + b"\0" * 64)
        return path, "not a readable Parquet file"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["run.json", "stage", "stage shards", "foreign stage",
                                  "dataset parquet"])
def test_evaluate_on_damaged_files_is_one_line_naming_the_file(tiny_dataset, tmp_path, capsys,
                                                               kind):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    run = tmp_path / "run"
    assert main(["run", "--local", "--data", str(data), "--out", str(run), "--set",
                 "pretrain.epochs=1", "--set", "mba.epochs=1", "--set", "data.aux=click",
                 "--set", "train.merged_baseline=false"]) == 0
    path, problem = _damage(kind, run, data)
    before = _tree(run)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mba-dist evaluate: error: ") and "\n" not in err, err
    assert str(path) in err and problem in err, err
    assert _tree(run) == before
