"""Sparse-row optimizers of the plain-torch backend: exact Adagrad and lazy Adam over the rows a
batch touches, without coalescing the gradient.

`nn.Embedding(sparse=True)` gives each table a gradient of one row per lookup, repeats
included. `torch.optim.Adagrad` / `SparseAdam` coalesce it first (a sort of the ids, and on a
GPU a host sync for the number of distinct rows, per table per step), which was most of the
torch backend's step. Here the repeats are summed by an `index_add_` into a scratch table
instead; every lookup then reads its row's summed gradient, and the new row values are written
back at every repeat of the row. The repeats of a row compute the same values from the same
old ones, so whichever write lands is the right one. Every operation is O(lookups x dim), and
nothing waits for the device.

The updates are those of `torch.optim.Adagrad` (lr_decay 0, weight_decay 0, initial
accumulator 0) and `torch.optim.SparseAdam`, up to float rounding: the order in which repeats
of a row are summed differs. Optimizer state has the same keys as theirs ("sum"; "step",
"exp_avg", "exp_avg_sq"), so `state_dict()` reads like theirs.
"""
from __future__ import annotations

import torch


class _RowOptimizer(torch.optim.Optimizer):
    def __init__(self, params, defaults: dict):
        super().__init__(params, defaults)
        self._scratch: dict[torch.Tensor, torch.Tensor] = {}  # per table, kept all zero

    def _rows(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, the summed gradient of each id's row) of a table's sparse gradient; one entry
        per lookup, repeats included."""
        g = p.grad
        if not g.is_sparse:
            raise ValueError(f"{type(self).__name__} takes sparse row gradients "
                             "(nn.Embedding(sparse=True))")
        ids, values = g._indices()[0], g._values()
        buf = self._scratch.get(p)
        if buf is None:
            buf = self._scratch[p] = torch.zeros_like(p)
        buf.index_add_(0, ids, values)
        summed = buf[ids]
        buf.index_fill_(0, ids, 0.0)
        return ids, summed

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError(f"{type(self).__name__} takes no closure")
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, self.state[p], group, *self._rows(p))

    def _update(self, p, state: dict, group: dict, ids: torch.Tensor, g: torch.Tensor) -> None:
        raise NotImplementedError


class RowAdagrad(_RowOptimizer):
    """w -= lr g / (sqrt(G) + eps), G += g^2, per touched row."""

    def __init__(self, params, lr: float, eps: float = 1e-10):
        super().__init__(params, {"lr": lr, "eps": eps})

    def _update(self, p, state, group, ids, g):
        if not state:
            state["step"] = torch.tensor(0.0)
            state["sum"] = torch.zeros_like(p)
        state["step"] += 1
        acc = state["sum"][ids] + g * g
        state["sum"][ids] = acc
        p[ids] = p[ids] - group["lr"] * g / (acc.sqrt() + group["eps"])


class RowAdam(_RowOptimizer):
    """Lazy Adam: moments and weights of the touched rows move; bias correction by the number
    of steps of the table (torch's SparseAdam)."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    def _update(self, p, state, group, ids, g):
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        b1, b2 = group["betas"]
        m = torch.lerp(state["exp_avg"][ids], g, 1 - b1)
        v = torch.lerp(state["exp_avg_sq"][ids], g * g, 1 - b2)
        state["exp_avg"][ids] = m
        state["exp_avg_sq"][ids] = v
        step_size = group["lr"] * (1 - b2 ** state["step"]) ** 0.5 / (1 - b1 ** state["step"])
        p[ids] = p[ids] - step_size * m / (v.sqrt() + group["eps"])
