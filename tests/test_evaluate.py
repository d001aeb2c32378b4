"""Evaluator: hand-computed values and a brute-force numpy reference."""
import numpy as np
import pytest
import torch

from mba_dist.dataset import CSR, Pairs
from mba_dist.evaluate import FactorScorer, MemoryScorer, evaluate, mba_scorer, rank_top_k
from tests import oracle


class DenseScorer:
    def __init__(self, s):
        self.s = torch.as_tensor(s, dtype=torch.float32)

    def scores(self, users, lo, hi):
        return self.s[users, lo:hi].clone()


def pairs(rows):
    u = np.array([r[0] for r in rows], dtype=np.int64)
    i = np.array([r[1] for r in rows], dtype=np.int64)
    return Pairs(u, i)


def test_hand_computed_recall_and_ndcg():
    # 2 users x 5 items. User 0: train {0}, test {1, 3}; user 1: no train, test {4}.
    s = np.array([[9, 8, 7, 6, 5],
                  [1, 2, 3, 4, 0]], dtype=np.float32)
    train, test = pairs([(0, 0)]), pairs([(0, 1), (0, 3), (1, 4)])
    m = evaluate(DenseScorer(s), test, CSR(train, 2), 2, 5, ks=(2, 3), memory_mb=1)
    # user 0 ranking after masking item 0: [1, 2, 3, 4] -> top2 {1,2}: 1 hit; top3: 2 hits.
    # user 1 ranking: [3, 2, 1, 0, 4] -> item 4 last: 0 hits.
    assert m["recall@2"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["recall@3"] == pytest.approx((2 / 2 + 0) / 2)
    ndcg2_u0 = (1 / np.log2(2)) / (1 / np.log2(2) + 1 / np.log2(3))
    ndcg3_u0 = (1 / np.log2(2) + 1 / np.log2(4)) / (1 / np.log2(2) + 1 / np.log2(3))
    assert m["ndcg@2"] == pytest.approx(ndcg2_u0 / 2)
    assert m["ndcg@3"] == pytest.approx(ndcg3_u0 / 2)
    assert m["users"] == 2


def test_idcg_uses_min_of_k_and_test_count():
    # One user, 4 test items, all ranked at the top: NDCG@2 = 1, Recall@2 = 2/4.
    s = np.array([[5, 4, 3, 2, 1, 0]], dtype=np.float32)
    test = pairs([(0, 0), (0, 1), (0, 2), (0, 3)])
    m = evaluate(DenseScorer(s), test, None, 1, 6, ks=(2, 20), memory_mb=1)
    assert m["ndcg@2"] == pytest.approx(1.0)
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["recall@20"] == pytest.approx(1.0)  # K beyond the catalog: every item is ranked


@pytest.mark.parametrize("memory_mb", [0, 1, 64])
def test_matches_brute_force_across_chunkings(memory_mb, monkeypatch):
    import mba_dist.evaluate as ev

    rng = np.random.default_rng(0)
    U, I = 37, 150
    s = rng.normal(size=(U, I)).astype(np.float32)
    train_sets = [set(rng.choice(I, rng.integers(0, 30), replace=False)) for _ in range(U)]
    test_sets = [set(rng.choice(sorted(set(range(I)) - tr), rng.integers(0, 25), replace=False))
                 for tr in train_sets]
    train = pairs([(u, i) for u in range(U) for i in sorted(train_sets[u])])
    test = pairs([(u, i) for u in range(U) for i in sorted(test_sets[u])])
    # Small item chunks too, so the running top-K merge across chunks is exercised.
    monkeypatch.setattr(ev, "chunk_sizes", lambda nu, ni, mb: (max(1, mb * 3), 16 if mb < 64 else ni))
    got = evaluate(DenseScorer(s), test, CSR(train, U), U, I, ks=(10, 20), memory_mb=memory_mb)
    want = oracle.ranking_metrics(s, train_sets, test_sets, (10, 20))
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k


def test_mba_scorer_blends_sigmoids():
    rng = np.random.default_rng(1)
    t = (torch.randn(4, 3), torch.randn(5, 3))
    f = (torch.randn(4, 3), torch.randn(5, 3))
    s = mba_scorer(t, f, 0.7).scores(torch.arange(4), 0, 5)
    want = 0.7 * torch.sigmoid(t[0] @ t[1].T) + 0.3 * torch.sigmoid(f[0] @ f[1].T)
    torch.testing.assert_close(s, want)
    assert rng is not None


def test_masked_items_never_ranked_and_memory_scorer():
    pop = torch.tensor([0.5, 0.4, 0.3, 0.2])
    boost = CSR(pairs([(0, 3)]), 1)
    mask = CSR(pairs([(0, 0)]), 1)
    [(uc, v, i)] = list(rank_top_k(MemoryScorer(pop, boost), np.array([0]), 3, mask, 4, 1))
    assert i.tolist() == [[3, 1, 2]]  # boosted aux item first, masked item 0 absent
    assert torch.isfinite(v).all()


def test_factor_scorer_raw_is_logit():
    U, I = torch.randn(2, 4), torch.randn(3, 4)
    torch.testing.assert_close(FactorScorer([(1.0, U, I)], raw=True).scores(torch.arange(2), 0, 3),
                               U @ I.T)
