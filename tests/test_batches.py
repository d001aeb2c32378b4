import threading

import pytest

from mba_dist.batches import prefetch


def _threads() -> int:
    return sum(t.name == "mba-prefetch" for t in threading.enumerate())


def test_prefetch_keeps_items_and_order():
    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))
    assert _threads() == 0


def test_prefetch_raises_the_sources_error():
    def bad():
        yield 1
        raise ValueError("broken batch")

    it = prefetch(bad())
    assert next(it) == 1
    with pytest.raises(ValueError, match="broken batch"):
        next(it)


def test_prefetch_stops_its_thread_when_closed_early():
    it = prefetch(iter(range(10**9)))
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    assert _threads() == 0
