"""Streaming input: Ray Data reads the train Parquet files and feeds the Ray Train workers.

Per stage of `mba.stages.stage_plan` the driver builds one Ray dataset per part, each pair set
by `pair_sets.build` (the definition the in-memory source uses too):

    read_parquet(train/<behavior>.parquet)            never whole in one process
      [blocks: the partition's users only]           filter, pushed down to the scan
      [k > 1 auxiliary behaviors, set aux: each behavior's rows less the earlier behaviors'
       pairs (map_batches), unioned: every pair once]
      -> drop target pairs (part aux_only only)      map_batches, target keys
      -> [union of parts, BPR stages]
      -> the order (`train.stream_shuffle`):
           blocks: per rank r, the pairs of its users user_range(num_users, r, W) only,
                   random_shuffle into blocks, once per run, materialized in the object store;
                   every epoch the worker reads its partition's blocks in a new random order
                   straight from the object store (no Ray Data execution per epoch)
           full:   random_shuffle() every epoch (an all-to-all before the first batch), split
                   across the workers by Ray Train (`get_dataset_shard`, `streaming_split`
                   with `equal=True`: every worker gets the same number of rows)

A worker draws each chunk's negatives itself (vectorised sampler; k > 1, part aux_only: also
the behaviors each pair was observed in, the per-pair masks of DESIGN §11), mixes the chunk
with the rows the previous one left, permutes it, and cuts batches of `train.batch_size / W`
rows; every worker takes the same number of steps (the global batch is W local batches, as in
`MemorySource`). Drawing the negatives in the worker rather than in Ray Data map tasks saved
the map tasks' processes, their scheduling and the per-epoch executor, which shared the cores
with the training step (RESULTS §7).

The sorted keys (user * num_items + item) that the filter and the sampler need are built by Ray
tasks from the Parquet files and put in the object store once (one copy per node); a process
fetches them once, never per batch (`stream_ops`, which Ray tasks import without torch). In
`blocks` order they too are built per partition: a worker's negatives and seen-in masks need
only its own users' pairs, so no worker maps the keys of every pair (RESULTS §11). A user's
rows all go to one rank, whose share of the rows is its users' (within 1-3% of 1/W on Beibei at
W = 2-8); every rank stops where the smallest partition runs out, so the larger ones leave that
difference out of the epoch (other rows each epoch). `full` keeps one partition of all users,
since Ray Train's split does not follow users.

`blocks` trades shuffle quality for speed: every block is a uniform sample of its rank's users'
part, fixed for the run (a global batch: W local batches, one from each rank's users); an epoch
visits the blocks in a new random order and permutes each block's rows anew, so a local batch
mixes rows of one block (and the few the previous block left); a full shuffle draws a new
permutation of all rows each epoch.

The randomness of `blocks` after the once-per-run shuffle (the block order, the permutations, the
negatives) is keyed by (seed, shard, epoch, rank, chunk) as in `MemorySource`; that shuffle and
`full` depend on Ray Data's block layout, so the stream is not promised to be bit-reproducible.
"""
from __future__ import annotations

import functools
import itertools
import operator
import zlib
from typing import Iterator, NamedTuple

import numpy as np

from mba_dist import config as C
from mba_dist.data import pair_sets
from mba_dist.data.batches import Batch, data_threads, prefetch
from mba_dist.data.dataset import Dataset, user_filters
from mba_dist.data.pairs import user_range
from mba_dist.data.sampler import NegativeSampler, Observed
from mba_dist.data.stream_ops import drop_known, keys_of, observed, subtract_keys, union_keys
from mba_dist.errors import ConfigError
from mba_dist.mba.roles import Kind
from mba_dist.mba.stages import PART_KIND, StageInput, stage_plan


ROWS_PER_BLOCK = 16_384  # blocks of the once-per-run shuffle (at least MIN_BLOCKS of them)
MIN_BLOCKS = 16
CHUNK_BATCHES = 8  # `full` order: a worker reads its shard this many local batches at a time


