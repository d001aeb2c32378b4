r"""Losses of MBA and of BPR pretraining, as plain functions of logits.

Notation (DESIGN §1): sigma = sigmoid, lg(x) = ln(x + 1e-5). For a pair (u, x):
t = sigma(t(u,x)) (target recommender), a = sigma(h1(u,x)), b = sigma(h2(u,x)),
p = sigma(pre(u,x)) (frozen pretrained model of f or g).

    KL(p || t) = p lg p - p lg t + (1-p) lg(1-p) - (1-p) lg(1-t)
    DN step:   POS = lg(a) t - C1 (1-t)          NEG = lg(1-a) t
    DP step:   POS = lg(b) (1-t)                 NEG = lg(1-b) (1-t) - C2 t

Kind-B batch (u, i, j), i bought (and so also clicked/carted):
    alpha [KL(p_g||t)(i) + KL(p_g||t)(j) + KL(p_f||t)(i) + KL(p_f||t)(j)]
      - [POS_f(i) + NEG_f(j) + POS_g(i) + NEG_g(j)]
Kind-A batch (u, c, j), c in the auxiliary behavior only: the same KL terms at c and j, minus
    [POS_g(c) + NEG_g(j) + NEG_f(c) + NEG_f(j)]
Each bracketed term is a batch mean. The L2 term (`l2`) is added by the step (`train.steps`).

All functions compute in float64 (the elementwise ones on logits of any shape, broadcasting;
`mba_loss` on the step's `Logits` blocks): the terms mix lg of values near 0 and 1 with C up to
1000, and a few float64 values per triple cost little next to the embedding lookups.
1 - sigma(x) is computed as sigma(-x), exact where 1 - sigma(x) would round to 0.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from mba_dist.mba.roles import Kind, Phase

LG_EPS = 1e-5


def lg(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x + LG_EPS)


def _probs(logit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = logit.double()
    return torch.sigmoid(x), torch.sigmoid(-x)


def bpr_loss(pos_logit: torch.Tensor, neg_logit: torch.Tensor) -> torch.Tensor:
    """mean softplus(s(u,j) - s(u,i)) = -mean log sigma(s(u,i) - s(u,j))."""
    return F.softplus(neg_logit.double() - pos_logit.double()).mean()


class _SumOfSquares(torch.autograd.Function):
    """||w||^2 accumulated in float64, without a float64 copy of w; backward 2 g w.

    Each row's d squares are summed in float32 (`vecdot`), the rows' sums in float64: within
    1e-9 of an all-float64 sum. The autograd of `w.double().pow(2).sum()` writes three
    full-size temporaries (the copy, the squares, the gradient of the copy), about 13% of an
    MBA step at batch 32k; `vector_norm(w, dtype=float64)` still converts all of w first
    (7 ms for 32k rows of 3 x 32).
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w)
        rows = w.reshape(-1, w.shape[-1])
        return torch.linalg.vecdot(rows, rows).sum(dtype=torch.float64)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (w,) = ctx.saved_tensors
        return w * (2 * grad).to(w.dtype)


def l2(tensors: list[torch.Tensor], num_users: int) -> torch.Tensor:
    """The authors' regulariser 0.5 * sum ||W||^2 / |U| over `tensors`.

    Dense mode passes whole tables (the authors' code: every row decays every step); the
    scalable modes pass the rows a batch reads, so only touched rows get a gradient.
    """
    return 0.5 * sum(_SumOfSquares.apply(w) for w in tensors) / num_users


