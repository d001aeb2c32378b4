"""`mba-dist bench`: the MBA step over worker counts with its time split, and the baselines."""
import csv
import json

import numpy as np
import pytest

from launch.cli import main
from mba_dist.data.pairs import Pairs


def test_bench_over_worker_counts_writes_tables(tmp_path):
    out = tmp_path / "bench"
    rc = main(["bench", "--workers", "1,2", "--users", "500", "--items", "300", "--rows", "6000",
               "--batch", "64", "--steps", "6", "--warmup", "2", "--out", str(out)])
    assert rc == 0
    rows = json.loads((out / "bench.json").read_text())
    ours = [r for r in rows if r["method"] == "mba (torchrec, adagrad)"]
    assert [r["workers"] for r in ours] == [1, 2]
    one_core = [r for r in rows if r["method"] == "mba (torchrec, adagrad, 1 thread)"]
    assert len(one_core) == 1 and one_core[0]["workers"] == 1  # the per-core reference
    for r in ours:
        assert r["triples_per_s"] > 0 and r["peak_mb_per_worker"] > 0
        parts = sum(r[f"{p}_frac"] for p in ("data", "forward", "backward", "optimizer"))
        # the parts cover the step, and no more: the data wait is of the timed steps, the
        # ranges of the profiled ones after them, so on a busy machine the sum may pass 1 a bit
        assert 0.5 < parts <= 1.05
    assert ours[0]["scaling_efficiency"] == 1.0
    assert ours[0]["comm_frac"] == 0.0 < ours[1]["comm_frac"]  # collectives only with 2 ranks
    methods = [r["method"] for r in rows]
    assert "authors-style step" in methods and any("torch, sparse_adam" in m for m in methods)
    assert "tables only (torchrec, adagrad)" in methods
    assert any(m.startswith("implicit BPR") for m in methods)
    with open(out / "bench.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    report = (out / "bench.md").read_text()
    assert "| mba (torchrec, adagrad) | 2 |" in report
    assert "x authors-style step" in report and "x implicit BPR" in report
    assert "- tables only, 1 worker: " in report  # the floor against implicit


def test_the_tables_floor_moves_the_trained_rows_of_the_batch_only():
    """`tables_step` does the lookups and updates of an MBA step: the batch's rows of t and
    the h group move, the frozen group and every other row do not."""
    import torch

    from mba_dist.bench.train import tables_step
    from mba_dist.tables.torch_tables import TorchTableGroup

    cpu = torch.device("cpu")
    from mba_dist.config import OptimConfig

    groups = [TorchTableGroup(models, 20, 10, 4, mode and OptimConfig(mode=mode, lr=0.1), cpu)
              for models, mode in
              ((["pre_f", "pre_g"], None), (["t"], "adagrad"), (["h1_f", "h1_g"], "adagrad"))]
    before = [{m: g.weights(m) for m in g.models} for g in groups]
    u, pos, neg = np.array([0, 1, 1]), np.array([2, 3, 3]), np.array([5, 6, 7])
    tables_step([torch.from_numpy(a) for a in (u, pos, neg)], *groups)
    for g, was in zip(groups, before):
        for m in g.models:
            (u0, i0), (u1, i1) = was[m], g.weights(m)
            moved_u = (u0 != u1).any(1).nonzero().flatten().tolist()
            moved_i = (i0 != i1).any(1).nonzero().flatten().tolist()
            want = ([], []) if m.startswith("pre") else ([0, 1], [2, 3, 5, 6, 7])
            assert (moved_u, moved_i) == want, m


def test_authors_style_triples_draw_negatives_the_user_never_touched():
    from mba_dist.bench.step import _AuthorsTriples

    pairs = Pairs(np.array([0, 0, 1]), np.array([0, 1, 2]))
    ds = _AuthorsTriples(3, pairs)
    for k, (user, item) in enumerate([(0, 0), (0, 1), (1, 2)]):
        for _ in range(20):
            u, i, j = ds[k]
            assert (u, i) == (user, item) and j not in ds.user_items[u]
    # serving a draw of two pairs: distinct pairs of the set, their users' whole item sets
    part = _AuthorsTriples(3, pairs, serve=2, seed=1)
    served = set(zip(part.users, part.items))
    assert len(part) == 2 and len(served) == 2 and served <= {(0, 0), (0, 1), (1, 2)}
    assert all(part.user_items[u] == {0: {0, 1}, 1: {2}}[u] for u, _ in served)


def test_bench_repeat_reports_the_median_run(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--workers", "1", "--users", "300", "--items", "200", "--rows", "3000",
                 "--batch", "64", "--steps", "4", "--warmup", "1", "--repeat", "3",
                 "--no-baselines", "--out", str(out)]) == 0
    (row,) = json.loads((out / "bench.json").read_text())
    assert len(row["runs"]) == 3 and sorted(row["runs"])[1] == round(row["triples_per_s"])
    assert "median of runs" in (out / "bench.md").read_text()


def test_bench_profile_writes_the_steps_time_per_op(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--workers", "1", "--users", "300", "--items", "200", "--rows", "3000",
                 "--batch", "64", "--steps", "3", "--warmup", "1", "--no-baselines", "--profile",
                 "--out", str(out)]) == 0
    table = (out / "profile.txt").read_text()
    assert table.startswith("MBA step, torchrec backend, adagrad, batch 64, 3 steps on cpu")
    assert "fbgemm::split_embedding" in table and "Self CPU" in table  # the fused kernels' rows


@pytest.mark.slow  # two Ray Train runs (about a minute); the Ray worker path is in test_ray
def test_bench_runs_the_workers_through_ray_train(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--ray", "--workers", "2", "--users", "300", "--items", "200",
                 "--rows", "3000", "--batch", "64", "--steps", "4", "--warmup", "1",
                 "--no-baselines", "--out", str(out)]) == 0
    two, one_core = json.loads((out / "bench.json").read_text())
    assert two["workers"] == 2 and two["triples_per_s"] > 0
    assert two["comm_frac"] > 0  # the two Ray Train workers ran collectives with each other
    assert one_core["workers"] == 1 and "1 thread" in one_core["method"]


def test_bench_rejects_a_missing_dataset_or_config_before_starting_workers(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--data", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "nope does not exist" in capsys.readouterr().err
    assert main(["bench", "--config", str(tmp_path / "x.yaml"), "--out", str(out)]) == 2
    assert "config file" in capsys.readouterr().err and not out.exists()


def test_the_gpu_script_runs_every_section_in_its_quick_form_on_cpu(tmp_path):
    """`tools/gpu_bench.py` runs on lent GPU machines only; its `--quick` form on the CPU runs
    every section through the same calls, and a section that fails is recorded, not raised."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "tools" / "gpu_bench.py"), "--quick",
                        "--device", "cpu", "--out", str(tmp_path)], cwd=root,
                       env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert res["errors"] == []
    assert {s["data"] for s in res["steps"]} == {"beibei", "industrial"} and res["eval"]
    assert "authors-style step" in {s["method"] for s in res["steps"]}
    assert all(s["triples_per_s"] > 0 for s in res["steps"])
