"""Evaluator: hand-computed values and a brute-force numpy reference."""
import numpy as np
import pytest
import torch

from mba_dist.data.pairs import CSR, Pairs
from mba_dist.eval.ranking import evaluate, rank_top_k
from mba_dist.eval.scorers import FactorScorer, MemoryScorer, mba_scorer
from tests import oracle


class DenseScorer:
    def __init__(self, s):
        self.s = torch.as_tensor(s, dtype=torch.float32)

    device = torch.device("cpu")

    def set_users(self, users):
        self.users = users

    def scores(self, lo, hi):
        return self.s[self.users, lo:hi].clone()


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


def random_case(seed: int, U: int = 37, I: int = 150, ties: bool = False):
    """Scores, train/test item sets; with `ties`, integer scores in 0..3 (most ranks tie).
    Some users have no train items, some more test items than K = 10."""
    rng = np.random.default_rng(seed)
    s = (rng.integers(0, 4, size=(U, I)) if ties else rng.normal(size=(U, I))).astype(np.float32)
    train_sets = [set(rng.choice(I, rng.integers(0, 30), replace=False)) if u % 5 else set()
                  for u in range(U)]
    test_sets = [set(rng.choice(sorted(set(range(I)) - tr), rng.integers(0, 25), replace=False))
                 for tr in train_sets]
    assert any(len(t) > 10 for t in test_sets)
    train = pairs([(u, i) for u in range(U) for i in sorted(train_sets[u])])
    test = pairs([(u, i) for u in range(U) for i in sorted(test_sets[u])])
    return s, train_sets, test_sets, train, test


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("memory_mb", [0, 1, 64])
def test_matches_brute_force_across_chunkings(memory_mb, ties, monkeypatch):
    import mba_dist.eval.ranking as ev

    s, train_sets, test_sets, train, test = random_case(0, ties=ties)
    U, I = s.shape
    # Small item chunks too, so the running top-K merge across chunks is exercised.
    monkeypatch.setattr(ev, "chunk_sizes", lambda nu, ni, mb: (max(1, mb * 3), 16 if mb < 64 else ni))
    got = evaluate(DenseScorer(s), test, CSR(train, U), U, I, ks=(10, 20), memory_mb=memory_mb)
    want = oracle.ranking_metrics(s, train_sets, test_sets, (10, 20))
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k


def test_ties_broken_by_item_id_within_and_across_chunks():
    # All scores equal except item 6: the top-4 is item 6, then the lowest unmasked ids.
    s = torch.zeros(1, 9)
    s[0, 6] = 1.0
    mask = CSR(pairs([(0, 1)]), 1)
    for item_chunk in (2, 3, 9):
        top = ev_top(s, mask, 4, item_chunk)
        assert top == [6, 0, 2, 3], item_chunk


def ev_top(s, mask, k, item_chunk):
    import mba_dist.eval.ranking as ev
    orig = ev.chunk_sizes
    ev.chunk_sizes = lambda nu, ni, mb: (1, item_chunk)
    try:
        [(_, _, i)] = list(rank_top_k(DenseScorer(s), np.array([0]), k, mask, s.shape[1], 1))
    finally:
        ev.chunk_sizes = orig
    return i[0].tolist()


