"""The seven MF models of MBA and the embedding tables that hold them.

Every model is matrix factorisation: logit(u, i) = <user_emb[u], item_emb[i]>, dim 32.

    model    role                                   trained
    pre_f    P(R_f): BPR on target train pairs       stage 1, then frozen
    pre_g    P(R_g): BPR on auxiliary train pairs    stage 1, then frozen
    t        the target recommender t_theta          every MBA step
    h1_f/g   P(r=1 | true preference 1)              DN steps
    h2_f/g   P(r=1 | true preference 0)              DP steps

Tables are grouped by *when they move*: a `TableGroup` holds the user and item tables of models
that are always updated together (frozen {pre_f, pre_g}; {t}; DN {h1_f, h1_g}; DP {h2_f, h2_g}).
A step runs forward only through the groups it reads and builds gradients only for the groups it
trains, so off-phase models and their optimizer state cannot move, whatever the optimizer
(row-wise Adagrad and Adam included).

A batch of B triples (user, positive, negative) is looked up once per group: `lookup` returns
`Rows`, one [B, 3k, d] tensor of the k models' user rows and their positive and negative item
rows, and `Rows.logits()` scores all k models and both sides in one product, with a backward
that writes the gradient of the whole tensor at once. Each user row is read once per triple, and
nothing downstream slices or splits the wide lookup output (a slice's backward writes a zeroed
copy of the whole output, a split's a `cat`: each was a quarter of the torchrec step). Two
backends share this interface:

- `torch`: one `nn.Embedding` per (model, entity); sparse gradients for the scalable optimizers
  (`row_optim`'s updates: no sort of the ids, and on a GPU no host sync; `optim.torch_sparse`).
- `torchrec`: one `EmbeddingBagCollection` per group (tables `<model>_user`, `<model>_item`,
  bags of one id), sharded table-wise by `DistributedModelParallel`, optimizer fused into the
  backward pass (FBGEMM kernels: SGD, Adagrad, row-wise Adagrad on CPU). Needs a process group.
"""
from __future__ import annotations

import hashlib
from enum import Enum
from typing import Iterable, NamedTuple

import numpy as np
import torch
from torch import nn

from mba_dist.row_optim import RowAdagrad, RowAdam


class Model(str, Enum):
    PRE_F = "pre_f"
    PRE_G = "pre_g"
    T = "t"
    H1_F = "h1_f"
    H1_G = "h1_g"
    H2_F = "h2_f"
    H2_G = "h2_g"


FROZEN = (Model.PRE_F, Model.PRE_G)
DN_MODELS = (Model.H1_F, Model.H1_G)
DP_MODELS = (Model.H2_F, Model.H2_G)
ENTITIES = ("user", "item")


