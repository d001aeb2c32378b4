"""torchrec backend of `TableGroup`: one EmbeddingBagCollection per group, sharded by DMP.

Layout of one group's lookup (B triples (user, pos, neg), models m1..mk):

    tables:      m1_user ... mk_user   m1_item            ...  mk_item
    KJT keys:    m1_user ... mk_user   m1_pos  m1_neg     ...  mk_pos  mk_neg
    lengths:     [1]*B       [1]*B     [1]*B   [1]*B           [1]*B   [1]*B   (bags of one id)
    pooled out:  one [B, 3k*d] tensor, viewed as `Rows` [B, 3k, d] (features in this order)

Every key has the B rows of the batch (a KJT has one batch size for all keys), and each item
table serves two features, the positives and the negatives. The pooled output is cut into the
`Rows` layout as a view, without a per-model slice or a split.

Bags of one id run on the fused FBGEMM TBE kernel; DESIGN §3 measured EmbeddingBagCollection at
about 2.7x EmbeddingCollection on CPU. The optimizer is applied inside backward
(`apply_optimizer_in_backward`), so `step()` is a no-op. The sharding plan comes from
`plan.sharding_plan` (print it with `plan.describe`).
"""
from __future__ import annotations

from functools import partial
from typing import Iterable

import torch
import torch.distributed as dist
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.distributed.comm_ops import set_gradient_division
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from mba_dist.config import OptimConfig
from mba_dist.dist.collective import collective_device
from mba_dist.mba.roles import ENTITIES, Model, model_name
from mba_dist.tables.base import Rows, TableGroup
from mba_dist.tables.plan import sharding_plan
from mba_dist.tables.stage_tables import ShardedFactors, StageTables, local_parts

# optim.mode -> the optimizer FBGEMM fuses into the TBE backward
FUSED_OPTIMIZERS = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad,
                    "rowwise_adagrad": RowWiseAdagrad}


