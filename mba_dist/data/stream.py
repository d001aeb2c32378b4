"""Streaming input: Ray Data reads the train Parquet files and feeds the Ray Train workers.

Per stage of `mba.stages.stage_plan` the driver builds one lazy Ray dataset per part, each
pair set by `pair_sets.build` (the definition the in-memory source uses too):

    read_parquet(train/<behavior>.parquet)            never whole in one process
      [k > 1 auxiliary behaviors, set aux: each behavior's rows less the earlier behaviors'
       pairs (map_batches), unioned: every pair once]
      -> drop target pairs (part aux_only only)      map_batches, target keys
      -> [union of parts, BPR stages]
      -> order of the epoch (`train.stream_shuffle`):
           blocks: random_shuffle into blocks, once per run (materialized in the object
                   store), then randomize_block_order() every epoch, and a local shuffle
                   buffer of SHUFFLE_BUFFER_BATCHES batches in each worker
           full:   random_shuffle() every epoch (an all-to-all before the first batch)
      -> add one negative per row                     map_batches, vectorised sampler
      [k > 1, part aux_only: a "seen" column, the behaviors each pair was observed in, as
       bits (map_batches, the behaviors' keys): the per-pair masks of DESIGN §11]

and Ray Train splits each across the workers (`get_dataset_shard`, `streaming_split` with
`equal=True`: every worker gets the same number of rows per epoch). A worker reads batches of
`train.batch_size / W` rows with the tail dropped, so every worker takes the same number of
steps: the global batch is W local batches, as in `MemorySource`.

The sorted keys (user * num_items + item) that the filter and the sampler need are built by Ray
tasks from the Parquet files and put in the object store once; map tasks fetch them once per
worker process, never per batch (`stream_ops`, which Ray workers import without torch).

`blocks` trades shuffle quality for speed: every block is a uniform sample of the part, fixed for
the run, and an epoch visits the blocks in a new random order, mixing rows of a few neighbouring
blocks in the buffer; a full shuffle draws a new permutation of all rows each epoch.

Unlike `MemorySource`, the stream is not bit-reproducible: the shuffle and the negatives draw
fresh entropy each epoch (Ray Data's block layout decides which task sees which rows).
"""
from __future__ import annotations

import itertools
from typing import Iterator

import numpy as np

from mba_dist import config as C
from mba_dist.data import pair_sets
from mba_dist.data.batches import Batch
from mba_dist.data.dataset import Dataset
from mba_dist.data.stream_ops import (add_negatives, add_seen_in, drop_known, keys_of,
                                      seen_rows, subtract_keys, union_keys)
from mba_dist.errors import ConfigError
from mba_dist.mba.roles import Kind
from mba_dist.mba.stages import PART_KIND, StageInput, stage_plan


ROWS_PER_BLOCK = 16_384  # blocks of the once-per-run shuffle (at least MIN_BLOCKS of them)
MIN_BLOCKS = 16
SHUFFLE_BUFFER_BATCHES = 4  # the workers' local shuffle buffer, in local batches


def shard_name(stage: StageInput, part: str) -> str:
    """The Ray Train dataset name of one part of a stage (one per stage unless by kind)."""
    return f"{stage.name}.{part}" if stage.by_kind else stage.name


# ---- driver side ------------------------------------------------------------------------------
def train_rows(cfg: C.Config, data_dir) -> int:
    """Train pairs the run reads (from meta.json; each file once)."""
    return sum(n for role, n in pair_sets.role_rows(cfg, Dataset(data_dir)).items()
               if not role.startswith("aux:"))


class _RowOps:
    """`pair_sets.SetOps` over lazy Ray datasets of (user, item) rows."""

    def __init__(self, plan: "StreamPlan"):
        self.plan = plan

    def read(self, role: str):
        import ray
        each = self.plan.aux_each
        if role == "aux" and each:  # k > 1: a pair seen in several behaviors is one row
            parts = [self._rows(each[0])]
            for n, b in enumerate(each[1:], 1):
                earlier = ray.remote(union_keys).remote(*map(self.plan.keys, each[:n]))
                parts.append(self._drop(self._rows(b), earlier))
            return parts[0].union(*parts[1:])
        return self._rows(role)

    def _rows(self, role: str):
        import ray
        return ray.data.read_parquet(self.plan.files[role]).select_columns(["user", "item"])

    def _drop(self, a, keys_ref):
        return a.map_batches(drop_known, fn_kwargs={"keys_ref": keys_ref,
                                                    "num_items": self.plan.ds.num_items},
                             batch_format="numpy")

    def minus(self, a, role: str):
        return self._drop(a, self.plan.keys(role))

    def union(self, parts: list):
        return parts[0].union(*parts[1:])


class _KeyOps:
    """`pair_sets.SetOps` over sorted key arrays in the object store (built by Ray tasks)."""

    def __init__(self, plan: "StreamPlan"):
        self.plan = plan

    def read(self, role: str):
        return self.plan.keys(role)  # built once per role (`StreamPlan.keys`)

    def minus(self, a, role: str):
        import ray
        return ray.remote(subtract_keys).remote(a, self.plan.keys(role))

    def union(self, parts: list):
        import ray
        return ray.remote(union_keys).remote(*parts)


