"""One stage plan and one definition of the pair sets, consumed exactly by both input paths:
the in-memory source and the Ray Data stream train every stage on the same pairs."""
import numpy as np
import pytest

from mba_dist import config as C
from mba_dist.data.batches import MemorySource
from mba_dist.data.dataset import Dataset
from mba_dist.data.train_data import TrainData
from mba_dist.mba.stages import stage_plan

CFG = ["data.aux=click", "train.batch_size=64", "train.merged_baseline=true"]


def _keys(users, items, n):
    return set((np.asarray(users, np.int64) * n + np.asarray(items, np.int64)).tolist())


@pytest.fixture(scope="module")
def plan_and_sets(tiny_dataset):
    cfg = C.load_config("configs/synthetic.yaml", CFG)
    ds = Dataset(tiny_dataset)
    data = TrainData.load(ds, cfg)
    src = MemorySource(data, cfg.train, cfg.mba.batch_order)
    plan = stage_plan(cfg)
    sets = {name: src.pairs(name) for name in ("target", "aux", "aux_only", "merged")}
    return cfg, ds, plan, sets, src


def test_the_plan_and_the_sets(plan_and_sets):
    cfg, ds, plan, sets, _ = plan_and_sets
    assert [s.name for s in plan] == ["pre_f", "pre_g", "mf_merged", "mba"]
    n = ds.num_items
    k = {name: _keys(p.users, p.items, n) for name, p in sets.items()}
    assert k["aux_only"] == k["aux"] - k["target"] and k["merged"] == k["target"] | k["aux"]
    assert k["target"] and k["aux_only"]


def test_memory_epochs_consume_exactly_the_sets(plan_and_sets):
    cfg, ds, plan, sets, src = plan_and_sets
    n = ds.num_items
    for stage in plan:
        got: dict = {}
        for b in src.epoch(stage, 1):
            got.setdefault(b.kind, set()).update(_keys(b.users, b.pos, n))
        if stage.by_kind:
            from mba_dist.mba.stages import PART_KIND
            for part in stage.parts:
                want = _keys(sets[part].users, sets[part].items, n)
                assert got[PART_KIND[part]] == want, (stage.name, part)
        else:
            want = _keys(sets[stage.union].users, sets[stage.union].items, n)
            assert got[None] == want, stage.name


def test_the_stream_consumes_exactly_the_sets(plan_and_sets, tiny_dataset):
    from mba_dist.data.stream import StreamPlan, shard_name
    from mba_dist.dist.ray import init_ray

    cfg, ds, plan, sets, _ = plan_and_sets
    n = ds.num_items
    started = init_ray()
    import ray
    try:
        world = 2  # two ranks: each its users' part of every set, together all of it
        stream = StreamPlan(cfg, str(tiny_dataset), world=world)
        per_rank = [stream.datasets(r) for r in range(world)]
        for stage in plan:
            for part in (stage.parts if stage.by_kind else (stage.union,)):
                name = shard_name(stage, part if stage.by_kind else "")
                rows = []
                for r, d in enumerate(per_rank):
                    mine = d[name].take_all()
                    lo, hi = stream.users[r]
                    assert all(lo <= row["user"] < hi for row in mine)
                    rows += mine
                got = _keys([r["user"] for r in rows], [r["item"] for r in rows], n)
                assert len(rows) == len(got)  # every pair once per epoch
                assert got == _keys(sets[part].users, sets[part].items, n), (stage.name,
                                                                             part, world)
    finally:
        if started:
            ray.shutdown()
