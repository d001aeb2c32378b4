"""Torch losses against the float64 numpy oracle, extreme logits included."""
import numpy as np
import pytest
import torch

from mba_dist.mba.losses import (Logits, aux_pair_weights, bernoulli_kl, bpr_loss, l2, mba_loss,
                                 neg_term, pos_term)
from mba_dist.mba.roles import Kind, Phase, phase_of_step
from tests import oracle

RTOL, ATOL = 1e-6, 1e-9
FIELDS = ("t", "pre_f", "pre_g", "h_f", "h_g")


def _logits(rng, n, scale):
    return {f: rng.uniform(-scale, scale, n) for f in FIELDS}


def _torch(P, N, dtype=torch.float64, grad=False):
    """The step's stacked `Logits` from per-field logits at the positive (P) and negative (N)
    item, and the leaf tensors {side: {field: [B]}} (gradients land there)."""
    leaves = {side: {f: torch.tensor(d[f], dtype=dtype, requires_grad=grad and f in ("t", "h_f", "h_g"))
                     for f in FIELDS} for side, d in (("pos", P), ("neg", N))}

    def block(*fields):  # [B, len(fields), 2]
        return torch.stack([torch.stack([leaves["pos"][f], leaves["neg"][f]], -1) for f in fields], 1)
    return Logits(block("t"), block("pre_f", "pre_g"), block("h_f", "h_g")), leaves


@pytest.mark.parametrize("scale", [3.0, 30.0])
def test_kl_matches_oracle(scale):
    rng = np.random.default_rng(1)
    p, t = rng.uniform(-scale, scale, 500), rng.uniform(-scale, scale, 500)
    got = bernoulli_kl(torch.tensor(p), torch.tensor(t)).numpy()
    np.testing.assert_allclose(got, oracle.kl(p, t), rtol=RTOL, atol=ATOL)


def test_kl_extremes_exact_points():
    x = np.array([-30.0, -10.0, 0.0, 10.0, 30.0])
    got = bernoulli_kl(torch.tensor(x), torch.tensor(x[::-1].copy())).numpy()
    np.testing.assert_allclose(got, oracle.kl(x, x[::-1]), rtol=RTOL, atol=ATOL)
    # KL of a distribution with itself is ~0 (up to the lg epsilon), never negative-large.
    same = bernoulli_kl(torch.tensor(x), torch.tensor(x)).numpy()
    assert np.all(np.abs(same) < 1e-4)