def _kl(p: torch.Tensor, p1: torch.Tensor, t: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
    return p * lg(p) - p * lg(t) + p1 * lg(p1) - p1 * lg(t1)


def bernoulli_kl(p_logit: torch.Tensor, t_logit: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(Bernoulli(p) || Bernoulli(t)) with the authors' lg (broadcasting)."""
    return _kl(*_probs(p_logit), *_probs(t_logit))


def _likelihood(phase: Phase, t: torch.Tensor, t1: torch.Tensor, h_logit: torch.Tensor,
                is_pos: torch.Tensor, c1: float, c2: float) -> torch.Tensor:
    """POS where `is_pos`, NEG elsewhere, elementwise (broadcasting); t, t1 = sigma(+-t logit).

    sigma(+h) is a (DN) or b (DP) and sigma(-h) is 1 - a or 1 - b, so one sigmoid of the signed
    logit serves both terms."""
    h = torch.sigmoid(torch.where(is_pos, h_logit, -h_logit).double())
    if phase is Phase.DN:
        return lg(h) * t - c1 * t1 * is_pos
    return lg(h) * t1 - c2 * t * ~is_pos


def pos_term(phase: Phase, t_logit: torch.Tensor, h_logit: torch.Tensor, c1: float) -> torch.Tensor:
    """POS of the step: DN lg(a) t - C1 (1-t); DP lg(b) (1-t). h is h1 in DN, h2 in DP."""
    return _likelihood(phase, *_probs(t_logit), h_logit, _true(h_logit), c1, 0.0)


def neg_term(phase: Phase, t_logit: torch.Tensor, h_logit: torch.Tensor, c2: float) -> torch.Tensor:
    """NEG of the step: DN lg(1-a) t; DP lg(1-b) (1-t) - C2 t."""
    return _likelihood(phase, *_probs(t_logit), h_logit, ~_true(h_logit), 0.0, c2)


def _true(like: torch.Tensor) -> torch.Tensor:
    return torch.ones((), dtype=torch.bool, device=like.device)


class Logits(NamedTuple):
    """Logits of every model a step reads, as the table groups' `Rows.logits()` give them;
    the last dimension is the side (positive, negative item)."""

    t: torch.Tensor  # [B, 1, 2]
    pre: torch.Tensor  # [B, 1 + k, 2]: pre_f, pre_g (k > 1: pre_b of each behavior)
    h: torch.Tensor  # [B, 1 + k, 2]: h1_f, h1_g in a DN step, h2_f, h2_g in a DP step


@functools.lru_cache(maxsize=None)
def _pos_mask(kind: Kind, device: torch.device, models: int = 2) -> torch.Tensor:
    """Where a [model (f, g, ...), side (pos, neg)] term is POS (else NEG): the kind-B and
    kind-A brackets of the module docstring (kind A with k > 1 takes the batch's own mask).
    Cached per device: no host-to-device copy per step."""
    f_pos = kind is Kind.B  # kind A: the clicked item is a negative for f
    return torch.tensor([[f_pos, False]] + [[True, False]] * (models - 1), device=device)


def mba_loss(kind: Kind, phase: Phase, lg_: Logits, alpha: float | tuple[float, ...],
             c1: float, c2: float, positive: torch.Tensor | None = None,
             weight: torch.Tensor | float | None = None,
             like_weights: tuple[float, ...] | None = None) -> torch.Tensor:
    """The kind-B / kind-A batch loss of the module docstring (without the L2 term); scalar.
    `alpha`: one KL weight, or one per model of `lg_.pre` ((alpha_f, alpha_g) for k = 1).

    k auxiliary behaviors (DESIGN §11): `lg_.pre` and `lg_.h` hold 1 + k models (f first), and
    `positive` [1 + k, B] says for which models each pair's observed item is a positive (a
    target pair: all; an auxiliary-only pair: the behaviors it was observed in); None: the
    kind's mask of k = 1, broadcast over the batch (`_pos_mask`). `weight` (a variant, DESIGN
    §10): each triple's terms, KL and likelihood, times its weight ([B], or one for the batch);
    still divided by B, so a weight of 0 removes a triple and a weight of 1 is the paper's loss.
    `like_weights` (the same variant): one weight per model on its likelihood terms (f first).

    The 4 KL terms and the 4 likelihood terms are computed as one [model, side, batch] block
    each: a few dozen ops on contiguous rows instead of about 140 on strided [B]-vectors
    (2.6x faster with the backward, DESIGN §9). Each bracketed batch mean is the block's
    sum over the batch / B."""
    b = lg_.t.shape[0]
    # [B, k, 2] -> [k, 2, B] contiguous float64: with the batch innermost every elementwise op
    # and every broadcast (t over the models) runs on long contiguous rows; on the [B, k, 2]
    # layout they ran 5-10x slower (inner dimension 2, broadcast strides of 0)
    t_lg, pre, h = (x.permute(1, 2, 0).to(torch.float64, memory_format=torch.contiguous_format)
                    for x in lg_)
    t, t1 = _probs(t_lg)
    kl = _kl(*_probs(pre), t, t1)
    if positive is None:
        mask = _pos_mask(kind, h.device, h.shape[0])[..., None]
    else:  # the observed item is at side 0; the sampled negative (side 1) is never positive
        mask = torch.stack([positive, torch.zeros_like(positive)], 1)
    like = _likelihood(phase, t, t1, h, mask, c1, c2)
    if like_weights is not None:
        like = like * _weights_on(like_weights, h.device)[:, None, None]
    if weight is not None:  # [B] (or a number) over the innermost batch dimension
        kl, like = kl * weight, like * weight
    kl = (alpha * kl.sum() if not isinstance(alpha, tuple)  # one weight: as it always was
          else (kl.sum(dim=(1, 2)) * kl.new_tensor(alpha)).sum())
    return (kl - like.sum()) / b


@functools.lru_cache(maxsize=None)
def _weights_on(weights: tuple[float, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(weights, dtype=torch.float64, device=device)


def aux_pair_weights(weights: tuple[float, ...], seen_in: torch.Tensor | None
                     ) -> torch.Tensor | float:
    """The weight of each auxiliary-only pair of a kind-A batch (`mba.aux_weight_each`): the
    largest weight of the behaviors it was seen in. `seen_in` bool [k, B]; None (k = 1): the
    one behavior's weight, for the whole batch. Cached per device, as `_pos_mask`."""
    if seen_in is None:
        return weights[0]
    return (seen_in * _weights_on(weights, seen_in.device)[:, None]).amax(0)
