"""What each stage trains on, and where its batches come from.

A stage reads the union of some *pair sets* of the train split and draws its negatives outside
another one:

    pair set   pairs
    target     target train pairs                       (MBA kind B)
    aux        auxiliary train pairs
    aux_only   auxiliary pairs that are not target ones (MBA kind A)
    merged     target + aux_only                        (every observed pair)

A *source* yields this rank's batches of one epoch of a stage as `Batch(kind, users, pos, neg)`.
Two sources share the trainer: `MemorySource` (pairs in memory, this module) and
`stream.StreamSource` (Ray Data shards). Both keep ranks in lockstep: every rank yields the
same number of batches of the same kinds in the same order, so collectives never wait.

Randomness of `MemorySource` is keyed by (seed, stage, epoch, rank) for the batches and by that
and the step for each batch's negatives, never carried from one batch or epoch to the next: a
run resumed from an epoch checkpoint draws exactly the batches and negatives the uninterrupted
run would have drawn, and batches can be assembled by several threads at once.
"""
from __future__ import annotations

import collections
import os
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterator, NamedTuple, TypeVar

import numpy as np

from mba_dist.dataset import Pairs, merge_pairs, subtract_pairs
from mba_dist.losses import Kind
from mba_dist.sampler import NegativeSampler, Observed

PART_KIND = {"target": Kind.B, "aux_only": Kind.A}
T = TypeVar("T")
U = TypeVar("U")


class Batch(NamedTuple):
    kind: Kind | None  # MBA: which loss applies; None in BPR stages
    users: np.ndarray  # int64 [b]
    pos: np.ndarray
    neg: np.ndarray


@dataclass(frozen=True)
class StageInput:
    name: str  # the stage and the model it trains
    parts: tuple[str, ...]  # pair sets whose union is trained on
    exclude: str  # pair set that negatives avoid (in `train.negatives: exclude` mode)
    by_kind: bool = False  # MBA: homogeneous batches per part (the loss differs by kind)

    @property
    def key(self) -> int:
        """A stable number for this stage, mixed into its random seeds."""
        return zlib.crc32(self.name.encode()) % 100_003


def bpr_input(name: str, train_on: str) -> StageInput:
    """BPR on `train_on` (target, aux or merged); negatives avoid the same set."""
    parts = ("target", "aux_only") if train_on == "merged" else (train_on,)
    return StageInput(name, parts, train_on)


# `mf_train_on` -> the pair set an MF baseline trains on
MF_TRAIN_SETS = {"target": "target", "aux": "aux", "all": "merged"}

MBA_INPUT = StageInput("mba", ("target", "aux_only"), "merged", by_kind=True)


def split_batches(n: int, batch_size: int, rank: int, world: int,
                  rng: np.random.Generator) -> list[np.ndarray]:
    """This rank's share of every global batch of a shuffled epoch over n rows. Every rank draws
    the same permutation, so all take the same number of steps in the same order; a tail batch
    smaller than the world size is dropped, so no rank ever steps on an empty share."""
    perm = rng.permutation(n)
    return [perm[a:a + batch_size][rank::world] for a in range(0, n, batch_size)
            if min(batch_size, n - a) >= world]


class MemorySource:
    """Batches from pairs held in memory (`TrainData`), split by rank."""

    def __init__(self, data, batch_size: int, negatives: str, seed: int, batch_order: str,
                 rank: int = 0, world: int = 1, threads: int = 0):
        self.data, self.batch_size, self.negatives = data, batch_size, negatives
        self.seed, self.batch_order, self.rank, self.world = seed, batch_order, rank, world
        self.threads = threads or data_threads()
        self._index: dict[str, Observed] = {}

    @cached_property
    def _sets(self) -> dict[str, Pairs]:
        d = self.data
        sets = {"target": d.target}
        if d.aux is not None:
            sets["aux"] = d.aux
            sets["aux_only"] = subtract_pairs(d.aux, d.target, d.num_items)
            sets["merged"] = merge_pairs([d.target, d.aux], d.num_items)
        return sets

    def pairs(self, name: str) -> Pairs:
        if name not in self._sets:
            raise ValueError(f"pair set {name!r} needs data.aux")
        return self._sets[name]

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
                raise ValueError(f"stage {stage.name}: no {part} training pairs")

    def epoch(self, stage: StageInput, epoch: int) -> Iterator[Batch]:
        """This rank's batches of one epoch, assembled a few ahead by `threads` threads
        (`prefetch`)."""
        return prefetch(self._assemble, self._plan(stage, epoch), self.threads)

    def _plan(self, stage: StageInput, epoch: int) -> Iterator[tuple]:
        """What each batch of the epoch is: (kind, pairs, row indices, negative-sampling seed)."""
        rng = np.random.default_rng([self.seed, stage.key, epoch])
        observed = self._observed(stage.exclude) if self.negatives == "exclude" else None
        if stage.by_kind:
            runs = [(PART_KIND[p], self.pairs(p)) for p in stage.parts]
        else:  # one shuffled order over the union ("target" + "aux_only" is "merged")
            runs = [(None, self.pairs("merged" if len(stage.parts) > 1 else stage.parts[0]))]
        batches = [(kind, pairs, idx) for kind, pairs in runs
                   for idx in split_batches(len(pairs), self.batch_size, self.rank, self.world, rng)]
        order = (np.arange(len(batches)) if self.batch_order == "sequential" or not stage.by_kind
                 else rng.permutation(len(batches)))
        for step, bi in enumerate(order):
            # each batch its own stream of negatives, so that any thread can draw it
            yield (*batches[bi], observed, [self.seed, stage.key, epoch, 7919, self.rank, step])

    def _assemble(self, plan: tuple) -> Batch:
        kind, pairs, idx, observed, seed = plan
        u = pairs.users[idx]
        neg = NegativeSampler(self.data.num_items, observed, seed).sample(u)
        return Batch(kind, u, pairs.items[idx], neg)


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
