"""`build_group`: a table group on the configured backend, its tables initialised."""
from __future__ import annotations

import hashlib
from typing import Iterable

import torch

from mba_dist.config import ModelConfig, OptimConfig
from mba_dist.mba.roles import Model, model_name
from mba_dist.tables.base import TableGroup


def init_weights(num: int, dim: int, std: float, seed: int, model: str, entity: str) -> torch.Tensor:
    """N(0, std) weights from a generator keyed by (seed, model, entity): the same on every
    backend and rank, so runs differ only by what they compute, not how they were initialised."""
    digest = hashlib.sha256(f"{seed}/{model}/{entity}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randn(num, dim, generator=g) * std


def build_group(models: Iterable[Model | str], num_users: int, num_items: int,
                model: ModelConfig, optim: OptimConfig | None, device: torch.device,
                seed: int, init: bool = True, graph=None) -> TableGroup:
    """The tables of `models` on `model.backend`, initialised N(0, model.init_std) from `seed`
    (unless not `init`: a group about to be loaded from a checkpoint skips building the whole
    initial tables); `optim=None` builds a frozen group (no optimizer, no gradients). With a
    `graph` (`tables.lightgcn.Graph`; one trained model) the model is a LightGCN over it."""
    if graph is not None:
        from mba_dist.tables.lightgcn import LightGCNGroup
        (m,) = map(model_name, models)
        g: TableGroup = LightGCNGroup(m, graph, model.layers, num_users, num_items, model.dim,
                                      optim, device)
    elif model.backend == "torch":
        from mba_dist.tables.torch_tables import TorchTableGroup
        g = TorchTableGroup(models, num_users, num_items, model.dim, optim, device)
    else:
        from mba_dist.tables.torchrec_tables import TorchrecTableGroup
        g = TorchrecTableGroup(models, num_users, num_items, model.dim, optim, device)
    for m in map(model_name, models) if init else ():
        g.load(m, init_weights(num_users, model.dim, model.init_std, seed, m, "user"),
               init_weights(num_items, model.dim, model.init_std, seed, m, "item"))
    return g
