"""The evaluator on 1 and 2 gloo ranks, from local tensors and from torchrec-sharded tables,
against the brute-force reference: the same metrics to 1e-9.

Factors are small integers, so every logit is an exact integer (the matrix product rounds the
same way in every batch shape) and most scores tie: the tie rule is exercised everywhere."""
import numpy as np
import pytest
import torch

from mba_dist.data.pairs import CSR
from mba_dist.dist.local import run_local_ranks
from mba_dist.eval.ranking import evaluate
from mba_dist.eval.scorers import mba_scorer, mf_scorer
from tests import oracle
from tests.test_evaluate import pairs

U, I, D, KS = 41, 150, 4, (10, 20)


def case():
    rng = np.random.default_rng(7)
    f = {m: tuple(torch.from_numpy(rng.integers(-2, 3, size=(n, D)).astype(np.float32)) for n in (U, I))
         for m in ("t", "pre_f")}
    train_sets = [set(rng.choice(I, rng.integers(0, 30), replace=False)) if u % 4 else set()
                  for u in range(U)]
    test_sets = [set(rng.choice(sorted(set(range(I)) - tr), rng.integers(0, 25), replace=False))
                 for tr in train_sets]
    train = pairs([(u, i) for u in range(U) for i in sorted(train_sets[u])])
    test = pairs([(u, i) for u in range(U) for i in sorted(test_sets[u])])
    return f, train_sets, test_sets, train, test


def rank_fn() -> dict:
    import mba_dist.eval.ranking as ev
    from mba_dist.tables.build import build_group

    ev.MAX_ITEM_CHUNK = 16  # several item chunks, so the running top-K merges across them
    f, _, _, train, test = case()
    mask = CSR(train, U)

    def run(scorer):  # memory_mb=0: one user per rank per block, many blocks
        return evaluate(scorer, test, mask, U, I, KS, memory_mb=0)

    out = {"local_mf": run(mf_scorer(f["t"])), "local_mba": run(mba_scorer(f["t"], f["pre_f"], 0.7))}
    from mba_dist.config import ModelConfig

    model = ModelConfig(dim=D, backend="torchrec")
    t = build_group(["t"], U, I, model, None, torch.device("cpu"), seed=0)
    t.load("t", *f["t"])
    frozen = build_group(["pre_f", "pre_g"], U, I, model, None, torch.device("cpu"), seed=0)
    frozen.load("pre_f", *f["pre_f"])
    frozen.load("pre_g", *f["t"])
    out["sharded_mf"] = run(mf_scorer(t.factors("t")))
    out["sharded_mba"] = run(mba_scorer(t.factors("t"), frozen.factors("pre_f"), 0.7))
    return out


def test_one_and_two_ranks_match_brute_force():
    f, train_sets, test_sets, _, _ = case()
    dense = {"mf": f["t"][0] @ f["t"][1].T}
    sc = mba_scorer(f["t"], f["pre_f"], 0.7)
    sc.set_users(torch.arange(U), torch.arange(U))
    dense["mba"] = sc.scores(0, I).clone()
    want = {k: oracle.ranking_metrics(s.numpy(), train_sets, test_sets, KS) for k, s in dense.items()}
    assert len(set(dense["mf"].flatten().tolist())) < 30  # integer logits: heavy ties

    one = run_local_ranks(rank_fn, 1)
    two = run_local_ranks(rank_fn, 2)
    for results in (one, two):
        for res in results:
            for variant, got in res.items():
                ref = want[variant.split("_")[1]]
                for k, v in ref.items():
                    assert got[k] == pytest.approx(v, abs=1e-9), (len(results), variant, k)
