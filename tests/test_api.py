"""The Python API: the README's example runs as written, and API and CLI runs are the same."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launch.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_as_written(tmp_path):
    shutil.copytree(ROOT / "configs", tmp_path / "configs")  # it runs from a repository root
    res = subprocess.run([sys.executable, "-c", _readme_example()], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert lines[0].startswith("Run('runs/api_demo': mba, test recall@20 ")
    metrics = json.loads((tmp_path / "runs" / "api_demo" / "metrics.json").read_text())
    assert f"{metrics['test']['recall@20']:.4f}" in lines[0]
    table = eval(lines[2])  # {model: test recall@20}
    assert set(table) >= {"mostpop", "mf_purchase", "mf_click", "mba"}
    assert table["mba"] == round(metrics["test"]["recall@20"], 4)
    recs = eval(lines[3])
    assert [(r["user"], r["rank"]) for r in recs] == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]


FAST = ["pretrain.epochs=2", "mba.epochs=2", "train.merged_baseline=false", "data.aux=click"]


def test_api_and_cli_runs_are_interchangeable(tiny_dataset, tmp_path, capsys):
    import mba_dist

    api_run = mba_dist.fit(tiny_dataset, tmp_path / "api", "configs/synthetic.yaml",
                           sets=FAST[:2], overrides={"train.merged_baseline": False,
                                                     "data.aux": "click"}, local=True)
    sets = [a for kv in FAST for a in ("--set", kv)]
    assert main(["run", "--local", "--data", str(tiny_dataset), "--config",
                 "configs/synthetic.yaml", "--out", str(tmp_path / "cli")] + sets) == 0
    cli_run = mba_dist.Run.load(tmp_path / "cli")
    assert cli_run.metrics["test"] == api_run.metrics["test"]
    assert cli_run.config == api_run.config
    assert (cli_run.recommend(None, 5).to_pylist() == api_run.recommend(None, 5).to_pylist())
    # the CLI reads the API's run
    assert main(["recommend", "--run", str(tmp_path / "api"), "--users", "0", "--k", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-2:]
    assert [ln.split("\t")[:3] for ln in out] == [["0", ln.split("\t")[1], str(r)]
                                                  for ln, r in zip(out, (1, 2))]


def test_the_api_raises_the_clis_input_errors(tiny_dataset, tmp_path):
    import mba_dist
    from mba_dist.errors import ConfigError, RunError

    with pytest.raises(ConfigError, match="optim.lr must be greater than 0.0"):
        mba_dist.fit(tiny_dataset, tmp_path / "r", overrides={"optim.lr": 0}, local=True)
    with pytest.raises(RunError, match="is not a finished mba-dist run"):
        mba_dist.Run.load(tmp_path / "nothing")
