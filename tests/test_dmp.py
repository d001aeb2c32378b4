"""Sharded (torchrec DMP, 2 gloo ranks, table-wise) against unsharded (plain torch, one process):
the same hand-written weights, the same global batches split across ranks, K = 6 alternating
MBA steps (DP, DN, ...; kinds B and A), with one auxiliary behavior and with two (k = 2: the
kind-A pairs' own masks of behaviors). Losses and every table agree (explicit tolerance), and
the frozen and off-phase tables are bit-for-bit unchanged at every step."""
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mba_dist import config as C
from mba_dist.data.dataset import Dataset
from mba_dist.dist.local import run_local_ranks
from mba_dist.mba.roles import AuxRoles, Kind, Model, Phase, phase_of_step
from mba_dist.tables.build import build_group

U, I, D, K, B = 40, 30, 8, 6, 16
TOL = dict(rtol=1e-5, atol=1e-6)


def hand_weights(model: str, entity: str, n: int) -> torch.Tensor:
    """Distinct small values per (model, entity, row, column), no random generator."""
    salt = sum(map(ord, model + entity))
    idx = torch.arange(n * D, dtype=torch.float64).reshape(n, D)
    return (((idx * 37 + salt) % 23 - 11) / 40).float()


def global_batches(k: int):
    """K batches; kind A with k > 1 also says which behaviors each pair was seen in (at least
    one, both for some)."""
    rng = np.random.default_rng(3)
    out = []
    for s in range(K):
        kind = Kind.B if s % 3 else Kind.A
        seen = None
        if kind is Kind.A and k > 1:
            first = rng.integers(0, k, B)
            seen = (np.arange(k)[:, None] == first) | (rng.random((k, B)) < 0.3)
        out.append((kind, rng.integers(0, U, B), rng.integers(0, I, B), rng.integers(0, I, B),
                    seen))
    return out


def snapshot(groups):
    return {m: [w.clone() for w in g.weights(m)] for g in groups for m in g.models}


def run_steps(backend: str, k: int = 1) -> dict:
    import torch.distributed as dist

    from mba_dist.train.steps import L2, ids_on, mba_step

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    cfg = C.load_config(None, [f"model.backend={backend}", "optim.mode=sgd", "optim.lr=0.5",
                               f"model.dim={D}", "mba.alpha=2", "mba.c1=3", "mba.c2=2",
                               "mba.lambda_t=0.1"])
    reg = L2.of(cfg.optim, U)

    def group(models, optim):
        g = build_group(models, U, I, cfg.model, cfg.optim if optim else None,
                        torch.device("cpu"), cfg.train.seed)
        for m in g.models:
            g.load(m, hand_weights(m, "user", U), hand_weights(m, "item", I))
        return g

    roles = AuxRoles(("cart",) if k == 1 else ("click", "cart", "fav")[:k])
    frozen, t = group(roles.frozen, None), group([Model.T], "sgd")
    dn, dp = group(roles.h(1), "sgd"), group(roles.h(2), "sgd")
    frozen0 = snapshot([frozen])
    losses, untouched = [], []
    for step, (kind, u, p, n, seen) in enumerate(global_batches(k)):
        phase = phase_of_step(step)
        on, off = (dn, dp) if phase is Phase.DN else (dp, dn)
        before = snapshot([off])
        sl = slice(rank, None, world)  # this rank's share of the global batch
        ids = ids_on(torch.device("cpu"), u[sl], p[sl], n[sl])
        seen = None if seen is None else torch.from_numpy(seen[:, sl])
        losses.append(mba_step(cfg.mba, reg, kind, phase, ids, frozen, t, on, seen))
        after = snapshot([off])
        untouched.append(all(torch.equal(a, b) for m in before for a, b in zip(before[m], after[m])))
    now = snapshot([frozen])
    frozen_same = all(torch.equal(a, b) for m in now for a, b in zip(now[m], frozen0[m]))
    return {"losses": losses, "tables": snapshot([t, dn, dp]), "off_phase_untouched": untouched,
            "frozen_untouched": frozen_same, "phases": [phase_of_step(s).value for s in range(K)]}


