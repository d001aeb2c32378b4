"""One optimizer step of BPR and of MBA, as functions over table groups.

A step looks up its batch in every group it reads, computes the loss (`mba.losses`) plus the
L2 term, runs backward (the torchrec optimizers are fused into it) and the groups' own
optimizer steps. Its parts are `torch.profiler.record_function` ranges ("step.forward",
"step.backward", "step.optimizer"), which a profiler (`mba-dist bench --profile`) reports; the
step takes no timing callbacks.

World size: each of W ranks holds 1/W of the global batch, and sharded tables divide the summed
row gradients by W (torchrec's gradient division, as DDP averages). A batch mean needs no
scaling, but the L2 term is a sum over the batch rows and is scaled by W (`L2.scale`), so a step
equals one on the global batch. Equal local batch sizes assumed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.profiler import record_function

from mba_dist import config as C
from mba_dist.dist.collective import rank_world
from mba_dist.mba.losses import Logits, aux_pair_weights, bpr_loss, l2, mba_loss
from mba_dist.mba.roles import Kind, Model, Phase
from mba_dist.tables.base import Rows, TableGroup


@dataclass(frozen=True)
class L2:
    """The authors' regulariser 0.5 ||W||^2 / |U| of a step, scaled to the world."""

    num_users: int
    dense: bool  # optim.mode dense_adam: whole tables decay every step (authors' code)
    scale: float = 1.0  # the world size (module docstring)

    @classmethod
    def of(cls, optim: C.OptimConfig, num_users: int) -> "L2":
        return cls(num_users, optim.mode == "dense_adam", float(rank_world()[1]))

    def __call__(self, group: TableGroup, model: str, rows: Rows) -> torch.Tensor:
        """The term over `model`'s whole tables (dense mode) or the batch's rows."""
        tensors = group.full_tables(model) if self.dense else [rows.regularised]
        return self.scale * l2(tensors, self.num_users)


def ids_on(device: torch.device, *arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(a).to(device) for a in arrays]


def bpr_step(group: TableGroup, lambda0: float, reg: L2, ids: Sequence[torch.Tensor]) -> float:
    """One BPR step of the group's one model on triples (users, pos, neg); returns the loss."""
    with record_function("step.forward"):
        rows = group.lookup(*ids)
        lg = rows.logits()[:, 0]  # the group's one model: [B, 2]
        loss = bpr_loss(lg[:, 0], lg[:, 1]) + lambda0 * reg(group, group.models[0], rows)
    backward_and_step(loss, (group,))
    return float(loss.detach())


def mba_step(m: C.MBAConfig, reg: L2, kind: Kind, phase: Phase, ids: Sequence[torch.Tensor],
             frozen: TableGroup, t: TableGroup, h: TableGroup,
             seen_in: torch.Tensor | None = None) -> float:
    """One MBA step on a homogeneous batch of `kind`; moves only t and the phase's h group
    (h1 in DN, h2 in DP). Returns the loss. `seen_in` (k > 1 auxiliary behaviors, kind A):
    bool [k, B], the behaviors each pair was observed in (`data.batches.Batch.positive`)."""
    with record_function("step.forward"):
        t_rows = t.lookup(*ids)
        # group order: frozen (pre_f, pre_<b>...), h (h_f, h_<b>...), as `AuxRoles`
        lg = Logits(t_rows.logits(), frozen.lookup(*ids).logits(), h.lookup(*ids).logits())
        k = lg.pre.shape[1] - 1
        positive = (None if seen_in is None  # the observed item is never a target positive
                    else torch.cat([torch.zeros_like(seen_in[:1]), seen_in]))
        w = m.aux_weight_each  # a variant (DESIGN §10): a behavior's pairs and its model's terms
        weight = aux_pair_weights(w, seen_in) if w and kind is Kind.A else None
        loss = (mba_loss(kind, phase, lg, m.kl_weights(k), m.c1, m.c2, positive, weight,
                         (1.0, *w) if w else None)
                + m.lambda_t * reg(t, Model.T.value, t_rows))
    backward_and_step(loss, (t, h))
    return float(loss.detach())


def backward_and_step(loss: torch.Tensor, groups: Sequence[TableGroup]) -> None:
    """The end of a step after its forward pass: backward (with the optimizer where it is fused
    into backward), then the groups' own optimizer steps."""
    with record_function("step.backward"):
        loss.backward()
    with record_function("step.optimizer"):
        for g in groups:
            g.step()
