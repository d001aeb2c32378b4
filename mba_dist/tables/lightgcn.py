"""LightGCN (He et al., SIGIR 2020) as a table group: MF tables propagated over a graph.

A model's tables are LightGCN's layer-0 embeddings E0; its scoring embeddings are the mean of
the layers E0 .. EL, where each layer spreads the previous one over the normalised bipartite
graph of the target train pairs, R~ = D_u^-1/2 R D_i^-1/2:

    U_{l+1} = R~ I_l        I_{l+1} = R~^T U_l        U, I = mean_l U_l, mean_l I_l

A step propagates the whole graph once (every row of the batch depends on its L-hop
neighbourhood), looks the batch up in the result and back-propagates through the same sparse
products, so every row of E0 with an edge gets a gradient: the tables train with whole-table
Adam (`config.LIGHTGCN_MODES`). The step's cost is the graph's, not the batch's (DESIGN §12).

What leaves the group is MF-shaped: `factors` and `stage_tables` hold the propagated (mean)
embeddings, which score as MF does, so the evaluator, the baselines, `evaluate`, `recommend`
and stage checkpoints need nothing of the graph. The resumable state (`shard_state`,
`snapshot`) holds E0 and Adam's moments, from which training goes on.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mba_dist.config import OptimConfig
from mba_dist.eval.scorers import LocalFactors
from mba_dist.tables.base import Rows, TableGroup
from mba_dist.tables.stage_tables import StageTables
from mba_dist.tables.torch_tables import TorchTableGroup


class Graph:
    """R~ (users x items) and its transpose in CSR form (`_Csr`) on `device`, from the target
    train pairs (a `data.pairs.Pairs`: `users`, `items` arrays, no repeats)."""

    def __init__(self, pairs, num_users: int, num_items: int, device: torch.device):
        u = np.asarray(pairs.users, dtype=np.int64)
        i = np.asarray(pairs.items, dtype=np.int64)
        du = np.bincount(u, minlength=num_users).astype(np.float64)
        di = np.bincount(i, minlength=num_items).astype(np.float64)
        w = (1.0 / np.sqrt(du[u] * di[i])).astype(np.float32)  # every pair has degree >= 1
        self.device = device
        self.r = _Csr.of(u, i, w, num_users, device)
        self.rt = _Csr.of(i, u, w, num_items, device)

    def propagate(self, user: torch.Tensor, item: torch.Tensor,
                  layers: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean of layers 0..`layers` of users and items (differentiable in `user`, `item`)."""
        su, si, cu, ci = user, item, user, item
        for _ in range(layers):
            cu, ci = _SpMM.apply(self.r, self.rt, ci), _SpMM.apply(self.rt, self.r, cu)
            su, si = su + cu, si + ci
        return su / (layers + 1), si / (layers + 1)


@dataclass(frozen=True)
class _Csr:
    """A sparse matrix by rows: row r's entries are cols[offsets[r]:offsets[r+1]] with their
    values. Its product with a dense x is an `embedding_bag` (weighted sums of x's rows, one
    bag per row): on CPU 2-3x faster here than torch's CSR matmul, which copies its
    operands on every call (DESIGN §12)."""

    offsets: torch.Tensor  # [n]: each row's first entry
    cols: torch.Tensor
    values: torch.Tensor

    @classmethod
    def of(cls, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n: int,
           device: torch.device) -> "_Csr":
        order = np.lexsort((cols, rows))
        offsets = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))[:-1]])
        return cls(*(torch.from_numpy(np.ascontiguousarray(a)).to(device)
                     for a in (offsets, cols[order], values[order])))

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        return F.embedding_bag(self.cols, x, self.offsets, mode="sum",
                               per_sample_weights=self.values)


class _SpMM(torch.autograd.Function):
    """a @ x with the gradient a^T @ g, a^T given as its own `_Csr`."""

    @staticmethod
    def forward(ctx, a: _Csr, at: _Csr, x: torch.Tensor) -> torch.Tensor:
        ctx.at = at
        return a @ x

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return None, None, ctx.at @ g.contiguous()


class LightGCNGroup(TableGroup):
    """One model's layer-0 tables (a dense `TorchTableGroup` with Adam) and the graph they are
    propagated over."""

    def __init__(self, model: str, graph: Graph, layers: int, num_users: int, num_items: int,
                 dim: int, optim: OptimConfig, device: torch.device):
        super().__init__()
        if optim is None:  # a finished LightGCN is kept as MF-shaped tables (module docstring)
            raise ValueError(f"{model}: a LightGCN group is trained; build a frozen one as MF")
        self.inner = TorchTableGroup([model], num_users, num_items, dim,
                                     dataclasses.replace(optim, mode="dense_adam"), device)
        self.models = self.inner.models
        self.num_users, self.num_items, self.dim = num_users, num_items, dim
        self.graph, self.layers = graph, layers

    def _propagated(self, tables: dict) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.models[0]
        return self.graph.propagate(tables[f"{m}_user"], tables[f"{m}_item"], self.layers)

    def lookup(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> Rows:
        base = {k: t.weight for k, t in self.inner.tables.items()}
        user, item = self._propagated(base)
        items = torch.stack([pos, neg], 1)
        packed = torch.cat([user[users].unsqueeze(1), item[items]], 1)
        # the L2 term regularises the layer-0 rows of the batch, as LightGCN does
        return Rows(packed, ego=self.inner.lookup(users, pos, neg).packed)

    def factors(self, model: str) -> LocalFactors:
        with torch.no_grad():
            return LocalFactors(*self._propagated(self.inner.live_tables()))

    def stage_tables(self, snap: dict | None = None) -> StageTables:
        m = self.models[0]
        tables = self.inner.live_tables() if snap is None else {  # a snapshot is a CPU copy
            k: v.to(self.graph.device) for k, v in snap.items()}
        with torch.no_grad():
            user, item = self._propagated(tables)
        return StageTables({f"{m}_user": user.cpu(), f"{m}_item": item.cpu()}, self.num_users,
                           self.num_items, self.dim)

    # everything else is the layer-0 tables' (the trained parameters and Adam's state)
    def weights(self, model: str):
        return self.inner.weights(model)

    def live_tables(self) -> dict:
        return self.inner.live_tables()

    def write_rows(self, key: str, lo: int, rows: torch.Tensor) -> None:
        self.inner.write_rows(key, lo, rows)

    def finite(self, model: str) -> bool:
        return self.inner.finite(model)

    def snapshot(self) -> dict:
        return self.inner.snapshot()

    def full_tables(self, model: str) -> list[torch.Tensor]:
        return self.inner.full_tables(model)

    def step(self) -> None:
        self.inner.step()

    def optimizer_state(self) -> dict:
        return self.inner.optimizer_state()

    def shard_state(self, best=None) -> tuple[dict, dict]:
        return self.inner.shard_state(best)

    def restore(self, load, sizes: dict, extra: dict):
        return self.inner.restore(load, sizes, extra)