def test_mba_scorer_blends_sigmoids():
    rng = np.random.default_rng(1)
    t = (torch.randn(4, 3), torch.randn(5, 3))
    f = (torch.randn(4, 3), torch.randn(5, 3))
    sc = mba_scorer(t, f, 0.7)
    sc.set_users(torch.arange(4))
    s = sc.scores(0, 5)
    want = 0.7 * torch.sigmoid(t[0] @ t[1].T) + 0.3 * torch.sigmoid(f[0] @ f[1].T)
    torch.testing.assert_close(s, want)
    assert rng is not None
    g = (torch.randn(4, 3), torch.randn(5, 3))
    sc = mba_scorer(t, f, 0.5, [(0.2, g)])  # mba.blend_g: 0.2 of pre_f's weight goes to pre_g
    sc.set_users(torch.arange(4))
    want = (0.5 * torch.sigmoid(t[0] @ t[1].T) + 0.3 * torch.sigmoid(f[0] @ f[1].T)
            + 0.2 * torch.sigmoid(g[0] @ g[1].T))
    torch.testing.assert_close(sc.scores(0, 5), want)
    h = (torch.randn(4, 3), torch.randn(5, 3))
    sc = mba_scorer(t, f, 0.5, [(0.2, g), (0.3, h)])  # mba.blend_each: pre_f's weight all gone
    sc.set_users(torch.arange(4))
    assert [w for w, _ in sc.parts] == [0.5, 0.2, 0.3]
    want = (0.5 * torch.sigmoid(t[0] @ t[1].T) + 0.2 * torch.sigmoid(g[0] @ g[1].T)
            + 0.3 * torch.sigmoid(h[0] @ h[1].T))
    torch.testing.assert_close(sc.scores(0, 5), want)


def test_masked_items_never_ranked_and_memory_scorer():
    pop = torch.tensor([0.5, 0.4, 0.3, 0.2])
    boost = CSR(pairs([(0, 3)]), 1)
    mask = CSR(pairs([(0, 0)]), 1)
    [(uc, v, i)] = list(rank_top_k(MemoryScorer(pop, boost), np.array([0]), 3, mask, 4, 1))
    assert i.tolist() == [[3, 1, 2]]  # boosted aux item first, masked item 0 absent
    assert torch.isfinite(v).all()


def test_factor_scorer_raw_is_logit():
    U, I = torch.randn(2, 4), torch.randn(3, 4)
    sc = FactorScorer([(1.0, (U, I))], raw=True)
    sc.set_users(torch.tensor([0]))
    torch.testing.assert_close(sc.scores(1, 3), U[:1] @ I[1:3].T)


def test_peak_memory_within_budget_on_a_million_items():
    """Peak RSS growth of an MBA-scorer evaluation over 1,000,000 items (fresh process) stays
    within eval.memory_mb plus 32 MB (top-K buffers, the product's packing, CSR cells)."""
    from mba_dist.bench.eval import eval_memory

    r = eval_memory(num_items=1_000_000, num_users=1024, memory_mb=64)
    assert r["chunks"][1] < r["num_items"]  # several item chunks: the budget binds
    assert r["growth_mb"] <= r["memory_mb"] + 32, r
    assert r["growth_mb"] >= r["memory_mb"] * 0.5, r  # the score buffers really were allocated


def test_aux_first_ranks_the_auxiliary_items_first_in_the_models_order():
    """Unbounded logits included: every auxiliary item above every other, each group in the
    model's order; over popularity it is the auxiliary memory's ranking."""
    from mba_dist.eval.scorers import AuxFirst, mf_scorer

    user = torch.tensor([[1.0]])
    item = torch.tensor([[50.0], [-3.0], [2.0], [-80.0], [1.0]])
    aux = CSR(pairs([(0, 1), (0, 3)]), 1)
    sc = AuxFirst(mf_scorer((user, item)), aux)
    sc.set_users(torch.arange(1))
    assert torch.argsort(sc.scores(0, 5)[0], descending=True).tolist() == [1, 3, 0, 2, 4]
    pop = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.05])
    a, b = AuxFirst(MemoryScorer(pop), aux), MemoryScorer(pop, aux)
    for s in (a, b):
        s.set_users(torch.arange(1))
    assert (torch.argsort(a.scores(0, 5)[0], descending=True).tolist()
            == torch.argsort(b.scores(0, 5)[0], descending=True).tolist())


