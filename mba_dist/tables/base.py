"""The table-group interface, the packed rows a lookup returns and their logits.

Every model is matrix factorisation: logit(u, i) = <user_emb[u], item_emb[i]>, dim 32. A
`TableGroup` holds the user and item tables of the models that move together (`mba.roles`).

A batch of B triples (user, positive, negative) is looked up once per group: `lookup` returns
`Rows`, one [B, 3k, d] tensor of the k models' user rows and their positive and negative item
rows, and `Rows.logits()` scores all k models and both sides in one product, with a backward
that writes the gradient of the whole tensor at once. Each user row is read once per triple, and
nothing downstream slices or splits the wide lookup output (a slice's backward writes a zeroed
copy of the whole output, a split's a `cat`: each was a quarter of the torchrec step). Two
backends implement it: `torch_tables` (plain `nn.Embedding`) and `torchrec_tables`
(EmbeddingBagCollection, sharded by DMP); `build.build_group` picks one.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mba_dist.mba.roles import ENTITIES
from mba_dist.tables.stage_tables import StageTables


class Rows(NamedTuple):
    """One group's rows for a batch of B (user, positive, negative) triples, in one tensor
    [B, 3k, d]: the k models' user rows, then each model's positive and negative item rows
    (model j: user at j, positive at k + 2j, negative at k + 2j + 1). `ego`: where the rows
    are computed from the tables (LightGCN's propagated rows), the tables' own rows of the
    batch, in the same layout: what the L2 term regularises (None: `packed` itself)."""

    packed: torch.Tensor
    ego: torch.Tensor | None = None

    @property
    def regularised(self) -> torch.Tensor:
        return self.packed if self.ego is None else self.ego

    @property
    def users(self) -> torch.Tensor:  # [B, k, d] view
        return self.packed[:, :self.packed.shape[1] // 3]

    @property
    def items(self) -> torch.Tensor:  # [B, k, 2, d] view: positive at [..., 0, :]
        b, n, d = self.packed.shape
        return self.packed[:, n // 3:].view(b, n // 3, 2, d)

    def logits(self) -> torch.Tensor:
        """MF logits <user, item> of every model and side: [B, k, 2]."""
        return _PackedLogits.apply(self.packed)


class _PackedLogits(torch.autograd.Function):
    """`Rows.logits` with a backward that writes the user and item gradients straight into one
    tensor shaped like `packed`. Autograd through the user and item views would assemble it
    with a `cat` (or zero-filled copies per slice): 25% of a step at batch 32,768 on
    2M x 500k tables."""

    @staticmethod
    def forward(ctx, packed: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(packed)
        r = Rows(packed)
        return torch.linalg.vecdot(r.users.unsqueeze(2), r.items)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        (packed,) = ctx.saved_tensors
        grad = torch.empty_like(packed)
        fill = logit_grad_broadcast if packed.device.type == "cuda" else logit_grad_per_model
        fill(Rows(packed), g.to(packed.dtype), Rows(grad))
        return grad


def logit_grad_broadcast(r: Rows, g: torch.Tensor, grad: Rows) -> None:
    """The gradient of `Rows.logits` given g = d loss / d logits [B, k, 2], written into `grad`,
    in one broadcast product per side: the fewest kernels, for GPUs, where steps are
    launch-bound."""
    g = g.unsqueeze(-1)  # [B, k, 2, 1]
    torch.mul(r.users.unsqueeze(2), g, out=grad.items)  # d/d item = g * user
    side = r.items * g  # d/d user = g_pos * positive + g_neg * negative
    torch.add(side[:, :, 0], side[:, :, 1], out=grad.users)


def logit_grad_per_model(r: Rows, g: torch.Tensor, grad: Rows) -> None:
    """The same gradient one model and side at a time, each op scaling [B, d] rows by a [B, 1]
    column: on CPU, the broadcast over [B, k, 2, d] restarts its vectorised inner loop at every
    32-float row and ran 2x slower (DESIGN §9)."""
    g = g.permute(1, 2, 0).contiguous().unsqueeze(-1)  # [k, 2, B, 1]
    for j in range(g.shape[0]):
        user, pos, neg = r.users[:, j], r.items[:, j, 0], r.items[:, j, 1]
        torch.mul(user, g[j, 0], out=grad.items[:, j, 0])
        torch.mul(user, g[j, 1], out=grad.items[:, j, 1])
        torch.mul(pos, g[j, 0], out=grad.users[:, j])
        grad.users[:, j].addcmul_(neg, g[j, 1])


class TableGroup(nn.Module):
    """User and item tables of several models, looked up together (`lookup`)."""

    models: tuple[str, ...]

    def lookup(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> Rows:
        """The group's rows for the triples (users[b], pos[b], neg[b]); ids int64 [B]."""
        raise NotImplementedError

    num_users: int
    num_items: int
    dim: int

    def live_tables(self) -> dict:
        """{MODEL_user|MODEL_item: this rank's part of the live table} (a whole tensor, or a
        `ShardedTensor` of the rank's shards); the tensors are the live ones."""
        raise NotImplementedError

    def weights(self, model: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Full (user, item) weight matrices of one model, as CPU float32 copies (collective on
        sharded backends; tests and benchmarks: training reads `factors`)."""
        raise NotImplementedError

    def write_rows(self, key: str, lo: int, rows: torch.Tensor) -> None:
        """Set rows lo .. lo + len(rows) - 1 of table `key` (each rank the part it holds)."""
        raise NotImplementedError

    def load(self, model: str, user: torch.Tensor, item: torch.Tensor) -> None:
        """Set one model's whole tables (each rank the part it holds)."""
        for e, full in zip(ENTITIES, (user, item)):
            self.write_rows(f"{model}_{e}", 0, full)

    def factors(self, model: str):
        """An `eval.scorers.Factors` source over the live tables of one model (no full copy)."""
        raise NotImplementedError

    def finite(self, model: str) -> bool:
        """Whether every weight of a model is finite (collective on sharded backends)."""
        raise NotImplementedError

    def snapshot(self):
        """This rank's copy of its part of every table of the group (the best epoch, kept by
        the fit loop without whole tables)."""
        raise NotImplementedError

    def stage_tables(self, snap=None) -> StageTables:
        """A `snapshot()` (default: the live tables, of a frozen group) as `StageTables`: each
        rank keeps its own part, with the live tables' layout."""
        raise NotImplementedError

    def full_tables(self, model: str) -> list[torch.Tensor]:
        """The autograd-visible whole tables of a model (dense optimizer mode only)."""
        raise NotImplementedError(f"{type(self).__name__} has no dense whole-table mode")

    def step(self) -> None:
        """Apply the optimizer after backward (a no-op where it is fused into backward)."""

    def optimizer_state(self) -> dict:
        return {}

    def shard_state(self, best=None) -> tuple[dict, dict]:
        """This rank's part of the group's resumable state, for `checkpoint.save_resume`: (flat
        {name: tensor or ShardedTensor}: tables/TABLE, optim/..., and best/TABLE from a
        `snapshot()` `best`; plain values kept beside the tensors). The tensors are the live
        ones: save before the next step."""
        raise NotImplementedError

    def restore(self, load, sizes: dict, extra: dict):
        """Load `shard_state` output back in place: `load(targets)` fills a flat dict of this
        rank's tensors from the checkpoint (collective), `sizes` {name: DCP tensor metadata} says
        what it holds, `extra` the plain values saved. Returns the best snapshot, if saved."""
        raise NotImplementedError