def init_weights(num: int, dim: int, std: float, seed: int, model: str, entity: str) -> torch.Tensor:
    """N(0, std) weights from a generator keyed by (seed, model, entity): the same on every
    backend and rank, so runs differ only by what they compute, not how they were initialised."""
    digest = hashlib.sha256(f"{seed}/{model}/{entity}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randn(num, dim, generator=g) * std


class Rows(NamedTuple):
    """One group's rows for a batch of B (user, positive, negative) triples, in one tensor
    [B, 3k, d]: the k models' user rows, then each model's positive and negative item rows
    (model j: user at j, positive at k + 2j, negative at k + 2j + 1)."""

    packed: torch.Tensor

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

    def weights(self, model: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Full (user, item) weight matrices of one model, as CPU float32 copies."""
        raise NotImplementedError

    def load(self, model: str, user: torch.Tensor, item: torch.Tensor) -> None:
        raise NotImplementedError

    def factors(self, model: str):
        """An `evaluate.Factors` source over the live tables of one model (no full copy)."""
        raise NotImplementedError

    def full_tables(self, model: str) -> list[torch.Tensor]:
        """The autograd-visible whole tables of a model (dense optimizer mode only)."""
        raise NotImplementedError(f"{type(self).__name__} has no dense whole-table mode")

    def step(self) -> None:
        """Apply the optimizer after backward (a no-op where it is fused into backward)."""

    def optimizer_state(self) -> dict:
        return {}

    def state(self) -> dict:
        """Whole tables and optimizer state as CPU tensors, for a resumable checkpoint.
        Collective on sharded backends (every rank calls it); serialise it before the next
        step, as optimizer state may be shared with the live optimizer."""
        raise NotImplementedError

    def load_state(self, state: dict) -> None:
        """Restore `state()` output (every rank loads the whole state, keeps its shards)."""
        raise NotImplementedError


class TorchTableGroup(TableGroup):
    """Plain `nn.Embedding` tables with a torch optimizer over the group."""

    def __init__(self, models: Iterable[str], num_users: int, num_items: int, dim: int,
                 optim_mode: str | None, lr: float, device: torch.device, sparse_impl: str = "auto"):
        super().__init__()
        self.models = tuple(str(m.value if isinstance(m, Model) else m) for m in models)
        sparse = optim_mode not in (None, "dense_adam")
        self.tables = nn.ModuleDict({
            f"{m}_{e}": nn.Embedding(num_users if e == "user" else num_items, dim, sparse=sparse,
                                     device=device)
            for m in self.models for e in ENTITIES})
        params = list(self.tables.parameters())
        if optim_mode is None:
            self.requires_grad_(False)
            self.opt = None
        elif optim_mode == "dense_adam":
            self.opt = torch.optim.Adam(params, lr=lr)
        elif optim_mode in ("sparse_adam", "adagrad"):
            # optim.torch_sparse (config.py): auto is rows, no sort (and no host sync on a GPU)
            rows = sparse_impl in ("rows", "auto")
            adam = optim_mode == "sparse_adam"
            cls = (RowAdam if adam else RowAdagrad) if rows else (
                torch.optim.SparseAdam if adam else torch.optim.Adagrad)
            self.opt = cls(params, lr=lr)
        elif optim_mode == "sgd":
            self.opt = torch.optim.SGD(params, lr=lr)
        else:
            raise ValueError(f"optim.mode {optim_mode!r} is not available with model.backend=torch "
                             "(use dense_adam, sparse_adam, adagrad or sgd, or model.backend=torchrec)")

    def lookup(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> Rows:
        items = torch.stack([pos, neg], 1)  # [B, 2]: one item lookup gives [B, 2, d]
        u = [self.tables[f"{m}_user"](users).unsqueeze(1) for m in self.models]
        i = [self.tables[f"{m}_item"](items) for m in self.models]
        return Rows(torch.cat(u + i, 1))

    def weights(self, model: str) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(self.tables[f"{model}_{e}"].weight.detach().cpu().clone() for e in ENTITIES)

    def load(self, model: str, user: torch.Tensor, item: torch.Tensor) -> None:
        with torch.no_grad():
            self.tables[f"{model}_user"].weight.copy_(user)
            self.tables[f"{model}_item"].weight.copy_(item)

    def factors(self, model: str):
        from mba_dist.evaluate import LocalFactors
        return LocalFactors(*(self.tables[f"{model}_{e}"].weight.detach() for e in ENTITIES))

    def full_tables(self, model: str) -> list[torch.Tensor]:
        return [self.tables[f"{model}_{e}"].weight for e in ENTITIES]

    def step(self) -> None:
        if self.opt is not None:
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)

    def optimizer_state(self) -> dict:
        return self.opt.state_dict() if self.opt is not None else {}

    def state(self) -> dict:
        return {"tables": {k: t.weight.detach().cpu().clone() for k, t in self.tables.items()},
                "optim": self.optimizer_state()}

    def load_state(self, state: dict) -> None:
        with torch.no_grad():
            for k, w in state["tables"].items():
                self.tables[k].weight.copy_(w)
        if self.opt is not None and state["optim"]:
            self.opt.load_state_dict(state["optim"])


def build_group(backend: str, models: Iterable[Model | str], num_users: int, num_items: int,
                dim: int, optim_mode: str | None, lr: float, device: torch.device,
                sparse_impl: str = "auto") -> TableGroup:
    """A table group on the chosen backend; `optim_mode=None` builds a frozen group.
    `sparse_impl`: `optim.torch_sparse` (torch backend only)."""
    if backend == "torch":
        return TorchTableGroup(models, num_users, num_items, dim, optim_mode, lr, device, sparse_impl)
    if backend == "torchrec":
        from mba_dist.torchrec_tables import TorchrecTableGroup
        return TorchrecTableGroup(models, num_users, num_items, dim, optim_mode, lr, device)
    raise ValueError(f"unknown model.backend {backend!r}")


def logits(u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """MF logit per row: <u_b, i_b>; [B, d] x [B, d] -> [B]."""
    return (u * i).sum(-1)


def save_weights(groups: Iterable[TableGroup]) -> dict[str, dict[str, np.ndarray]]:
    return {m: dict(zip(ENTITIES, (w.numpy() for w in g.weights(m))))
            for g in groups for m in g.models}
