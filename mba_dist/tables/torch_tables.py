"""The plain-torch backend of `TableGroup`: one `nn.Embedding` per (model, entity).

Sparse gradients for the scalable optimizers (`row_optim`'s updates: no sort of the ids, and on
a GPU no host sync; `optim.torch_sparse`), whole-table Adam for the authors' dense mode.
"""
from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from mba_dist.config import OptimConfig
from mba_dist.eval.scorers import LocalFactors
from mba_dist.mba.roles import ENTITIES, Model, model_name
from mba_dist.tables.base import Rows, TableGroup
from mba_dist.tables.row_optim import RowAdagrad, RowAdam
from mba_dist.tables.stage_tables import StageTables


class TorchTableGroup(TableGroup):
    """Plain `nn.Embedding` tables with a torch optimizer over the group."""

    def __init__(self, models: Iterable[Model | str], num_users: int, num_items: int, dim: int,
                 optim: OptimConfig | None, device: torch.device):
        super().__init__()
        self.models = tuple(model_name(m) for m in models)
        self.num_users, self.num_items, self.dim = num_users, num_items, dim
        optim_mode = optim.mode if optim is not None else None
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
            self.opt = torch.optim.Adam(params, lr=optim.lr)
        elif optim_mode in ("sparse_adam", "adagrad"):
            # optim.torch_sparse (config.py): auto is rows, no sort (and no host sync on a GPU)
            rows = optim.torch_sparse in ("rows", "auto")
            adam = optim_mode == "sparse_adam"
            cls = (RowAdam if adam else RowAdagrad) if rows else (
                torch.optim.SparseAdam if adam else torch.optim.Adagrad)
            self.opt = cls(params, lr=optim.lr)
        elif optim_mode == "sgd":
            self.opt = torch.optim.SGD(params, lr=optim.lr)
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

    def live_tables(self) -> dict:
        return {k: t.weight.detach() for k, t in self.tables.items()}

    def write_rows(self, key: str, lo: int, rows: torch.Tensor) -> None:
        with torch.no_grad():
            w = self.tables[key].weight
            w[lo:lo + len(rows)] = rows.to(w.device)

    def finite(self, model: str) -> bool:
        return all(bool(torch.isfinite(self.tables[f"{model}_{e}"].weight).all()) for e in ENTITIES)

    def snapshot(self) -> dict:
        return {k: t.weight.detach().cpu().clone() for k, t in self.tables.items()}

    def stage_tables(self, snap: dict | None = None) -> StageTables:
        return StageTables(snap if snap is not None else self.live_tables(), self.num_users,
                           self.num_items, self.dim)

    def factors(self, model: str):
        return LocalFactors(*(self.tables[f"{model}_{e}"].weight.detach() for e in ENTITIES))

    def full_tables(self, model: str) -> list[torch.Tensor]:
        return [self.tables[f"{model}_{e}"].weight for e in ENTITIES]

    def step(self) -> None:
        if self.opt is not None:
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)

    def optimizer_state(self) -> dict:
        return self.opt.state_dict() if self.opt is not None else {}

    def shard_state(self, best: dict | None = None) -> tuple[dict, dict]:
        # One rank holds whole tables here: its shards are the tables. The optimizer's tensors
        # go with them; its scalars (steps, param groups) stay beside them in `extra`.
        out = {f"tables/{k}": t for k, t in self.live_tables().items()}
        out.update({f"best/{k}": w for k, w in (best or {}).items()})
        sd = self.optimizer_state()
        skeleton = {"state": {}, "param_groups": sd.get("param_groups", [])}
        for i, st in sd.get("state", {}).items():
            skeleton["state"][i] = {}
            for name, v in st.items():
                if torch.is_tensor(v):
                    out[f"optim/{i}/{name}"] = v
                skeleton["state"][i][name] = None if torch.is_tensor(v) else v
        return out, ({"optim": skeleton} if sd else {})

    def restore(self, load, sizes: dict, extra: dict) -> dict | None:
        targets = {f"tables/{k}": t.weight.data for k, t in self.tables.items()}
        for name, md in sizes.items():  # the optimizer's tensors and the best epoch, as saved
            if not name.startswith("tables/"):
                targets[name] = torch.empty(md.size, dtype=md.properties.dtype)
        with torch.no_grad():
            load(targets)
        if self.opt is not None and "optim" in extra:
            sd = copy.deepcopy(extra["optim"])  # the state's own stays as read
            for i, st in sd["state"].items():
                for name in st:
                    if st[name] is None:
                        st[name] = targets[f"optim/{i}/{name}"]
            self.opt.load_state_dict(sd)
        best = {k[len("best/"):]: v for k, v in targets.items() if k.startswith("best/")}
        return best or None
