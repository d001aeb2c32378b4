"""What a rank holds of tables it does not train: `StageTables` (a finished stage's best epoch)
and `ShardedFactors` (the evaluator's view of sharded tables, live or kept).

A table here is this rank's part of it: a `ShardedTensor` of its shards (torchrec), or the
whole tensor where one rank holds every table (the plain-torch backend). Reading rows goes
through `ShardedFactors`, one chunk at a time: every rank places the rows it holds into a zeroed
buffer and the buffers are summed, so no process builds a whole table it does not own. Copying
a kept table into another group (a frozen pair, t started from pre_g) goes the same way, chunk
by chunk, whatever the two groups' sharding plans (`StageTables.copy_into`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor import ShardedTensor

from mba_dist.dist.collective import all_gather_rows, collective_device, rank_world
from mba_dist.eval.scorers import Factors, LocalFactors
from mba_dist.mba.roles import ENTITIES

COPY_CHUNK_BYTES = 64 << 20  # rows moved per collective of `StageTables.copy_into`


def local_parts(table: torch.Tensor | ShardedTensor) -> list[tuple[int, int, torch.Tensor]]:
    """(first row, first column, tensor) of each part of `table` this rank holds."""
    if isinstance(table, ShardedTensor):
        return [(s.metadata.shard_offsets[0], s.metadata.shard_offsets[1], s.tensor)
                for s in table.local_shards()]
    return [(0, 0, table)]


class ShardedFactors:
    """`eval.scorers.Factors` of one model read from this rank's parts of its tables
    (`tables[f"{model}_user"]`, `..._item`): a call materialises only the rows asked for (one
    item chunk, one user block). Collective: every rank calls together (`items` and `rows` with
    the same arguments, `users` with its own ids). Works for any sharding (table-, row- or
    column-wise)."""

    def __init__(self, tables: Mapping[str, torch.Tensor | ShardedTensor], dim: int, model: str):
        self.tables, self.dim, self.model = tables, dim, model
        self.device = collective_device()

    def _gather(self, key: str, n: int, place) -> torch.Tensor:
        buf = torch.zeros(n, self.dim, device=self.device)
        for r, c, t in local_parts(self.tables[key]):
            h, w = t.shape
            place(buf, t.detach().to(self.device), r, h, slice(c, c + w))
        if rank_world()[1] > 1:
            dist.all_reduce(buf)
        return buf

    def rows(self, key: str, lo: int, hi: int) -> torch.Tensor:
        def place(buf, t, r, h, cols):
            a, b = max(lo, r), min(hi, r + h)
            if a < b:
                buf[a - lo:b - lo, cols] = t[a - r:b - r]
        return self._gather(key, hi - lo, place)

    def items(self, lo: int, hi: int) -> torch.Tensor:
        return self.rows(f"{self.model}_item", lo, hi)

    def users(self, ids: torch.Tensor) -> torch.Tensor:
        """Each rank's own `ids`: the ranks' lists are gathered, every rank places the rows it
        holds of all of them, and each keeps its own part of the sum."""
        mine = ids.to(self.device)
        ids, at = all_gather_rows(mine)

        def place(buf, t, r, h, cols):
            sel = ((ids >= r) & (ids < r + h)).nonzero().squeeze(1)
            buf[sel, cols] = t[ids[sel] - r]
        return self._gather(f"{self.model}_user", len(ids), place)[at:at + len(mine)].clone()


@dataclass
class StageTables:
    """The tables of a finished stage's best epoch, `{MODEL_user|MODEL_item: this rank's part}`
    (module docstring), with the shapes they have whole."""

    tables: dict[str, torch.Tensor | ShardedTensor]
    num_users: int
    num_items: int
    dim: int

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(k.rsplit("_", 1)[0] for k in self.tables))

    def rows_of(self, key: str) -> int:
        return self.num_users if key.endswith("_user") else self.num_items

    def only(self, models) -> "StageTables":
        keep = {f"{m}_{e}" for m in models for e in ENTITIES}
        return StageTables({k: v for k, v in self.tables.items() if k in keep},
                           self.num_users, self.num_items, self.dim)

    def factors(self, model: str) -> Factors:
        if not any(isinstance(t, ShardedTensor) for t in self.tables.values()):
            return LocalFactors(*(self.tables[f"{model}_{e}"] for e in ENTITIES))
        return ShardedFactors(self.tables, self.dim, model)

    def factor_map(self) -> dict[str, Factors]:
        """{model: its factors} (what `eval.baselines` scores)."""
        return {m: self.factors(m) for m in self.models}

    def whole(self, model: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One model's whole (user, item) tables on every rank (collective; tests and small
        tables only: training never calls it)."""
        src = ShardedFactors(self.tables, self.dim, model)
        return tuple(src.rows(f"{model}_{e}", 0, self.rows_of(f"{model}_{e}")).cpu()
                     for e in ENTITIES)

    def copy_into(self, group, model: str, into: str | None = None) -> None:
        """Load `model`'s tables into `group`'s tables of model `into` (default the same name),
        `COPY_CHUNK_BYTES` of rows at a time (collective)."""
        src = ShardedFactors(self.tables, self.dim, model)
        step = max(1, COPY_CHUNK_BYTES // (4 * self.dim))
        for e in ENTITIES:
            key = f"{model}_{e}"
            n = self.rows_of(key)
            for lo in range(0, n, step):
                group.write_rows(f"{into or model}_{e}", lo, src.rows(key, lo, min(n, lo + step)))


def merge(parts: list[StageTables]) -> StageTables:
    """The tables of several groups' results as one stage's."""
    first = parts[0]
    return StageTables({k: v for p in parts for k, v in p.tables.items()}, first.num_users,
                       first.num_items, first.dim)
