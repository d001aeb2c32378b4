"""Where a stage's batches come from: the in-memory source, and the shared batch helpers.

A *source* yields this rank's batches of one epoch of a stage (`mba.stages.StageInput`) as
`Batch(kind, users, pos, neg, positive)`. Two sources share the fit loop: `MemorySource`
(pairs in memory, this module) and `stream.StreamSource` (Ray Data shards). Both read the pair
sets of `pair_sets.build` and keep ranks in lockstep: every rank yields the same number of
batches of the same kinds in the same order, so collectives never wait.

Randomness of `MemorySource` is keyed by (seed, stage, epoch) for the global batches and by that
and the step for each global batch's negatives, never carried from one batch or epoch to the
next and the same on every world size: a run resumed from an epoch checkpoint, on any number of
ranks, draws exactly the triples the uninterrupted run would have drawn, and batches can be
assembled by several threads at once.
"""
from __future__ import annotations

import collections
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator, NamedTuple, TypeVar

import numpy as np

from mba_dist import config as C
from mba_dist.data import pair_sets
from mba_dist.data.pairs import Pairs, contains, merge_pairs, subtract_pairs
from mba_dist.data.sampler import NegativeSampler, Observed
from mba_dist.errors import ConfigError
from mba_dist.mba.roles import Kind
from mba_dist.mba.stages import PART_KIND, StageInput

T = TypeVar("T")
U = TypeVar("U")


class Batch(NamedTuple):
    kind: Kind | None  # MBA: which loss applies; None in BPR stages
    users: np.ndarray  # int64 [b]
    pos: np.ndarray
    neg: np.ndarray
    # k > 1 auxiliary behaviors, kind-A batches: bool [k, b], in which behaviors each pair was
    # observed (DESIGN §11); None: every auxiliary behavior (kind B) or the one there is (k = 1)
    positive: np.ndarray | None = None


def global_batches(n: int, batch_size: int, world: int,
                   rng: np.random.Generator) -> list[np.ndarray]:
    """The global batches of a shuffled epoch over n rows (a rank takes `[rank::world]` of
    each). Every rank draws the same permutation, so all take the same number of steps in the
    same order; a tail batch smaller than the world size is dropped, so no rank ever steps on an
    empty share."""
    perm = rng.permutation(n)
    return [perm[a:a + batch_size] for a in range(0, n, batch_size)
            if min(batch_size, n - a) >= world]


