"""LightGCN as t (`model.t: lightgcn`): the propagation against a dense oracle, the group's
MF-shaped output, exact resume, the stage files read back by `evaluate`, stage-1 reuse, and
the refusals."""
import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from launch.cli import main
from mba_dist import config as C
from mba_dist.config import ModelConfig, OptimConfig
from mba_dist.errors import ConfigError
from mba_dist.tables.build import build_group
from mba_dist.tables.lightgcn import Graph
from mba_dist.train.runner import run_training
from mba_dist.train.steps import L2, bpr_step

CPU = torch.device("cpu")
SETS = ["model.t=lightgcn", "pretrain.epochs=3", "pretrain.patience=100", "mba.epochs=3",
        "mba.patience=100", "train.merged_baseline=false", "train.batch_size=256"]


def _pairs(users: int, items: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    cells = rng.choice(users * items, size=n, replace=False)
    cells.sort()
    return SimpleNamespace(users=cells // items, items=cells % items)


def _dense_oracle(pairs, users: int, items: int, e: np.ndarray, layers: int) -> np.ndarray:
    """mean_l A~^l E over the (users + items) graph, A~ = D^-1/2 A D^-1/2 (LightGCN's Eq.)."""
    r = np.zeros((users, items))
    r[pairs.users, pairs.items] = 1.0
    a = np.block([[np.zeros((users, users)), r], [r.T, np.zeros((items, items))]])
    deg = a.sum(1)
    inv = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1.0)), 0.0)
    a = inv[:, None] * a * inv[None, :]
    out, cur = e.copy(), e.copy()
    for _ in range(layers):
        cur = a @ cur
        out += cur
    return out / (layers + 1)


def test_propagation_matches_a_dense_oracle_and_its_gradient_checks():
    U, I = 9, 6  # some users and items without any pair (degree 0)
    pairs = _pairs(U - 2, I - 1, 14, seed=1)
    g = Graph(pairs, U, I, CPU)
    e = np.random.default_rng(2).standard_normal((U + I, 4))
    want = _dense_oracle(pairs, U, I, e, 3)
    user = torch.tensor(e[:U], requires_grad=True)
    item = torch.tensor(e[U:], requires_grad=True)
    g.r, g.rt = (dataclasses.replace(m, values=m.values.double()) for m in (g.r, g.rt))
    got_u, got_i = g.propagate(user, item, 3)
    np.testing.assert_allclose(torch.cat([got_u, got_i]).detach().numpy(), want, atol=1e-6)
    assert torch.autograd.gradcheck(lambda a, b: g.propagate(a, b, 3), (user, item))


def test_the_group_trains_layer_zero_and_hands_out_propagated_factors():
    U, I, d = 30, 20, 8
    pairs = _pairs(U, I, 90, seed=3)
    graph = Graph(pairs, U, I, CPU)
    g = build_group(["t"], U, I, ModelConfig(dim=d, t="lightgcn"), OptimConfig(lr=0.01), CPU,
                    seed=0, graph=graph)
    base_u, base_i = (w.clone() for w in g.weights("t"))
    pu, pi = graph.propagate(base_u, base_i, 3)
    users, pos, neg = torch.tensor([0, 5, 7]), torch.tensor([1, 2, 3]), torch.tensor([4, 4, 9])
    rows = g.lookup(users, pos, neg)
    assert torch.allclose(rows.users[:, 0], pu[users]) and torch.allclose(rows.items[:, 0, 1], pi[neg])
    assert torch.equal(rows.regularised[:, 0], base_u[users])  # L2 on the layer-0 rows
    f = g.factors("t")
    assert torch.allclose(f.users(users), pu[users]) and torch.allclose(f.items(0, I), pi)
    snap = g.snapshot()
    bpr_step(g, 1e-4, L2(U, dense=False), (users, pos, neg))
    moved_u = (g.weights("t")[0] != base_u).any(1)
    # every user within reach of the batch moves, not only the batch's own rows
    assert moved_u.sum() > len(users)
    kept = g.stage_tables(snap)  # the snapshot, propagated: MF-shaped, before the step
    assert torch.allclose(kept.factor_map()["t"].users(users), pu[users])


def test_a_lightgcn_run_is_evaluated_from_its_files_and_lends_its_baseline(tiny_dataset,
                                                                           tmp_path, capsys):
    sets = [a for s in SETS + ["pretrain.epochs=2", "mba.epochs=2"] for a in ("--set", s)]
    first = tmp_path / "first"
    assert main(["run", "--local", "--data", str(tiny_dataset), "--config",
                 "configs/synthetic.yaml", "--out", str(first), "-q"] + sets) == 0
    m = json.loads((first / "metrics.json").read_text())
    assert m["stages"]["lightgcn_bpr"]["epochs_run"] == 2
    # the stage files hold MF-shaped (propagated) factors: evaluate needs no graph
    assert main(["evaluate", "--run", str(first), "--baselines"]) == 0
    capsys.readouterr()
    rows = {}
    for line in (first / "baselines.csv").read_text().splitlines()[1:]:
        name, split, *vals, _ = line.split(",")
        rows[name, split] = [float(v) for v in vals]
    for name in ("mba", "lightgcn_bpr"):
        got = rows[name, "test"]
        want = [m["baselines"][name]["test"][c] for c in ("recall@10", "recall@20", "ndcg@10",
                                                          "ndcg@20")]
        np.testing.assert_allclose(got, want, atol=1e-6)
    # a later run reuses the LightGCN-BPR baseline with stage 1
    second = tmp_path / "second"
    assert main(["run", "--local", "--data", str(tiny_dataset), "--config",
                 "configs/synthetic.yaml", "--out", str(second), "-q",
                 "--set", f"pretrain.from_run={first}", "--set", "mba.alpha=3"] + sets) == 0
    stages = {json.loads(ln)["stage"] for ln in (second / "log.jsonl").read_text().splitlines()}
    assert stages == {"mba"}
    m2 = json.loads((second / "metrics.json").read_text())
    assert m2["baselines"]["lightgcn_bpr"] == m["baselines"]["lightgcn_bpr"]


def test_a_search_trial_does_not_train_the_lightgcn_baseline(tiny_dataset):
    cfg = C.load_config("configs/synthetic.yaml", SETS + ["pretrain.epochs=1", "mba.epochs=1"])
    seen = set()
    m = run_training(cfg, tiny_dataset, None, progress=lambda st, *_: seen.add(st),
                     read_test=False)
    assert seen == {"pre_f", "pre_g", "mba"} and m["selected_on"] == "valid"


@pytest.mark.parametrize("sets, message", [
    (["model.backend=torchrec", "optim.mode=adagrad"], "model.backend=torch only"),
    (["optim.mode=adagrad"], "whole-table Adam"),
    (["mba.t_init=pre_f"], "mba.t_init"),
    (["method=mf"], "MBA's target model"),
    (["model.layers=0"], "model.layers must be at least 1"),
])
def test_lightgcn_refusals(sets, message):
    with pytest.raises(ConfigError, match=message):
        C.load_config("configs/synthetic.yaml", ["model.t=lightgcn", *sets])


def test_lightgcn_refuses_more_than_one_worker():
    cfg = C.load_config("configs/synthetic.yaml", ["model.t=lightgcn"])
    with pytest.raises(ConfigError, match="one worker .2 asked"):
        C.validate_world(cfg, 2)
