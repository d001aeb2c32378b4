"""End to end through the CLI on tiny synthetic data, and config handling."""
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mba_dist import config as C
from launch.cli import main
from mba_dist.data.dataset import Dataset

FAST = ["pretrain.epochs=3", "mba.epochs=3", "optim.mode=adagrad", "optim.lr=0.05",
        "train.batch_size=256"]


def _sets(*extra):
    out = []
    for s in FAST + list(extra):
        out += ["--set", s]
    return out


def test_run_mba_end_to_end(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["run", "--local", "--data", str(tiny_dataset), "--config", "configs/synthetic.yaml",
               "--out", str(out)] + _sets())
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| mba **(this run)** |" in printed and "aux_memory_click" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["selected_on"] == "valid" and m["model"] == "mba"
    assert set(m["test"]) >= {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}
    assert 0.0 <= m["test"]["recall@20"] <= 1.0 and "truth" in m
    assert set(m["baselines"]) == {"mba", "mba_t", "mf_purchase", "mf_click", "mf_merged",
                                   "mostpop", "aux_memory_click"}
    for name in ("pre_f", "pre_g", "mf_merged", "mba"):
        assert (out / "checkpoints" / name / "stage.pt").is_file()
    stages = [json.loads(line)["stage"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert stages.count("mba") == 3 and stages.count("pre_f") == 3
    # resolved config round-trips, with the overrides applied
    cfg = C.load_config(out / "config.yaml")
    assert cfg.optim.mode == "adagrad" and cfg.data.aux == "click" and cfg.mba.c1 == 10

    # recommendations: raw ids, top-20 per test user, no known purchase recommended
    rec = pq.read_table(out / "recommendations.parquet").to_pandas()
    ds = Dataset(tiny_dataset)
    test_users = np.unique(ds.pairs("test", "purchase").users)
    assert set(rec["user"]) == set(test_users)
    assert rec.groupby("user")["rank"].max().max() == 20
    known = set(zip(ds.pairs("train", "purchase").users, ds.pairs("train", "purchase").items))
    known |= set(zip(ds.pairs("valid", "purchase").users, ds.pairs("valid", "purchase").items))
    assert not any((u, i) in known for u, i in zip(rec["user"], rec["item"]))
    assert (rec.sort_values(["user", "rank"]).groupby("user")["score"].diff().dropna() <= 0).all()

    # recommend for chosen users
    rc = main(["recommend", "--run", str(out), "--users", "3,5", "--k", "4"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8 and {ln.split("\t")[0] for ln in lines} == {"3", "5"}
    assert main(["recommend", "--run", str(out), "--users", "99999"]) == 2
    assert "unknown user id" in capsys.readouterr().err

    # a finished run is never overwritten by accident
    assert main(["run", "--local", "--data", str(tiny_dataset), "--out", str(out)] + _sets()) == 2
    assert "holds a finished run" in capsys.readouterr().err

    # evaluate --baselines: the same test metrics as the run, on 1 and on 2 ranks, as md + csv
    for workers, dest in ((1, tmp_path / "ev1"), (2, tmp_path / "ev2")):
        assert main(["evaluate", "--run", str(out), "--baselines", "--workers", str(workers),
                     "--out", str(dest)]) == 0
    rows = {}
    for dest in ("ev1", "ev2"):
        lines = (tmp_path / dest / "baselines.csv").read_text().splitlines()
        assert lines[0] == "model,split,recall@10,recall@20,ndcg@10,ndcg@20,users"
        rows[dest] = {tuple(ln.split(",")[:2]): ln for ln in lines[1:]}
    assert rows["ev1"] == rows["ev2"]
    assert {m for m, _ in rows["ev1"]} == set(m["baselines"])
    assert {s for _, s in rows["ev1"]} == {"valid", "test", "truth"}
    for name, row in m["baselines"].items():
        got = rows["ev1"][(name, "test")].split(",")
        assert float(got[3]) == pytest.approx(row["test"]["recall@20"], abs=1e-6), name
    assert "| mba **(this run)** |" in (tmp_path / "ev1" / "baselines.md").read_text()


def test_evaluate_rejects_unfinished_run(tmp_path, capsys):
    (tmp_path / "half").mkdir()
    assert main(["evaluate", "--run", str(tmp_path / "half")]) == 2
    assert "run.json is missing" in capsys.readouterr().err


def test_run_mf_baseline_with_test_selection_is_labelled(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "mf"
    rc = main(["run", "--local", "--data", str(tiny_dataset), "--model", "mf", "--out", str(out)]
              + _sets("train.select_on=test", "data.aux=click"))
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["selected_on"].startswith("test (authors' protocol")
    assert m["valid"] is None
    assert "reproduction only" in capsys.readouterr().out


def test_overwrite_starts_over_without_the_earlier_runs_ray_checkpoints(tiny_dataset, tmp_path,
                                                                         capsys):
    out = tmp_path / "mf"
    args = ["run", "--local", "--data", str(tiny_dataset), "--model", "mf", "--out", str(out)]
    assert main(args) == 0
    assert main(args) == 2 and "holds a finished run" in capsys.readouterr().err
    old_ckpt = out / "ray" / "mba-dist" / "checkpoint_old"  # what Ray Train would resume
    old_ckpt.mkdir(parents=True)
    assert main(args + ["--overwrite"]) == 0
    assert not (out / "ray").exists() and (out / "metrics.json").exists()


def test_validation_every_n_steps(tiny_dataset, tmp_path):
    out = tmp_path / "steps"
    assert main(["run", "--local", "--data", str(tiny_dataset), "--model", "mf", "--out", str(out)]
                + _sets("train.eval_every_steps=2", "train.batch_size=64")) == 0
    records = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    steps = [v["step"] for r in records for v in r["valid_within_epoch"]]
    assert steps and all(s % 2 == 0 for s in steps) and steps == sorted(steps)
    assert len(steps) > len(records)  # several validations per epoch
    m = json.loads((out / "metrics.json").read_text())
    best = max(v["recall@20"] for r in records for v in r["valid_within_epoch"])
    assert m["valid"]["recall@20"] == pytest.approx(best)


def test_run_torchrec_backend(tiny_dataset, tmp_path):
    out = tmp_path / "trec"
    rc = main(["run", "--local", "--data", str(tiny_dataset), "--config", "configs/synthetic.yaml",
               "--out", str(out)] + _sets("model.backend=torchrec", "train.merged_baseline=false",
                                          "optim.mode=rowwise_adagrad"))
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["stages"]["mba"]["triples"] > 0


def test_config_errors(tmp_path, tiny_dataset, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mba:\n  alfa: 3\n")
    with pytest.raises(C.ConfigError, match=r"bad\.yaml: unknown key 'mba\.alfa'"):
        C.load_config(bad)
    with pytest.raises(C.ConfigError, match="must be one of"):
        C.load_config(None, ["optim.mode=adam"])
    with pytest.raises(C.ConfigError, match="must be a number"):
        C.load_config(None, ["mba.alpha=lots"])
    with pytest.raises(C.ConfigError, match="does not exist"):
        C.load_config(tmp_path / "missing.yaml")
    with pytest.raises(C.ConfigError, match="not a fused torchrec kernel"):
        C.load_config(None, ["model.backend=torchrec", "optim.mode=sparse_adam"])
    with pytest.raises(C.ConfigError, match="train.data_threads must be 0"):
        C.load_config(None, ["train.data_threads=-1"])
    with pytest.raises(C.ConfigError, match="must be one of"):
        C.load_config(None, ["optim.torch_sparse=sorted"])
    assert main(["run", "--local", "--data", str(tiny_dataset), "--config", str(bad), "--out",
                 str(tmp_path / "r")]) == 2
    assert "unknown key 'mba.alfa'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert main(["run", "--local", "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_shipped_configs_load():
    from pathlib import Path

    for p in sorted(Path("configs").glob("*.yaml")):
        C.load_config(p)


def test_missing_checkpoint_is_a_clear_error(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--local", "--data", str(tiny_dataset), "--model", "mf", "--out", str(out)]
                + _sets("data.aux=click")) == 0
    shutil.rmtree(out / "checkpoints" / "mf_target")
    assert main(["recommend", "--run", str(out)]) == 2
    assert "checkpoints/mf_target does not exist" in capsys.readouterr().err


def test_pretrained_models_reused_from_an_earlier_run(tiny_dataset, tmp_path):
    first = tmp_path / "first"
    assert main(["run", "--local", "--data", str(tiny_dataset), "--config", "configs/synthetic.yaml",
                 "--out", str(first)] + _sets()) == 0
    second = tmp_path / "second"
    assert main(["run", "--local", "--data", str(tiny_dataset), "--config", "configs/synthetic.yaml",
                 "--out", str(second)] + _sets(f"pretrain.from_run={first}")) == 0
    stages = {json.loads(line)["stage"] for line in (second / "log.jsonl").read_text().splitlines()}
    assert stages == {"mba"}  # nothing pretrained again
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (first, second))
    # the reused stage-1 models give the same baseline rows
    assert a["baselines"]["mf_click"] == b["baselines"]["mf_click"]
    # a config that cannot reuse them is refused before anything is trained
    third = tmp_path / "third"
    assert main(["run", "--local", "--data", str(tiny_dataset), "--config", "configs/synthetic.yaml",
                 "--out", str(third)] + _sets(f"pretrain.from_run={first}", "data.aux=purchase")) == 2


def test_only_input_errors_become_one_line(monkeypatch, capsys, tmp_path):
    """What the user can fix is one line with exit 2; a bug keeps its traceback."""
    import launch.cli as cli

    assert main(["recommend", "--run", str(tmp_path)]) == 2
    assert "is not a finished mba-dist run" in capsys.readouterr().err
    assert main(["recommend", "--run", str(tmp_path), "--users-file", str(tmp_path / "no")]) == 2
    assert "does not exist" in capsys.readouterr().err

    def bug(a):
        raise ValueError("an internal bug")

    monkeypatch.setattr(cli, "cmd_recommend", bug)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["recommend", "--run", str(tmp_path)])


def test_every_option_of_every_command_explains_itself():
    import argparse
    from launch.cli import parser

    p = parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    for name, cmd in sub.choices.items():
        for action in cmd._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"mba-dist {name} {action.option_strings[0]} has no help"
        text = cmd.format_help()
        assert "--log-level" in text and "(default: None)" not in text, name
    assert "(default: 20)" in sub.choices["recommend"].format_help()


def test_quiet_prints_the_table_only_and_info_a_banner_first(tiny_dataset, tmp_path, capsys):
    args = ["run", "--local", "--data", str(tiny_dataset), "--config", "configs/synthetic.yaml",
            "--set", "pretrain.epochs=1", "--set", "mba.epochs=1", "--set",
            "train.merged_baseline=false"]
    assert main(args + ["--out", str(tmp_path / "a"), "-q"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("| model |") and err == ""
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith(f"[mba-dist] {tiny_dataset}: 300 users, 200 items, train pairs ")
    assert ("stages pre_f -> pre_g -> mba; 1 worker in this process (--local); torch tables; "
            f"output {(tmp_path / 'b').resolve()}") in first


def test_run_json_records_what_the_run_was_made_with(tiny_dataset, tmp_path):
    import datetime
    import subprocess

    out = tmp_path / "run"
    assert main(["run", "--local", "--data", str(tiny_dataset), "--out", str(out), "-q",
                 "--set", "method=mf", "--set", "pretrain.epochs=2"]) == 0
    info = json.loads((out / "run.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True).stdout.strip()
    assert info["git"]["commit"] == head and isinstance(info["git"]["dirty"], bool)
    import torch
    assert info["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert {"ray", "pyarrow", "numpy", "python"} <= set(info["versions"])
    started = datetime.datetime.fromisoformat(info["started"])
    finished = datetime.datetime.fromisoformat(info["finished"])
    assert started <= finished and info["host"]
    for ln in (out / "log.jsonl").read_text().splitlines():
        t = datetime.datetime.fromisoformat(json.loads(ln)["time"])
        assert started <= t <= finished


def test_cpus_per_worker_sets_what_ray_reserves_and_the_threads():
    import torch
    from mba_dist.dist.local import share_cores
    from mba_dist.train.ray_job import _worker_resources

    assert _worker_resources(False, None) == {"CPU": 0.5}
    assert _worker_resources(True, None) is None
    assert _worker_resources(True, 8.0) == {"CPU": 8.0, "GPU": 1}
    before = torch.get_num_threads()
    try:
        assert share_cores(4, cpus=3.0) == 3 and torch.get_num_threads() == 3
        assert share_cores(1, cpus=0.5) == 1
    finally:
        torch.set_num_threads(before)


def test_a_run_without_export_and_on_a_sample_of_users(tiny_dataset, tmp_path, capsys):
    """eval.top_n: 0 writes no recommendations; eval.user_fraction ranks a fixed sample of the
    users in every evaluation, fewer users than the full ranking; every worker's peak RSS is in
    metrics.json."""
    runs = {}
    for frac in ("1.0", "0.5"):
        out = tmp_path / f"run{frac}"
        assert main(["run", "--local", "--model", "mf", "--data", str(tiny_dataset), "--out",
                     str(out), "-q"] + _sets("eval.top_n=0", f"eval.user_fraction={frac}")) == 0
        assert not (out / "recommendations.parquet").exists() and (out / "results.md").is_file()
        runs[frac] = json.loads((out / "metrics.json").read_text())
    full, half = runs["1.0"]["test"]["users"], runs["0.5"]["test"]["users"]
    assert 0.3 * full < half < 0.7 * full
    assert len(runs["1.0"]["peak_rss_mb"]) == 1 and runs["1.0"]["peak_rss_mb"][0] > 50
    capsys.readouterr()