class MemorySource:
    """Batches from pairs held in memory (`TrainData`), split by rank."""

    def __init__(self, data, train: C.TrainConfig, batch_order: str, rank: int = 0,
                 world: int = 1):
        self.data, self.batch_size, self.negatives = data, train.batch_size, train.negatives
        self.seed, self.batch_order, self.rank, self.world = train.seed, batch_order, rank, world
        self.threads = train.data_threads or data_threads()
        self._sets: dict[str, Pairs] = {}
        self._index: dict[str, Observed] = {}
        self._seen_in: dict[str, np.ndarray | None] = {}

    def pairs(self, name: str) -> Pairs:
        """A pair set (`pair_sets.build`), built once."""
        if name not in self._sets:
            self._sets[name] = pair_sets.build(name, _MemoryOps(self.data))
        return self._sets[name]

    def seen_in(self, name: str) -> np.ndarray | None:
        """k > 1 auxiliary behaviors: bool [k, len(pairs(name))], whether each pair of a set is
        a train pair of each auxiliary behavior (in `data.aux` order); None for k = 1."""
        if name not in self._seen_in:
            each, pairs = self.data.aux_each, self.pairs(name)
            n = self.data.num_items
            self._seen_in[name] = (np.stack([contains(p.keys(n), pairs.keys(n))
                                             for p in each.values()]) if each else None)
        return self._seen_in[name]

    def _observed(self, name: str) -> Observed:
        """The membership index of a pair set, built once (not every epoch)."""
        if name not in self._index:
            self._index[name] = Observed(self.pairs(name).keys(self.data.num_items),
                                         self.data.num_items)
        return self._index[name]

    def check(self, stage: StageInput) -> None:
        """Fail before training when a stage has nothing to train on."""
        for part in stage.parts:
            if len(self.pairs(part)) == 0:
                raise ConfigError(f"stage {stage.name}: no {part} training pairs")

    def epoch(self, stage: StageInput, epoch: int) -> Iterator[Batch]:
        """This rank's batches of one epoch, assembled a few ahead by `threads` threads
        (`prefetch`)."""
        return prefetch(self._assemble, self._plan(stage, epoch), self.threads)

    def _plan(self, stage: StageInput, epoch: int) -> Iterator[tuple]:
        """What each batch of the epoch is: (kind, pairs, behaviors seen in, row indices,
        negative-sampling seed)."""
        rng = np.random.default_rng([self.seed, stage.key, epoch])
        observed = self._observed(stage.exclude) if self.negatives == "exclude" else None
        if stage.by_kind:
            runs = [(PART_KIND[p], self.pairs(p), self.seen_in(p) if PART_KIND[p] is Kind.A
                     else None) for p in stage.parts]
        else:  # one shuffled order over the union ("target" + "aux_only" is "merged")
            runs = [(None, self.pairs(stage.union), None)]
        batches = [(kind, pairs, seen, idx) for kind, pairs, seen in runs
                   for idx in global_batches(len(pairs), self.batch_size, self.world, rng)]
        order = (np.arange(len(batches)) if self.batch_order == "sequential" or not stage.by_kind
                 else rng.permutation(len(batches)))
        for step, bi in enumerate(order):
            # each batch its own stream of negatives, so that any thread can draw it (the 0 is
            # where a rank number once was: one-rank runs keep the draws they had)
            yield (*batches[bi], observed, [self.seed, stage.key, epoch, 7919, 0, step])

    def _assemble(self, plan: tuple) -> Batch:
        """This rank's share of a global batch. The negatives are drawn for the whole global
        batch from its step's seed and sliced like the rows, so that every world size trains on
        the same triples (a run resumed on another number of ranks goes on as the uninterrupted
        one; W times the draws of a share, a small part of a step)."""
        kind, pairs, seen, idx, observed, seed = plan
        users = pairs.users[idx]
        neg = NegativeSampler(self.data.num_items, observed, seed).sample(users)
        share = slice(self.rank, None, self.world)
        idx = idx[share]
        return Batch(kind, users[share], pairs.items[idx], neg[share],
                     None if seen is None else seen[:, idx])


class _MemoryOps:
    """`pair_sets.SetOps` over the pairs of a `TrainData`."""

    def __init__(self, data):
        self.data = data

    def read(self, role: str) -> Pairs:
        pairs = (self.data.target if role == "target" else self.data.aux if role == "aux"
                 else self.data.aux_each.get(role))
        if pairs is None:
            raise ConfigError(f"the {role} pair set needs data.aux")
        return pairs

    def minus(self, a: Pairs, role: str) -> Pairs:
        return subtract_pairs(a, self.read(role), self.data.num_items)

    def union(self, parts: list[Pairs]) -> Pairs:
        return merge_pairs(parts, self.data.num_items)


def data_threads() -> int:
    """Batch-assembly threads of a source by default: one per four cores, at most 4 (on a small
    host the cores run the training step)."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def prefetch(fn: Callable[[T], U], items: Iterator[T], threads: int = 1,
             depth: int = 2) -> Iterator[U]:
    """Yields fn(x) for the items in order, computed up to `threads + depth` ahead by
    `threads` background threads: slicing and negative sampling (numpy kernels, which release
    the GIL) overlap the training step instead of preceding it, and on a GPU host several
    batches are assembled at once. The results and their order are those of a plain loop; an
    error raised by `fn` or `items` is raised here, in order. Closing this generator early
    cancels what is pending and waits for the threads."""
    ahead: collections.deque[Future] = collections.deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="mba-prefetch") as pool:
        try:
            for x in items:
                ahead.append(pool.submit(fn, x))
                if len(ahead) > threads + depth - 1:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()
        finally:
            for f in ahead:
                f.cancel()
