"""Denoising AUC: the per-user AUC against brute force, and the table of a run."""
import numpy as np
import pytest

from launch.cli import main
from mba_dist.eval.denoise import per_user_auc


def _brute(users, scores, labels):
    aucs = []
    for u in np.unique(users):
        p = scores[(users == u) & labels]
        n = scores[(users == u) & ~labels]
        if len(p) and len(n):
            aucs.append(np.mean([(a > b) + 0.5 * (a == b) for a in p for b in n]))
    return float(np.mean(aucs)), len(aucs)


def test_per_user_auc_equals_brute_force_with_ties():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, 600)
    scores = rng.integers(0, 6, 600).astype(float)  # many ties
    labels = rng.random(600) < 0.3
    auc, n = per_user_auc(users, scores, labels)
    want, m = _brute(users, scores, labels)
    assert n == m and auc == pytest.approx(want, abs=1e-12)
    assert per_user_auc(users, labels.astype(float), labels)[0] == 1.0  # a perfect separation


def test_denoising_table_of_a_run(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", "--local", "--data", str(tiny_dataset), "--config",
                 "configs/synthetic.yaml", "--out", str(run), "--set", "pretrain.epochs=3",
                 "--set", "mba.epochs=3", "--set", "train.merged_baseline=false", "-q"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--denoising"]) == 0
    out = capsys.readouterr().out
    assert "positive by the planted truth" in out
    rows = dict(line.strip("|").split("|")[:2] for line in out.splitlines()
                if line.startswith("| ") and "AUC" not in line)
    assert {r.strip() for r in rows} == {"mostpop", "mf_purchase", "mf_click", "mba", "mba_t"}
    assert all(0.0 <= float(v) <= 1.0 for v in rows.values())
    assert (run / "denoising.md").is_file() and (run / "denoising.csv").is_file()
