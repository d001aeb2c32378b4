"""Float64 numpy oracles of the authors' formulas (DESIGN §1), written independently of the
torch code: every term spelled out as in the paper / the authors' loss functions."""
from __future__ import annotations

import numpy as np


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def lg(x):
    return np.log(x + 1e-5)


def kl(p_logit, t_logit):
    p, t = sig(p_logit), sig(t_logit)
    return p * lg(p) - p * lg(t) + (1 - p) * lg(1 - p) - (1 - p) * lg(1 - t)


def pos(phase, t_logit, h_logit, c1):
    t, h = sig(t_logit), sig(h_logit)
    return lg(h) * t - c1 * (1 - t) if phase == "DN" else lg(h) * (1 - t)


def neg(phase, t_logit, h_logit, c2):
    t, h = sig(t_logit), sig(h_logit)
    return lg(1 - h) * t if phase == "DN" else lg(1 - h) * (1 - t) - c2 * t


def mba_batch(kind, phase, P, N, alpha, c1, c2):
    """P, N: dicts of logits t, pre_f, pre_g, h_f, h_g at the positive and negative item;
    alpha: one KL weight or (alpha_f, alpha_g)."""
    m = np.mean
    alpha_f, alpha_g = alpha if isinstance(alpha, tuple) else (alpha, alpha)
    kl_terms = (alpha_g * (m(kl(P["pre_g"], P["t"])) + m(kl(N["pre_g"], N["t"])))
                + alpha_f * (m(kl(P["pre_f"], P["t"])) + m(kl(N["pre_f"], N["t"]))))
    if kind == "B":
        like = (m(pos(phase, P["t"], P["h_f"], c1)) + m(neg(phase, N["t"], N["h_f"], c2))
                + m(pos(phase, P["t"], P["h_g"], c1)) + m(neg(phase, N["t"], N["h_g"], c2)))
    else:
        like = (m(pos(phase, P["t"], P["h_g"], c1)) + m(neg(phase, N["t"], N["h_g"], c2))
                + m(neg(phase, P["t"], P["h_f"], c2)) + m(neg(phase, N["t"], N["h_f"], c2)))
    return kl_terms - like


def mba_batch_k(phase, P, N, positive, alphas, c1, c2, weight=None, like_weights=None):
    """The loss of k auxiliary behaviors (DESIGN §11) term by term. P, N: {"t": [B], "pre": [1+k
    arrays], "h": [1+k arrays]} at the observed and the sampled item; positive [1+k, B] bool:
    for which models each observed item is a positive; alphas: one KL weight per model;
    weight [B]: each triple's terms times its weight (None: 1), still a mean over B;
    like_weights: one weight per model on its likelihood terms (None: 1)."""
    w = np.ones(len(P["t"])) if weight is None else np.asarray(weight, dtype=np.float64)

    def m(x):
        return np.mean(w * x)
    total = 0.0
    for j, a in enumerate(alphas):
        total += a * (m(kl(P["pre"][j], P["t"])) + m(kl(N["pre"][j], N["t"])))
        seen = np.where(positive[j], pos(phase, P["t"], P["h"][j], c1),
                        neg(phase, P["t"], P["h"][j], c2))
        lw = 1.0 if like_weights is None else like_weights[j]
        total -= lw * (m(seen) + m(neg(phase, N["t"], N["h"][j], c2)))
    return total


def bpr(pos_logit, neg_logit):
    return np.mean(np.log1p(np.exp(neg_logit - pos_logit)))


def ranking_metrics(scores, train, test, ks):
    """Brute force: dense scores [U, I], train/test as lists of item sets per user."""
    out = {f"{m}@{k}": [] for k in ks for m in ("recall", "ndcg")}
    for u in range(scores.shape[0]):
        if not test[u]:
            continue
        s = scores[u].astype(np.float64).copy()
        s[list(train[u])] = -np.inf
        order = np.argsort(-s, kind="stable")
        for k in ks:
            top = order[:k]
            hits = np.array([i in test[u] for i in top], dtype=float)
            out[f"recall@{k}"].append(hits.sum() / len(test[u]))
            dcg = (hits / np.log2(np.arange(2, k + 2))).sum()
            idcg = (1 / np.log2(np.arange(2, min(k, len(test[u])) + 2))).sum()
            out[f"ndcg@{k}"].append(dcg / idcg)
    return {k: float(np.mean(v)) for k, v in out.items()}