class StreamPlan:
    """The driver's Ray datasets for every stage of a config that the run trains (`skip`: the
    stages it takes from an earlier run), keyed by shard name."""

    def __init__(self, cfg: C.Config, data_dir: str, skip=()):
        self.cfg, self.ds = cfg, Dataset(data_dir)
        pair_sets.check_dataset(cfg, self.ds)
        self.files = {role: [str(self.ds.path(s, b)) for s, b in splits]
                      for role, splits in pair_sets.role_files(cfg, self.ds).items()}
        self.rows = pair_sets.role_rows(cfg, self.ds)
        self._keys: dict[str, object] = {}
        self._shuffled: dict[str, object] = {}
        self.skip = set(skip)
        # k > 1 auxiliary behaviors: their pair sets, in data.aux order (empty for k = 1)
        self.aux_each = [r for r in self.files if r.startswith("aux:")]

    def keys(self, name: str):
        """The object-store ref of a pair set's sorted keys, built once (a behavior's by a Ray
        task over its files, the other sets from those)."""
        if name not in self._keys:
            if name in self.files:
                import ray
                self._keys[name] = ray.remote(keys_of).remote(self.files[name], self.ds.num_items)
            else:
                self._keys[name] = pair_sets.build(name, _KeyOps(self))
        return self._keys[name]

    def _ordered(self, part: str):
        """The rows of pair set `part` in an epoch's order (module docstring)."""
        rows = pair_sets.build(part, _RowOps(self))
        if self.cfg.train.stream_shuffle == "full":
            return rows.random_shuffle()
        if part not in self._shuffled:  # shared by the stages that read the same set
            rows_of = self.part_rows()  # merged: target + aux_only (upper bounds serve here)
            n = rows_of.get(part, rows_of.get("target", 0) + rows_of.get("aux_only", 0))
            blocks = max(MIN_BLOCKS, -(-n // ROWS_PER_BLOCK))
            self._shuffled[part] = rows.random_shuffle(seed=self.cfg.train.seed).repartition(
                blocks).materialize()
        return self._shuffled[part].randomize_block_order()

    def _sampled(self, stage: StageInput, part: str):
        keys = self.keys(stage.exclude) if self.cfg.train.negatives == "exclude" else None
        rows = self._ordered(part).map_batches(
            add_negatives, fn_kwargs={"keys_ref": keys, "num_items": self.ds.num_items},
            batch_format="numpy")
        if stage.by_kind and PART_KIND[part] is Kind.A and self.aux_each:
            rows = rows.map_batches(add_seen_in, batch_format="numpy", fn_kwargs={
                "keys_refs": [self.keys(r) for r in self.aux_each],
                "num_items": self.ds.num_items})
        return rows

    def datasets(self) -> dict:
        out = {}
        for stage in stage_plan(self.cfg):
            if stage.name in self.skip:
                continue
            if stage.by_kind:
                for p in stage.parts:
                    out[shard_name(stage, p)] = self._sampled(stage, p)
            else:
                out[shard_name(stage, "")] = self._sampled(stage, stage.union)
        return out

    def part_rows(self) -> dict[str, int]:
        """Rows per part from meta.json (aux_only: an upper bound); weights of interleaving."""
        r = dict(self.rows)
        if "aux" in r:
            r["aux_only"] = r["aux"]
        return r


# ---- worker side ------------------------------------------------------------------------------
class StreamSource:
    """Batches from this worker's Ray Data shards (one per shard name)."""

    def __init__(self, shards: dict, train: C.TrainConfig, batch_order: str, world: int,
                 part_rows: dict[str, int], behaviors: int = 1):
        self.shards, self.local = shards, train.batch_size // world
        self.behaviors = behaviors  # auxiliary behaviors: the bits of a "seen" column
        self.seed, self.batch_order, self.part_rows = train.seed, batch_order, part_rows
        self.buffer = (SHUFFLE_BUFFER_BATCHES * self.local
                       if train.stream_shuffle == "blocks" else None)

    def check(self, stage: StageInput) -> None:
        for p in (stage.parts if stage.by_kind else ("",)):
            if shard_name(stage, p) not in self.shards:
                raise ConfigError(f"stage {stage.name}: no dataset shard {shard_name(stage, p)!r}")

    def _iter(self, name: str, kind) -> Iterator[Batch]:
        for b in self.shards[name].iter_batches(batch_size=self.local, drop_last=True,
                                                batch_format="numpy", prefetch_batches=2,
                                                local_shuffle_buffer_size=self.buffer):
            seen = b.get("seen")
            yield Batch(kind, b["user"], b["item"], b["neg"],
                        None if seen is None else seen_rows(seen, self.behaviors))

    def epoch(self, stage: StageInput, epoch: int) -> Iterator[Batch]:
        if not stage.by_kind:
            yield from self._iter(shard_name(stage, ""), None)
            return
        its = {p: self._iter(shard_name(stage, p), PART_KIND[p]) for p in stage.parts}
        if self.batch_order == "sequential":
            yield from itertools.chain(*its.values())
            return
        # Interleaved: the same draws on every rank (same seed); a part runs out on every rank
        # at the same step (equal shards, same local batch size), so ranks stay in lockstep.
        rng = np.random.default_rng([self.seed, stage.key, epoch])
        left = {p: max(self.part_rows.get(p, 1), 1) for p in its}
        while its:
            parts = list(its)
            w = np.array([left[p] for p in parts], dtype=float)
            p = parts[rng.choice(len(parts), p=w / w.sum())]
            try:
                yield next(its[p])
                left[p] = max(left[p] - self.local, 1)
            except StopIteration:
                del its[p]