def shard_name(stage: StageInput, part: str) -> str:
    """The Ray Train dataset name of one part of a stage (one per stage unless by kind)."""
    return f"{stage.name}.{part}" if stage.by_kind else stage.name


# ---- driver side ------------------------------------------------------------------------------
def train_rows(cfg: C.Config, data_dir) -> int:
    """Train pairs the run reads (from meta.json; each file once)."""
    return sum(n for role, n in pair_sets.role_rows(cfg, Dataset(data_dir)).items()
               if not role.startswith("aux:"))


def _expression(filters: list | None):
    """A `dataset.user_filters` filter as a Ray Data expression (pushed down to the scan)."""
    from ray.data.expressions import col, lit
    ops = {">=": operator.ge, "<": operator.lt}
    terms = [ops[op](col(name), lit(value)) for name, op, value in filters or ()]
    return functools.reduce(operator.and_, terms) if terms else None


class _RowOps:
    """`pair_sets.SetOps` over lazy Ray datasets of the (user, item) rows of one partition's
    users (`StreamPlan.users`)."""

    def __init__(self, plan: "StreamPlan", part: int):
        self.plan, self.part = plan, part

    def read(self, role: str):
        import ray
        each = self.plan.aux_each
        if role == "aux" and each:  # k > 1: a pair seen in several behaviors is one row
            parts = [self._rows(each[0])]
            for n, b in enumerate(each[1:], 1):
                earlier = ray.remote(union_keys).remote(
                    *(self.plan.keys(e, self.part) for e in each[:n]))
                parts.append(self._drop(self._rows(b), earlier))
            return parts[0].union(*parts[1:])
        return self._rows(role)

    def _rows(self, role: str):
        import ray
        rows = ray.data.read_parquet(self.plan.files[role]).select_columns(["user", "item"])
        expr = _expression(self.plan.filters(self.part))
        return rows if expr is None else rows.filter(expr=expr)

    def _drop(self, a, keys_ref):
        return a.map_batches(drop_known, fn_kwargs={"keys_ref": keys_ref,
                                                    "num_items": self.plan.ds.num_items},
                             batch_format="numpy")

    def minus(self, a, role: str):
        return self._drop(a, self.plan.keys(role, self.part))

    def union(self, parts: list):
        return parts[0].union(*parts[1:])


class _KeyOps:
    """`pair_sets.SetOps` over the sorted key arrays of one partition's users in the object
    store (built by Ray tasks)."""

    def __init__(self, plan: "StreamPlan", part: int):
        self.plan, self.part = plan, part

    def read(self, role: str):
        return self.plan.keys(role, self.part)  # built once per role (`StreamPlan.keys`)

    def minus(self, a, role: str):
        import ray
        return ray.remote(subtract_keys).remote(a, self.plan.keys(role, self.part))

    def union(self, parts: list):
        import ray
        return ray.remote(union_keys).remote(*parts)


class Feed(NamedTuple):
    """What a worker needs, besides the rows, to turn its partition of one shard into batches:
    the object-store keys its negatives avoid (None: uniform negatives) and, for a k > 1 kind-A
    part, each auxiliary behavior's keys, all of the partition's users only; in `blocks` order
    also the partition's once-shuffled blocks and their row counts (the workers read them
    directly; no Ray dataset per epoch)."""
    exclude: object | None
    seen: tuple = ()
    blocks: tuple = ()
    rows: tuple = ()


