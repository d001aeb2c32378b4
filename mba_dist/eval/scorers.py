"""Scorers: what the evaluator ranks by, one user block and item chunk at a time.

`Factors` sources give the user and item rows of one MF model (local tensors, or the torchrec
shards: `tables.stage_tables.ShardedFactors`); a `Scorer` turns them into a [users, items]
score chunk: MF logits, MBA's blend of t and pre_f (paper Eq. 3), or popularity memories.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from mba_dist.data.pairs import CSR


class Factors(Protocol):
    """User and item factors of one MF model. With sharded tables both calls are collective:
    every rank makes them together, `items` with the same arguments, `users` with its own ids."""

    device: torch.device

    def users(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of `ids` [b] -> [b, d] (each rank its own ids)."""

    def items(self, lo: int, hi: int) -> torch.Tensor:
        """Rows lo..hi-1 -> [hi-lo, d]."""


@dataclass
class LocalFactors:
    """Factors held whole by this process (any device)."""

    user: torch.Tensor
    item: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.item.device

    def users(self, ids: torch.Tensor) -> torch.Tensor:
        return self.user[ids.to(self.user.device)]

    def items(self, lo: int, hi: int) -> torch.Tensor:
        return self.item[lo:hi]


def as_factors(f) -> Factors:
    """A (user, item) tensor pair or a `Factors` source."""
    return LocalFactors(*f) if isinstance(f, (tuple, list)) else f


class Scorer(Protocol):
    device: torch.device

    def set_users(self, users: torch.Tensor) -> None:
        """Start a block of this rank's users (each rank its own; collective with sharded
        factors: every rank calls it once per block)."""

    def scores(self, lo: int, hi: int) -> torch.Tensor:
        """Scores of this rank's users against items lo..hi-1; float32 [b, hi-lo], writable."""


@dataclass
class FactorScorer:
    """sum_k w_k * sigma(U_k[u] . I_k[i]), or the raw logit of one model when `raw=True`."""

    parts: list[tuple[float, Factors]]
    raw: bool = False
    _users: list[torch.Tensor] = field(default_factory=list, init=False, repr=False)
    _bufs: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        self.parts = [(w, as_factors(f)) for w, f in self.parts]
        self.device = self.parts[0][1].device

    def set_users(self, users: torch.Tensor) -> None:
        self._users = [f.users(users) for _, f in self.parts]

    def _buffers(self, b: int, n: int) -> list[torch.Tensor]:
        # Score chunks are written into reused flat buffers (a smaller chunk takes a contiguous
        # prefix): a fresh [users, items] tensor per chunk costs as much in page faults as the
        # matrix product itself (d = 32 is write-bound).
        if self._bufs.get("cells", -1) < b * n:  # -1: a first, empty block allocates too
            self._bufs = {}  # release before allocating: the peak stays one set of buffers
            self._bufs = {"cells": b * n,
                          "flat": [torch.empty(b * n, device=self.device) for _ in self.parts[:2]]}
        return [f[:b * n].view(b, n) for f in self._bufs["flat"]]

    def scores(self, lo: int, hi: int) -> torch.Tensor:
        bufs = self._buffers(len(self._users[0]), hi - lo)
        out = None
        for k, ((w, f), U) in enumerate(zip(self.parts, self._users)):
            s = torch.mm(U, f.items(lo, hi).T, out=bufs[min(k, 1)])
            if not self.raw:
                s = torch.sigmoid_(s).mul_(w)
            out = s if out is None else out.add_(s)
        return out


def mba_scorer(t, pre_f, beta: float, blends: Sequence[tuple[float, Any]] = ()) -> FactorScorer:
    """score = beta * sigma(t) + (1 - beta) * sigma(pre_f) (paper Eq. 3); each (w, pre_b) of
    `blends` takes w of pre_f's weight for sigma(pre_b) (`mba.blend_g`, `mba.blend_each`)."""
    parts = [(beta, t)]
    rest = 1.0 - beta - sum(w for w, _ in blends)
    if rest > 1e-9:  # blends summing to 1 - beta leave pre_f out (float rounding)
        parts.append((rest, pre_f))
    parts += [(w, f) for w, f in blends if w > 0.0]
    return FactorScorer(parts)


def mf_scorer(weights) -> FactorScorer:
    return FactorScorer([(1.0, weights)], raw=True)  # sigma is monotone: same ranking


@dataclass
class MemoryScorer:
    """Popularity, lifted by 1 for the user's items in `boost` (the "auxiliary memory" heuristic
    when `boost` is the auxiliary behavior; plain MostPop when it is None)."""

    popularity: torch.Tensor  # [num_items], in [0, 1)
    boost: CSR | None = None
    device: torch.device = torch.device("cpu")

    def set_users(self, users: torch.Tensor) -> None:
        self._users = users.numpy()

    def scores(self, lo: int, hi: int) -> torch.Tensor:
        s = self.popularity[lo:hi].expand(len(self._users), hi - lo).clone()
        if self.boost is not None:
            rows, cols = self.boost.cells(self._users, lo, hi)
            s[rows, cols] += 1.0
        return s


@dataclass
class AuxFirst:
    """The user's auxiliary items first, in `inner`'s order, then every other item in its
    order (`eval.aux_first`). Scores are mapped monotonically into (0, 1) by atan, so that
    +1 on the auxiliary cells puts them above every other item whatever `inner`'s range (MF
    logits are unbounded); with popularity as `inner` this is the auxiliary memory."""

    inner: Scorer
    aux: CSR

    def __post_init__(self):
        self.device = self.inner.device

    def set_users(self, users: torch.Tensor) -> None:
        self.inner.set_users(users)
        self._users = users.numpy()

    def scores(self, lo: int, hi: int) -> torch.Tensor:
        s = torch.atan_(self.inner.scores(lo, hi)).div_(math.pi).add_(0.5)
        rows, cols = self.aux.cells(self._users, lo, hi)
        s[torch.as_tensor(rows, device=s.device), torch.as_tensor(cols, device=s.device)] += 1.0
        return s


def popularity(counts: np.ndarray) -> torch.Tensor:
    """Items' pair counts mapped into [0, 1), in their order."""
    counts = counts.astype(np.float64)
    return torch.from_numpy(counts / (counts.max(initial=0.0) + 1.0)).float()
