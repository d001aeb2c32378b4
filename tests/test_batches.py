import threading
import time

import numpy as np
import pytest

from mba_dist.config import TrainConfig
from mba_dist.data.batches import MemorySource, prefetch
from mba_dist.mba.stages import MBA_INPUT
from mba_dist.data.pairs import Pairs, dedup_sorted
from mba_dist.data.train_data import TrainData


def _threads() -> int:
    return sum(t.name.startswith("mba-prefetch") for t in threading.enumerate())


def _same(x):
    return x


@pytest.mark.parametrize("threads", [1, 3])
def test_prefetch_keeps_items_and_order(threads):
    def slow_evens(x):  # later items finish first
        time.sleep(0.002 * (x % 2 == 0))
        return x * x
    assert list(prefetch(slow_evens, iter(range(50)), threads, depth=3)) == [x * x for x in range(50)]
    assert _threads() == 0


@pytest.mark.parametrize("threads", [1, 3])
def test_prefetch_raises_the_error_in_order(threads):
    def bad(x):
        if x == 4:
            raise ValueError("broken batch")
        return x

    it = prefetch(bad, iter(range(10)), threads)
    assert [next(it) for _ in range(4)] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="broken batch"):
        next(it)
    assert _threads() == 0

    def bad_items():
        yield 1
        raise ValueError("broken plan")
    it = prefetch(_same, bad_items(), threads)
    with pytest.raises(ValueError, match="broken plan"):
        list(it)


def test_prefetch_stops_its_threads_when_closed_early():
    it = prefetch(_same, iter(range(10**9)), threads=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    assert _threads() == 0


def _source(threads: int, rank: int = 0, world: int = 1) -> MemorySource:
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 300, 5000), rng.integers(0, 200, 5000)
    target = Pairs(*dedup_sorted(users[:2000], items[:2000], 200))
    aux = Pairs(*dedup_sorted(users, items, 200))
    data = TrainData(300, 200, target, aux, target, target, None)
    train = TrainConfig(batch_size=128, negatives="exclude", seed=3, data_threads=threads)
    return MemorySource(data, train, batch_order="interleaved", rank=rank, world=world)


def test_batches_do_not_depend_on_the_number_of_threads():
    """Each batch draws from its own seed: 1 or 4 assembling threads give the same epoch."""
    one, four = (list(_source(t).epoch(MBA_INPUT, 2)) for t in (1, 4))
    assert len(one) == len(four) > 10
    for a, b in zip(one, four):
        assert a.kind == b.kind
        for x, y in zip(a[1:], b[1:]):
            np.testing.assert_array_equal(x, y)
    src = _source(2)
    obs = src._observed("merged")
    for b in one:
        assert not obs.contains(b.users, b.neg).any()  # negatives avoid every observed pair


def test_every_world_size_trains_on_the_same_triples():
    """The ranks' shares of each global batch, negatives included, are the one-rank batch's
    rows [rank::W]: a run resumed on another number of ranks goes on with the same triples."""
    one = list(_source(1).epoch(MBA_INPUT, 2))
    three = [list(_source(1, r, 3).epoch(MBA_INPUT, 2)) for r in range(3)]
    assert all(len(s) == len(one) > 10 for s in three)
    for step, whole in enumerate(one):
        for r, shares in enumerate(three):
            part = shares[step]
            assert part.kind == whole.kind
            for x, y in zip(part[1:4], whole[1:4]):
                np.testing.assert_array_equal(x, y[r::3])