@pytest.mark.parametrize("k", [1, 2])
def test_sharded_two_ranks_match_unsharded(k):
    ref = run_steps("torch", k)
    ranks = run_local_ranks(run_steps, 2, "torchrec", k)
    assert len(ref["tables"]) == 1 + 2 * (1 + k)  # t, h1 and h2 of f and every behavior
    assert ref["phases"][:2] == ["DP", "DN"]
    # the weights moved: the comparison below is not between two untouched models
    assert not torch.allclose(ref["tables"]["t"][0], hand_weights("t", "user", U))
    for r in ranks:
        assert r["frozen_untouched"] and all(r["off_phase_untouched"])
        for m, (uw, iw) in ref["tables"].items():
            torch.testing.assert_close(r["tables"][m][0], uw, **TOL)
            torch.testing.assert_close(r["tables"][m][1], iw, **TOL)
    assert ref["frozen_untouched"] and all(ref["off_phase_untouched"])
    # per step: the global loss is the mean of the ranks' (local mean + W x local L2) losses
    glob = np.mean([r["losses"] for r in ranks], axis=0)
    np.testing.assert_allclose(glob, ref["losses"], rtol=1e-5)


def test_two_rank_training_runs_in_lockstep(tiny_dataset, tmp_path):
    """The worker function on 2 gloo ranks (sharded tables): every rank steps the same number
    of times, sees the same all-reduced validation metrics, and rank 0 alone writes outputs."""
    from mba_dist.run_dir import RunDir
    from mba_dist.train.runner import run_training

    cfg = C.load_config("configs/synthetic.yaml", [
        "data.aux=click", "model.backend=torchrec", "optim.mode=rowwise_adagrad", "optim.lr=0.05",
        "pretrain.epochs=2", "mba.epochs=2", "train.batch_size=256", "train.merged_baseline=false"])
    RunDir(tmp_path / "two").begin(cfg, {"data": str(tiny_dataset)}, overwrite=False)
    two = run_local_ranks(run_training, 2, cfg, str(tiny_dataset), RunDir(tmp_path / "two"))
    one = run_local_ranks(run_training, 1, cfg, str(tiny_dataset), RunDir(tmp_path / "one"))[0]
    assert two[0]["baselines"] == two[1]["baselines"]  # the evaluator's sums are all-reduced
    for stage, info in one["stages"].items():
        # the same global batches; a tail smaller than the world size is dropped
        assert abs(two[0]["stages"][stage]["triples"] - info["triples"]) <= 2 * info["epochs_run"]
    saved = sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir())
    assert saved == ["mba", "pre_f", "pre_g"]  # directories: every rank wrote its shards
    # the stage directories assemble (in this process, whole) into the tables the ranks
    # evaluated from their shards, and the ranks' recommendation parts are its top-N lists
    from mba_dist.jobs import evaluate_table, recommend

    whole = evaluate_table(tmp_path / "two", with_baselines=True)
    for row, splits in two[0]["baselines"].items():
        for metric, v in splits["test"].items():
            assert whole[row]["test"][metric] == pytest.approx(v, rel=1e-6, abs=1e-9), (row, metric)
    rec = tmp_path / "two" / "recommendations.parquet"
    parts = [pq.read_table(p) for p in sorted(rec.iterdir())]
    assert [p.name for p in sorted(rec.iterdir())] == ["part-00000.parquet", "part-00001.parquet"]
    assert all(p.num_rows for p in parts)
    assert not set(parts[0].column("user").to_pylist()) & set(parts[1].column("user").to_pylist())
    exported = pq.read_table(rec).to_pandas().sort_values(["user", "rank"]).reset_index(drop=True)
    redone = recommend(tmp_path / "two", None, cfg.eval.top_n).to_pandas()
    redone = redone[redone.user.isin(set(exported.user))].sort_values(["user", "rank"])
    assert set(exported.user) == set(Dataset(tiny_dataset).pairs("test", "purchase").users.tolist())
    assert (exported[["user", "item", "rank"]].values == redone[["user", "item", "rank"]].values).all()
    np.testing.assert_allclose(exported.score, redone.score, rtol=1e-6)
    logged = (tmp_path / "two" / "log.jsonl").read_text().splitlines()
    assert len(logged) == sum(s["epochs_run"] for s in two[0]["stages"].values())  # rank 0 only


def test_the_sharding_plan_can_be_printed():
    from mba_dist.config import OptimConfig
    from mba_dist.dist.local import local_process_group
    from mba_dist.tables.plan import describe
    from mba_dist.tables.torchrec_tables import TorchrecTableGroup

    with local_process_group():
        g = TorchrecTableGroup(["t", "h1_f"], 10, 7, 4, OptimConfig(mode="adagrad", lr=0.1),
                               torch.device("cpu"))
        text = describe(g.plan)
    lines = text.splitlines()
    assert len(lines) == 4  # user and item tables of two models
    assert any(ln.endswith("t_user: table_wise on ranks [0]") for ln in lines), text