class StreamPlan:
    """The driver's inputs for every stage of a config that the run trains (`skip`: the stages
    it takes from an earlier run) on `world` workers, keyed by shard name: `datasets()` (the
    Ray datasets of the rows) and `feeds()`. In `blocks` order rank r reads only the pairs of
    its users, `data.pairs.user_range(num_users, r, world)` (partition r); in `full` order
    Ray Train splits one partition of all users."""

    def __init__(self, cfg: C.Config, data_dir: str, skip=(), world: int = 1):
        self.cfg, self.ds, self.world = cfg, Dataset(data_dir), world
        pair_sets.check_dataset(cfg, self.ds)
        self.files = {role: [str(self.ds.path(s, b)) for s, b in splits]
                      for role, splits in pair_sets.role_files(cfg, self.ds).items()}
        self.rows = pair_sets.role_rows(cfg, self.ds)
        parts = world if cfg.train.stream_shuffle == "blocks" else 1
        self.users = [user_range(self.ds.num_users, r, parts) for r in range(parts)]
        self._keys: dict[tuple[str, int], object] = {}
        self._shuffled: dict[tuple[str, int], object] = {}
        self.skip = set(skip)
        # k > 1 auxiliary behaviors: their pair sets, in data.aux order (empty for k = 1)
        self.aux_each = [r for r in self.files if r.startswith("aux:")]

    def filters(self, part: int) -> list | None:
        """The Parquet filter of partition `part`'s users."""
        return user_filters(self.users[part], self.ds.num_users)

    def keys(self, name: str, part: int = 0):
        """The object-store ref of the sorted keys of a pair set's pairs of partition `part`'s
        users, built once (a behavior's by a Ray task over its files, the other sets from
        those)."""
        if (name, part) not in self._keys:
            if name in self.files:
                import ray
                ref = ray.remote(keys_of).remote(self.files[name], self.ds.num_items,
                                                 self.filters(part))
            else:
                ref = pair_sets.build(name, _KeyOps(self, part))
            self._keys[name, part] = ref
        return self._keys[name, part]

    def _ordered(self, part: str, users: int):
        """The rows of pair set `part` of partition `users`: for `full` the lazy dataset
        shuffled every epoch, for `blocks` the once-shuffled, materialized one (module
        docstring)."""
        if self.cfg.train.stream_shuffle == "full":
            return pair_sets.build(part, _RowOps(self, users)).random_shuffle()
        if (part, users) not in self._shuffled:  # shared by the stages that read the same set
            rows = pair_sets.build(part, _RowOps(self, users))
            rows_of = self.part_rows()  # merged: target + aux_only (upper bounds serve here)
            n = rows_of.get(part, rows_of.get("target", 0) + rows_of.get("aux_only", 0))
            blocks = max(MIN_BLOCKS, -(-n // (ROWS_PER_BLOCK * len(self.users))))
            self._shuffled[part, users] = rows.random_shuffle(
                seed=self.cfg.train.seed).repartition(blocks).materialize()
        return self._shuffled[part, users]

    def _shards(self):
        """(shard name, stage, part) of every stage the run trains."""
        for stage in stage_plan(self.cfg):
            if stage.name in self.skip:
                continue
            for p in (stage.parts if stage.by_kind else (stage.union,)):
                yield shard_name(stage, p if stage.by_kind else ""), stage, p

    def datasets(self, users: int = 0) -> dict:
        """The Ray dataset of every shard's rows (user, item) of partition `users`, in the
        order of `_ordered`."""
        return {name: self._ordered(part, users) for name, _, part in self._shards()}

    def feeds(self) -> dict[str, tuple[Feed, ...]]:
        """Every shard's feeds, one per partition (rank r reads the r-th, or the only one)."""
        out, local = {}, self.cfg.train.batch_size // self.world
        for name, stage, part in self._shards():
            out[name] = tuple(self._feed(stage, part, p) for p in range(len(self.users)))
            rows = [sum(f.rows) for f in out[name]]  # empty sums for `full` (no blocks)
            least = min(range(len(rows)), key=rows.__getitem__)
            if self.cfg.train.stream_shuffle == "blocks" and rows[least] < local:
                lo, hi = self.users[least]  # every rank would stop at step 0
                raise ConfigError(
                    f"{self.ds.root}: the {part} pairs of rank {least}'s users [{lo}, {hi}) "
                    f"are {rows[least]}, fewer than a local batch (train.batch_size / "
                    f"{self.world} = {local}): train on fewer workers or with a smaller "
                    "train.batch_size")
        return out

    def _feed(self, stage: StageInput, part: str, users: int) -> Feed:
        exclude = (self.keys(stage.exclude, users) if self.cfg.train.negatives == "exclude"
                   else None)
        seen = (tuple(self.keys(r, users) for r in self.aux_each)
                if stage.by_kind and PART_KIND[part] is Kind.A else ())
        if self.cfg.train.stream_shuffle != "blocks":
            return Feed(exclude, seen)
        entries = [e for bundle in self._ordered(part, users).iter_internal_ref_bundles()
                   for e in bundle.blocks]
        return Feed(exclude, seen, tuple(e.ref for e in entries),
                    tuple(e.metadata.num_rows for e in entries))

    def ray_datasets(self) -> dict:
        """What Ray Train splits across the workers: the `full` order's datasets; none for
        `blocks`, whose workers read their blocks from the feeds."""
        return self.datasets() if self.cfg.train.stream_shuffle == "full" else {}

    def part_rows(self) -> dict[str, int]:
        """Rows per part from meta.json (aux_only: an upper bound); weights of interleaving."""
        r = dict(self.rows)
        if "aux" in r:
            r["aux_only"] = r["aux"]
        return r

    def source(self, rank: int = 0) -> "StreamSource":
        """This plan's batches read in this process as rank `rank` of `world` (tests, tools):
        the `full` order through a plain iterator of each dataset (no split)."""
        if self.cfg.train.stream_shuffle == "full" and self.world > 1:
            raise ValueError("the full order is split across workers by Ray Train only")
        shards = {n: d.iterator() for n, d in self.ray_datasets().items()}
        return StreamSource.of(self.worker_inputs(), shards, self.cfg, rank, self.world)

    def worker_inputs(self) -> dict:
        """What every worker's `StreamSource.of` takes besides its Ray Data shards: plain data
        and object refs, which travel in the workers' loop config."""
        return {"feeds": self.feeds(), "part_rows": self.part_rows(),
                "num_items": self.ds.num_items}


# ---- worker side ------------------------------------------------------------------------------
class StreamSource:
    """Batches from this worker's part of the stream: per shard its blocks (`blocks` order) or
    its Ray Data shard (`full`), with the negatives and the behaviors seen in drawn here."""

    def __init__(self, feeds: dict[str, tuple[Feed, ...]], shards: dict, train: C.TrainConfig,
                 batch_order: str, rank: int, world: int, part_rows: dict[str, int],
                 num_items: int):
        self.feeds, self.shards, self.local = feeds, shards, train.batch_size // world
        self.rank, self.world, self.num_items = rank, world, num_items
        self.seed, self.batch_order, self.part_rows = train.seed, batch_order, part_rows
        self.order = train.stream_shuffle
        self.threads = train.data_threads or data_threads()
        self._index: dict[str, Observed] = {}

    @classmethod
    def of(cls, inputs: dict, shards: dict, cfg: C.Config, rank: int,
           world: int) -> "StreamSource":
        """Rank `rank`'s source from a plan's `worker_inputs` and its Ray Data shards."""
        return cls(inputs["feeds"], shards, cfg.train, cfg.mba.batch_order, rank, world,
                   inputs["part_rows"], inputs["num_items"])

    def check(self, stage: StageInput) -> None:
        for p in (stage.parts if stage.by_kind else ("",)):
            name = shard_name(stage, p)
            if name not in self.feeds or (self.order == "full" and name not in self.shards):
                raise ConfigError(f"stage {stage.name}: no dataset shard {name!r}")

    def _feed(self, name: str) -> Feed:
        """This rank's feed of a shard: its partition's, or the one all ranks share (`full`)."""
        feeds = self.feeds[name]
        return feeds[self.rank] if len(feeds) > 1 else feeds[0]

    def _chunks(self, name: str, key: list[int]) -> tuple[Iterator, int | None]:
        """This worker's epoch of one shard as chunks of rows, and the step at which every rank
        stops (None: where its shard ends, which `equal=True` makes the same on every rank).
        `blocks`: its partition's blocks in a new random order every epoch;
        `full`: its Ray Data shard, CHUNK_BATCHES local batches at a time."""
        if self.order == "full":
            return self.shards[name].iter_batches(batch_size=CHUNK_BATCHES * self.local,
                                                  batch_format="numpy", prefetch_batches=1), None
        feed = self._feed(name)
        order = np.random.default_rng([*key, 104729, self.rank]).permutation(len(feed.blocks))
        # the partitions hold about equal rows, but every rank stops where the one with the
        # fewest runs out, so that collectives never wait
        stop = min(sum(f.rows) for f in self.feeds[name]) // self.local
        return (feed.blocks[b] for b in order), stop

    def _observed(self, ref) -> Observed:
        """The membership index of an object-store key array, kept by this source."""
        return observed(ref, self.num_items, self._index)

    def _assemble(self, exclude: Observed | None, seen: list[Observed], key: list[int],
                  n: int, chunk) -> tuple:
        """A chunk's rows as arrays, with their negatives and (k > 1, kind A) seen-in masks."""
        if not isinstance(chunk, dict):  # an object-store block (a pyarrow table)
            import ray
            t = ray.get(chunk)
            chunk = {c: t.column(c).to_numpy() for c in ("user", "item")}
        u, i = (chunk[c].astype(np.int64, copy=False) for c in ("user", "item"))
        neg = NegativeSampler(self.num_items, exclude, [*key, 7919, self.rank, n]).sample(u)
        return u, i, neg, np.stack([o.contains(u, i) for o in seen]) if seen else None

    def _iter(self, name: str, kind, stage: StageInput, epoch: int) -> Iterator[Batch]:
        """Local batches of one shard. Each chunk is mixed with the rows the previous one left
        over and permuted before it is cut, so a batch's rows change from epoch to epoch."""
        feed, local = self._feed(name), self.local
        key = [self.seed, zlib.crc32(name.encode()) % 100_003, epoch]  # the shard's randomness
        chunks, stop = self._chunks(name, key)
        exclude = None if feed.exclude is None else self._observed(feed.exclude)
        seen = [self._observed(r) for r in feed.seen]  # built here, not in the threads
        rng = np.random.default_rng([*key, 15485863, self.rank])
        left, steps = None, 0
        for cols in prefetch(lambda c: self._assemble(exclude, seen, key, *c), enumerate(chunks),
                             self.threads):
            if left is not None:
                cols = tuple(None if a is None else np.concatenate([a, b], axis=-1)
                             for a, b in zip(left, cols))
            perm = rng.permutation(cols[0].shape[-1])
            cols = tuple(None if c is None else c[..., perm] for c in cols)
            full = len(perm) - len(perm) % local
            for a in range(0, full, local):
                if steps == stop:
                    return
                steps += 1
                u, i, neg, positive = (None if c is None else c[..., a:a + local] for c in cols)
                yield Batch(kind, u, i, neg, positive)
            if steps == stop:  # no further block to fetch
                return
            left = tuple(None if c is None else c[..., full:] for c in cols)

    def epoch(self, stage: StageInput, epoch: int) -> Iterator[Batch]:
        if not stage.by_kind:
            yield from self._iter(shard_name(stage, ""), None, stage, epoch)
            return
        its = {p: self._iter(shard_name(stage, p), PART_KIND[p], stage, epoch)
               for p in stage.parts}
        if self.batch_order == "sequential":
            yield from itertools.chain(*its.values())
            return
        # Interleaved: the same draws on every rank (same seed); a part runs out on every rank
        # at the same step (`_chunks`' common stop, or equal shards), so ranks stay in lockstep.
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