def test_user_fraction_ranks_a_fixed_sample_of_the_users():
    """eval.user_fraction: the metrics of the sampled users alone, the same sample for every
    seed-equal call, about the fraction asked for, another sample under another seed."""
    from mba_dist import config as C
    from mba_dist.eval.ranking import sampled
    from mba_dist.eval.scorers import mf_scorer

    rng = np.random.default_rng(5)
    nu, ni = 400, 60
    f = (torch.randn(nu, 4), torch.randn(ni, 4))
    test = pairs(sorted({(int(u), int(i)) for u, i in zip(rng.integers(0, nu, 900),
                                                           rng.integers(0, ni, 900))}))
    keep = sampled(test.users, 0.3, seed=2)
    assert np.array_equal(keep, sampled(test.users, 0.3, seed=2))
    assert not np.array_equal(keep, sampled(test.users, 0.3, seed=3))
    chosen = np.unique(test.users[keep])
    assert 0.2 < len(chosen) / len(np.unique(test.users)) < 0.4
    got = evaluate(mf_scorer(f), test, None, nu, ni, user_fraction=0.3, seed=2)
    want = evaluate(mf_scorer(f), Pairs(test.users[keep], test.items[keep]), None, nu, ni)
    assert got == want and got["users"] == len(chosen)
    with pytest.raises(C.ConfigError, match="eval.user_fraction"):
        C.load_config(None, ["eval.user_fraction=1.5"])
    with pytest.raises(C.ConfigError, match="eval.user_fraction"):
        C.load_config(None, ["eval.user_fraction=0"])


def test_csr_of_sorted_and_shuffled_pairs_and_of_a_users_range():
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, 50 * 30, 400))
    p = Pairs(keys // 30, keys % 30)
    o = rng.permutation(len(keys))
    a, b = CSR(p, 50), CSR(Pairs(p.users[o], p.items[o]), 50)
    assert a.indices is p.items  # sorted pairs are used as they are
    for u in range(50):
        assert np.array_equal(a.row(u), b.row(u)) and np.array_equal(a.row(u), p.items[p.users == u])
    part = (p.users >= 20) & (p.users < 35)
    c = CSR(Pairs(p.users[part], p.items[part]), 35, first=20)
    users = np.array([34, 20, 27])
    assert [x.tolist() for x in c.cells(users, 5, 25)] == [x.tolist() for x in a.cells(users, 5, 25)]


def test_mba_t_row_is_t_alone_and_only_when_the_score_blends_it():
    """The `mba_t` row ranks by t's own logits (the `mba` row blends t with pre_f); with
    `eval.aux_first` it gets its "+aux_first" row; a score of t alone (beta 1) has no such row."""
    from types import SimpleNamespace

    from mba_dist import config as C
    from mba_dist.eval import baselines

    torch.manual_seed(0)
    nu, ni = 6, 9
    fac = {m: (torch.randn(nu, 4), torch.randn(ni, 4)) for m in ("t", "pre_f", "pre_g")}
    stages = {"pre_f": {"pre_f": fac["pre_f"]}, "pre_g": {"pre_g": fac["pre_g"]},
              "mba": {"t": fac["t"]}}
    aux = Pairs(np.array([0, 1, 1]), np.array([2, 3, 4]))
    data = SimpleNamespace(item_counts=lambda: np.arange(ni), users=None, aux=aux,
                           csr=lambda p: CSR(p, nu))
    cfg = C.load_config("configs/synthetic.yaml", ["eval.aux_first=true", "mba.beta=0.8"])
    rows = baselines.scorers(cfg, data, stages)
    assert {"mba", "mba_t", "mba+aux_first", "mba_t+aux_first"} <= set(rows)
    users = torch.arange(nu)
    for sc in rows.values():
        sc.set_users(users)
    assert torch.allclose(rows["mba_t"].scores(0, ni), fac["t"][0] @ fac["t"][1].T)
    blend, alone = (rows[n].scores(0, ni).argsort() for n in ("mba", "mba_t"))
    assert not torch.equal(blend, alone)  # the blend ranks otherwise: a row of its own
    one = C.load_config("configs/synthetic.yaml", ["mba.beta=1"])
    assert "mba_t" not in baselines.scorers(one, data, stages)