class TorchrecTableGroup(TableGroup):
    def __init__(self, models: Iterable[Model | str], num_users: int, num_items: int, dim: int,
                 optim: OptimConfig | None, device: torch.device):
        super().__init__()
        if not dist.is_initialized():
            raise RuntimeError("model.backend=torchrec needs a torch.distributed process group "
                               "(Ray Train creates one; the local launcher starts a 1-rank group)")
        # The steps rely on gradients averaged over ranks (see train.steps.L2.scale).
        set_gradient_division(True)
        self.models = tuple(model_name(m) for m in models)
        self.keys = [f"{m}_{e}" for e in ENTITIES for m in self.models]  # table names
        self.sizes = {f"{m}_{e}": (num_users if e == "user" else num_items)
                      for m in self.models for e in ENTITIES}
        self.features = ([f"{m}_user" for m in self.models]
                         + [f"{m}_{side}" for m in self.models for side in ("pos", "neg")])
        tables = [EmbeddingBagConfig(name=k, embedding_dim=dim, num_embeddings=self.sizes[k],
                                     feature_names=[k] if k.endswith("_user") else
                                     [k.replace("_item", "_pos"), k.replace("_item", "_neg")],
                                     init_fn=partial(torch.nn.init.normal_, std=0.01))
                  for k in self.keys]
        ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
        self.frozen = optim is None
        if not self.frozen:
            # A fresh kwargs dict per call: DMP mutates it (DESIGN §3).
            apply_optimizer_in_backward(FUSED_OPTIMIZERS[optim.mode], ebc.parameters(),
                                        {"lr": optim.lr})
        sharders = [EmbeddingBagCollectionSharder()]
        self.plan = sharding_plan(ebc, sharders, device)
        self.dmp = DistributedModelParallel(ebc, device=device, plan=self.plan, sharders=sharders)
        self.num_users, self.num_items, self.dim = num_users, num_items, dim
        self.device = device
        self._orders: dict[tuple[str, ...], torch.Tensor] = {}

    def lookup(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> Rows:
        k, b, d = len(self.models), len(users), self.dim
        values = torch.cat([users] * k + [pos, neg] * k)
        kjt = KeyedJaggedTensor.from_lengths_sync(
            keys=self.features, values=values,
            lengths=torch.ones(len(values), dtype=torch.int32, device=values.device))
        with torch.set_grad_enabled(not self.frozen and torch.is_grad_enabled()):
            out = self.dmp(kjt)
        v = out.values().view(b, len(self.features), d)
        if out.keys() == self.features:  # one rank: the features in table order, as a view
            return Rows(v)
        # sharded: the output lists each rank's features in turn; gather them into that order
        return Rows(v.index_select(1, self._order(tuple(out.keys()), v.device)))

    def _order(self, keys: tuple[str, ...], device: torch.device) -> torch.Tensor:
        """Where each of `self.features` sits in a pooled output listing `keys` (fixed by the
        sharding plan, so computed once)."""
        if keys not in self._orders:
            where = {f: n for n, f in enumerate(keys)}
            self._orders[keys] = torch.tensor([where[f] for f in self.features], device=device)
        return self._orders[keys]

    def _sharded(self, key: str):
        return self.dmp.state_dict()[f"embedding_bags.{key}.weight"]

    def live_tables(self) -> dict:
        return {k: self._sharded(k) for k in self.keys}

    def factors(self, model: str) -> ShardedFactors:
        return ShardedFactors(self.live_tables(), self.dim, model)

    def finite(self, model: str) -> bool:
        ok = all(bool(torch.isfinite(s.tensor).all()) for e in ENTITIES
                 for s in self._sharded(f"{model}_{e}").local_shards())
        bad = torch.tensor([0 if ok else 1], device=collective_device())
        if dist.get_world_size() > 1:
            dist.all_reduce(bad)
        return int(bad.item()) == 0

    def snapshot(self) -> dict:
        """{table: [(shard index, this rank's copy of the shard)]}."""
        return {key: [(_shard_index(s), s.tensor.detach().cpu().clone())
                      for s in self._sharded(key).local_shards()] for key in self.keys}

    def stage_tables(self, snap: dict | None = None) -> StageTables:
        tables = self.live_tables() if snap is None else {
            key: self._as_sharded(key, [t for _, t in parts]) for key, parts in snap.items()}
        return StageTables(tables, self.num_users, self.num_items, self.dim)

    def weights(self, model: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.stage_tables().whole(model)

    def write_rows(self, key: str, lo: int, rows: torch.Tensor) -> None:
        hi = lo + len(rows)
        with torch.no_grad():
            for r, c, t in local_parts(self._sharded(key)):
                h, w = t.shape
                a, b = max(lo, r), min(hi, r + h)
                if a < b:
                    t[a - r:b - r] = rows[a - lo:b - lo, c:c + w].to(t.device)

    def optimizer_state(self) -> dict:
        return {} if self.frozen else self.dmp.fused_optimizer.state_dict()

    def shard_state(self, best: dict | None = None) -> tuple[dict, dict]:
        out = {f"tables/{k}": t for k, t in self.live_tables().items()}
        if not self.frozen:  # the fused optimizer's state of the shards this rank holds
            for param, st in self.optimizer_state()["state"].items():
                out.update({f"optim/{param}/{n}": t for n, t in st.items()})
        for key, parts in (best or {}).items():
            out[f"best/{key}"] = self._as_sharded(key, [t for _, t in parts])
        return out, {}

    def restore(self, load, sizes: dict, extra: dict) -> dict | None:
        targets, _ = self.shard_state()
        has_best = any(k.startswith("best/") for k in sizes)
        if has_best:
            targets.update({f"best/{k}": self._as_sharded(k, [
                torch.zeros_like(s.tensor) for s in self._sharded(k).local_shards()])
                for k in self.keys})
        with torch.no_grad():
            load(targets)
        if not has_best:
            return None
        return {k: [(_shard_index(s), s.tensor.cpu()) for s in targets[f"best/{k}"].local_shards()]
                for k in self.keys}

    def _as_sharded(self, key: str, parts: list[torch.Tensor]):
        """A ShardedTensor over `parts` (this rank's shards of table `key`, in the order of its
        `local_shards()`), with the live table's plan (parts on the table's device are used as
        they are, others copied there)."""
        from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor

        live = self._sharded(key)
        shards = [Shard(tensor=t.to(s.tensor.device), metadata=s.metadata)
                  for t, s in zip(parts, live.local_shards(), strict=True)]
        return ShardedTensor._init_from_local_shards_and_global_metadata(
            shards, live.metadata(), process_group=live._process_group)


def _shard_index(shard) -> tuple[slice, ...]:
    return tuple(slice(o, o + n) for o, n in
                 zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes))