@pytest.mark.parametrize("phase", ["DN", "DP"])
@pytest.mark.parametrize("c", [1.0, 100.0, 1000.0])
def test_pos_neg_terms(phase, c):
    rng = np.random.default_rng(2)
    t, h = rng.uniform(-30, 30, 400), rng.uniform(-30, 30, 400)
    ph = Phase(phase)
    np.testing.assert_allclose(pos_term(ph, torch.tensor(t), torch.tensor(h), c).numpy(),
                               oracle.pos(phase, t, h, c), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(neg_term(ph, torch.tensor(t), torch.tensor(h), c).numpy(),
                               oracle.neg(phase, t, h, c), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", ["B", "A"])
@pytest.mark.parametrize("phase", ["DN", "DP"])
@pytest.mark.parametrize("scale,alpha,c1,c2", [(3.0, 10.0, 100.0, 100.0), (30.0, 1.0, 1000.0, 1.0),
                                               (30.0, 1000.0, 1.0, 1000.0),
                                               (3.0, (0.0, 100.0), 10.0, 10.0),
                                               (30.0, (1000.0, 1.0), 1000.0, 1.0)])
def test_mba_batch_loss_matches_oracle_with_finite_grads(kind, phase, scale, alpha, c1, c2):
    rng = np.random.default_rng(3)
    P, N = _logits(rng, 256, scale), _logits(rng, 256, scale)
    for dtype in (torch.float64, torch.float32):
        lg, leaves = _torch(P, N, dtype, grad=True)
        loss = mba_loss(Kind.B if kind == "B" else Kind.A, Phase(phase), lg, alpha, c1, c2)
        # float32 inputs are rounded before the float64 maths: compare with the oracle on them.
        Pr, Nr = ({f: v.detach().double().numpy() for f, v in leaves[s].items()} for s in ("pos", "neg"))
        want = oracle.mba_batch(kind, phase, Pr, Nr, alpha, c1, c2)
        np.testing.assert_allclose(float(loss.detach()), want, rtol=RTOL, atol=ATOL)
        loss.backward()
        for side in leaves.values():
            for f in ("t", "h_f", "h_g"):
                g = side[f].grad
                assert g is not None and torch.isfinite(g).all()


@pytest.mark.parametrize("kind", ["B", "A"])
@pytest.mark.parametrize("phase", ["DN", "DP"])
def test_mba_loss_gradient_matches_finite_difference(kind, phase):
    """Every trained logit (t, h_f, h_g at both items) against central differences of the
    oracle: the stacked terms must reach the right model and side."""
    rng = np.random.default_rng(4)
    P, N = _logits(rng, 8, 4.0), _logits(rng, 8, 4.0)
    lg, leaves = _torch(P, N, grad=True)
    mba_loss(Kind.B if kind == "B" else Kind.A, Phase(phase), lg, 10.0, 100.0, 100.0).backward()
    eps = 1e-6
    for side, d in (("pos", P), ("neg", N)):
        for f in ("t", "h_f", "h_g"):
            for i in range(3):
                up = {k: v.copy() for k, v in d.items()}
                dn = {k: v.copy() for k, v in d.items()}
                up[f][i] += eps
                dn[f][i] -= eps
                args = [(up, N), (dn, N)] if side == "pos" else [(P, up), (P, dn)]
                fd = (oracle.mba_batch(kind, phase, *args[0], 10, 100, 100)
                      - oracle.mba_batch(kind, phase, *args[1], 10, 100, 100)) / (2 * eps)
                got = float(leaves[side][f].grad[i])
                assert abs(got - fd) < 1e-5 * max(1.0, abs(fd)), (side, f, i, got, fd)


def test_kind_a_treats_clicked_item_as_negative_for_f():
    """In a kind-A batch the positive item enters f's terms only through NEG_f."""
    rng = np.random.default_rng(5)
    P, N = _logits(rng, 16, 2.0), _logits(rng, 16, 2.0)
    lg, _ = _torch(P, N)
    a = float(mba_loss(Kind.A, Phase.DN, lg, 1.0, 10.0, 10.0))
    b = float(mba_loss(Kind.B, Phase.DN, lg, 1.0, 10.0, 10.0))
    t, hf = P["t"], P["h_f"]
    diff = np.mean(oracle.pos("DN", t, hf, 10.0)) - np.mean(oracle.neg("DN", t, hf, 10.0))
    np.testing.assert_allclose(a - b, diff, rtol=1e-9)


def test_bpr_and_l2():
    rng = np.random.default_rng(6)
    p, n = rng.normal(0, 10, 100), rng.normal(0, 10, 100)
    np.testing.assert_allclose(float(bpr_loss(torch.tensor(p), torch.tensor(n))), oracle.bpr(p, n),
                               rtol=RTOL)
    w = [torch.ones(3, 2), 2 * torch.ones(1, 2)]
    assert float(l2(w, num_users=4)) == pytest.approx(0.5 * (6 + 8) / 4)
    x = torch.tensor(rng.normal(0, 1, (5, 3)), requires_grad=True)
    l2([x, x[:2]], num_users=7).backward()  # d/dx 0.5 |x|^2 / U = x / U, rows 0-1 counted twice
    want = x.detach() / 7
    want[:2] *= 2
    torch.testing.assert_close(x.grad, want)


def test_phase_schedule_starts_with_dp_and_alternates():
    assert [phase_of_step(s) for s in range(4)] == [Phase.DP, Phase.DN, Phase.DP, Phase.DN]


def test_equal_kl_weights_are_the_one_weight_bit_for_bit():
    """mba.alpha_f / alpha_g left unset (or equal) take the single-weight path unchanged."""
    from mba_dist import config as C

    assert C.Config().mba.kl_weights() == 10.0
    assert C.load_config(None, ["mba.alpha_f=3", "mba.alpha_g=3"]).mba.kl_weights() == 3.0
    assert C.load_config(None, ["mba.alpha_g=1"]).mba.kl_weights() == (10.0, 1.0)
    rng = np.random.default_rng(5)
    lg, _ = _torch(_logits(rng, 64, 5.0), _logits(rng, 64, 5.0))
    one = mba_loss(Kind.B, Phase.DN, lg, 7.0, 10.0, 10.0)
    assert float(one) == float(mba_loss(Kind.B, Phase.DN, lg, 7.0, 10.0, 10.0))
    np.testing.assert_allclose(float(mba_loss(Kind.B, Phase.DN, lg, (7.0, 7.0), 10.0, 10.0)),
                               float(one), rtol=1e-12)


def _k_logits(rng, k, n, scale, grad=False):
    """Logits of t and of 1 + k pre / h models at both sides, as numpy and as the step's
    `Logits` ([B, 1, 2], [B, 1+k, 2], [B, 1+k, 2])."""
    P = {"t": rng.uniform(-scale, scale, n), "pre": [rng.uniform(-scale, scale, n) for _ in range(k + 1)],
         "h": [rng.uniform(-scale, scale, n) for _ in range(k + 1)]}
    N = {"t": rng.uniform(-scale, scale, n), "pre": [rng.uniform(-scale, scale, n) for _ in range(k + 1)],
         "h": [rng.uniform(-scale, scale, n) for _ in range(k + 1)]}

    def block(key):
        if key == "t":
            return torch.tensor(np.stack([P["t"], N["t"]], -1)[:, None, :], requires_grad=grad)
        return torch.tensor(np.stack([np.stack([P[key][j], N[key][j]], -1)
                                      for j in range(k + 1)], 1), requires_grad=grad and key == "h")
    return P, N, Logits(block("t"), block("pre"), block("h"))


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("phase", ["DN", "DP"])
@pytest.mark.parametrize("scale,c1,c2", [(3.0, 100.0, 100.0), (30.0, 1000.0, 1.0)])
def test_the_loss_of_k_auxiliary_behaviors_matches_its_oracle(k, phase, scale, c1, c2):
    """Per-pair positives over 1 + k models (DESIGN §11), one KL weight per model, at 1e-6,
    with finite gradients."""
    rng = np.random.default_rng(10 + k)
    P, N, lg = _k_logits(rng, k, 300, scale, grad=True)
    positive = rng.random((k + 1, 300)) < 0.5
    alphas = tuple(float(a) for a in rng.choice([0.0, 1.0, 10.0, 1000.0], k + 1))
    loss = mba_loss(Kind.A, Phase(phase), lg, alphas, c1, c2, torch.tensor(positive))
    want = oracle.mba_batch_k(phase, P, N, positive, alphas, c1, c2)
    np.testing.assert_allclose(float(loss.detach()), want, rtol=RTOL, atol=ATOL)
    loss.backward()
    assert torch.isfinite(lg.t.grad).all() and torch.isfinite(lg.h.grad).all()


@pytest.mark.parametrize("kind", [Kind.B, Kind.A])
def test_k1_masks_per_pair_are_the_kinds_of_today(kind):
    """k = 1 with the per-pair mask of a kind gives the kind's loss."""
    rng = np.random.default_rng(20)
    _, _, lg = _k_logits(rng, 1, 128, 5.0)
    positive = torch.tensor([[kind is Kind.B] * 128, [True] * 128])
    for phase in (Phase.DN, Phase.DP):
        np.testing.assert_allclose(float(mba_loss(kind, phase, lg, 10.0, 100.0, 1.0, positive)),
                                   float(mba_loss(kind, phase, lg, 10.0, 100.0, 1.0)), rtol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("phase", ["DN", "DP"])
def test_weighted_auxiliary_pairs_match_the_oracle(k, phase):
    """mba.aux_weight_each: a kind-A triple's terms times the largest weight of the behaviors
    it was seen in, each behavior model's likelihood terms times its weight, at 1e-6 against the
    oracle; a triple of weight 0 gets no gradient."""
    rng = np.random.default_rng(30 + k)
    n = 200
    P, N, lg = _k_logits(rng, k, n, 5.0, grad=True)
    seen = rng.random((k, n)) < 0.5
    seen[rng.integers(0, k, n), np.arange(n)] = True  # an auxiliary-only pair is seen somewhere
    weights = tuple(float(w) for w in rng.choice([0.0, 0.25, 1.0], k))
    w = aux_pair_weights(weights, torch.tensor(seen))
    np.testing.assert_array_equal(w.numpy(), (seen * np.array(weights)[:, None]).max(0))
    positive = np.concatenate([np.zeros((1, n), bool), seen])
    like_w = (1.0, *weights)
    loss = mba_loss(Kind.A, Phase(phase), lg, 10.0, 100.0, 1.0, torch.tensor(positive), w, like_w)
    want = oracle.mba_batch_k(phase, P, N, positive, (10.0,) * (k + 1), 100.0, 1.0, w.numpy(),
                              like_w)
    np.testing.assert_allclose(float(loss.detach()), want, rtol=RTOL, atol=ATOL)
    loss.backward()
    zero = w.numpy() == 0
    assert torch.isfinite(lg.t.grad).all()
    assert (lg.t.grad[torch.tensor(zero)] == 0).all() and (lg.h.grad[torch.tensor(zero)] == 0).all()
    assert zero.any() or min(weights) > 0


def test_unit_weights_are_the_paper_loss_and_k1_weighs_the_batch():
    rng = np.random.default_rng(40)
    _, _, lg = _k_logits(rng, 2, 128, 5.0)
    positive = torch.tensor(rng.random((3, 128)) < 0.5)
    positive[0] = False
    positive[2] |= ~positive[1]  # an auxiliary-only pair is seen in one behavior at least
    plain = mba_loss(Kind.A, Phase.DP, lg, 10.0, 100.0, 1.0, positive)
    ones = aux_pair_weights((1.0, 1.0), positive[1:])
    np.testing.assert_allclose(float(mba_loss(Kind.A, Phase.DP, lg, 10.0, 100.0, 1.0, positive,
                                              ones, (1.0, 1.0, 1.0))), float(plain), rtol=1e-12)
    _, _, lg1 = _k_logits(rng, 1, 128, 5.0)
    assert aux_pair_weights((0.5,), None) == 0.5  # k = 1: every kind-A pair is seen in g
    np.testing.assert_allclose(float(mba_loss(Kind.A, Phase.DN, lg1, 10.0, 100.0, 1.0, weight=0.5)),
                               0.5 * float(mba_loss(Kind.A, Phase.DN, lg1, 10.0, 100.0, 1.0)),
                               rtol=1e-12)


def test_a_behavior_of_weight_0_leaves_the_loss_of_the_others():
    """aux_weight_each [0, 1] on click + cart: a target batch's loss is the cart-only loss of
    k = 1 (with no KL weight on the click model), the click model's h logits get no gradient."""
    rng = np.random.default_rng(50)
    _, _, lg = _k_logits(rng, 2, 96, 5.0, grad=True)
    keep = [0, 2]  # f, cart
    lg1 = Logits(lg.t, lg.pre[:, keep], lg.h[:, keep])
    for phase in (Phase.DN, Phase.DP):
        two = mba_loss(Kind.B, phase, lg, (1.0, 0.0, 1.0), 10.0, 1.0, like_weights=(1.0, 0.0, 1.0))
        one = mba_loss(Kind.B, phase, lg1, 1.0, 10.0, 1.0)
        np.testing.assert_allclose(float(two.detach()), float(one.detach()), rtol=1e-12)
        two.backward()
        assert (lg.h.grad[:, 1] == 0).all() and (lg.h.grad[:, keep] != 0).any()
        lg.h.grad = None
