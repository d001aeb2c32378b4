"""k auxiliary behaviors (DESIGN §11): `data.aux: [click, cart]` trains a pretrained model and
h models per behavior, tells each auxiliary-only pair's behaviors to the loss, and reports a
baseline row per behavior; k = 1, however spelled, is the paper's method unchanged."""
import numpy as np
import pytest
import torch

from mba_dist import config as C
from mba_dist.data.batches import MemorySource
from mba_dist.data.dataset import Dataset
from mba_dist.data.pairs import contains
from mba_dist.data.train_data import TrainData
from mba_dist.mba.roles import AuxRoles, Kind
from mba_dist.mba.stages import MBA_INPUT, stage_plan

TWO = ["data.aux=[click,cart]"]


@pytest.fixture(scope="module")
def two_aux(tmp_path_factory):
    """The tiny synthetic set with a second auxiliary behavior (cart)."""
    from data_prep.synthetic import SynthSpec, generate

    path = tmp_path_factory.mktemp("data") / "two"
    generate(SynthSpec(users=300, items=200, topics=10, seed=0, carts=True), path)
    return path


def test_the_config_names_each_behavior_and_refuses_what_is_defined_for_one():
    one = C.load_config(None, ["data.aux=[click]"])
    assert one == C.load_config(None, ["data.aux=click"])  # a list of one is that behavior
    assert C.to_dict(one)["data"]["aux"] == "click"
    cfg = C.load_config(None, TWO)
    assert cfg.data.aux_behaviors == ("click", "cart") and cfg.data.aux_label == "click+cart"
    assert C.load_config(C.to_dict(cfg)) == cfg  # round-trips through config.yaml
    roles = AuxRoles(cfg.data.aux_behaviors)
    assert roles.frozen == ("pre_f", "pre_click", "pre_cart")
    assert roles.h(2) == ("h2_f", "h2_click", "h2_cart")
    assert AuxRoles(("cart",)).frozen == ("pre_f", "pre_g")  # k = 1: the paper's names
    assert [s.name for s in stage_plan(cfg)] == ["pre_f", "pre_click", "pre_cart", "mf_merged",
                                                 "mba"]
    assert cfg.mba.kl_weights(2) == 10.0
    assert C.load_config(None, TWO + ["mba.alpha_g=3"]).mba.kl_weights(2) == (10.0, 3.0, 3.0)
    each = C.load_config(None, TWO + ["mba.alpha_each=[1,2.5]"]).mba
    assert each.kl_weights(2) == (10.0, 1.0, 2.5)
    assert cfg.mba.blend_weights(2) == (0.0, 0.0)
    assert C.load_config(None, TWO + ["mba.blend_each=[0,0.3]"]).mba.blend_weights(2) == (0, 0.3)
    bad = {"data.aux=[click,click]": "names a behavior twice",
           "data.aux=[click,purchase]": "data.aux and data.target both hold 'purchase'",
           "data.aux=[click,t]": "cannot name models",
           "mba.blend_g=0.1": "mba.blend_g is defined for one auxiliary behavior",
           "mba.t_init=pre_g": "mba.t_init: pre_g is defined for one auxiliary behavior",
           "mba.joint_pretrain=true": "mba.joint_pretrain is defined for one",
           "mba.alpha_each=[1]": "mba.alpha_each has 1 weights for 2 auxiliary behaviors",
           "mba.alpha_each=[1,-1]": "mba.alpha_each must hold finite weights of at least 0",
           "mba.blend_each=[0.1]": "mba.blend_each has 1 weights for 2 auxiliary behaviors",
           "mba.aux_weight_each=[1,1,1]": "mba.aux_weight_each has 3 weights for 2 auxiliary",
           "mba.aux_weight_each=[0.5,nan]": "mba.aux_weight_each must hold finite weights",
           "mba.blend_each=[0.2,0.2]": r"mba.blend_each must sum to at most 1 - mba.beta = 0.3",
           "mba.t_init=pre_h": "mba.t_init must be one of random, pre_f, pre_click, pre_cart"}
    for item, msg in bad.items():
        with pytest.raises(C.ConfigError, match=msg):
            C.load_config(None, [item] if item.startswith("data.") else TWO + [item])


def test_auxiliary_only_batches_carry_the_behaviors_each_pair_was_seen_in(two_aux):
    ds = Dataset(two_aux)
    cfg = C.load_config(None, TWO + ["train.batch_size=64"])
    data = TrainData.load(ds, cfg)
    n = ds.num_items
    each = {b: ds.pairs("train", b) for b in ("click", "cart")}
    assert set(data.aux_each) == {"aux:click", "aux:cart"}
    assert len(data.aux) < len(each["click"]) + len(each["cart"])  # the union, overlaps once
    kinds, both = set(), 0
    for b in MemorySource(data, cfg.train, "interleaved").epoch(MBA_INPUT, 1):
        kinds.add(b.kind)
        if b.kind is Kind.B:
            assert b.positive is None  # a purchase counts for every behavior
            continue
        assert b.positive.shape == (2, len(b.users)) and b.positive.dtype == bool
        keys = b.users * n + b.pos
        for row, name in zip(b.positive, ("click", "cart")):
            assert np.array_equal(row, contains(each[name].keys(n), keys))
        assert b.positive.any(axis=0).all()  # every auxiliary-only pair was seen somewhere
        both += int(b.positive.all(axis=0).sum())
    assert kinds == {Kind.A, Kind.B} and both > 0
    one = C.load_config(None, ["data.aux=click", "train.batch_size=64"])
    src = MemorySource(TrainData.load(ds, one), one.train, "sequential")
    assert all(b.positive is None for b in src.epoch(MBA_INPUT, 1))


def test_two_behaviors_train_evaluate_and_reuse_their_stage_one(two_aux, tmp_path):
    from mba_dist.api import fit
    from mba_dist.run_dir import RunDir
    from mba_dist.train import checkpoint

    sets = TWO + ["pretrain.epochs=3", "mba.epochs=2", "eval.top_n=3"]
    run = fit(two_aux, tmp_path / "run", sets=sets, local=True)
    m = run.metrics
    assert set(m["stages"]) == {"pre_f", "pre_click", "pre_cart", "mf_merged", "mba"}
    rows = set(m["baselines"])
    assert {"mf_purchase", "mf_click", "mf_cart", "mf_merged", "aux_memory_click+cart",
            "mba"} <= rows
    assert 0 < m["test"]["recall@20"] <= 1
    mba = checkpoint.load_stage_weights(run.path / "checkpoints" / "mba")
    assert set(mba) == {"t", "h1_f", "h1_click", "h1_cart", "h2_f", "h2_click", "h2_cart"}
    assert not torch.equal(mba["h1_click"][0], mba["h1_cart"][0])  # each its own model
    evaluated = RunDir(run.path).load().evaluate(with_baselines=True)
    assert evaluated["mba"]["test"]["recall@20"] == pytest.approx(m["test"]["recall@20"])
    # t starts as pre_cart (a vanishing learning rate keeps it there); the score blends both
    variants = ["mba.t_init=pre_cart", "optim.lr=1e-12", "mba.blend_each=[0.1,0.05]"]
    again = fit(two_aux, tmp_path / "again", local=True,
                sets=sets + [f"pretrain.from_run={run.path}"] + variants)
    trained = {n for n, st in again.metrics["stages"].items() if st["epochs_run"]}
    assert trained == {"mba"}  # stage 1 of every behavior reused
    assert {r["stage"] for r in RunDir(again.path).read_log()} == {"mba"}
    t = checkpoint.load_stage_weights(again.path / "checkpoints" / "mba")["t"]
    cart = checkpoint.load_stage_weights(run.path / "checkpoints" / "pre_cart")["pre_cart"]
    for a, b in zip(t, cart):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    finished = RunDir(again.path).load()
    assert [w for w, _ in finished.scorer().parts] == pytest.approx([0.7, 0.15, 0.1, 0.05])
    blended = finished.evaluate(with_baselines=False)["mba"]["test"]["recall@20"]
    assert blended == pytest.approx(again.metrics["test"]["recall@20"])  # fit and read agree


def test_the_stream_gives_each_auxiliary_only_pair_once_with_its_behaviors(two_aux):
    """The Ray Data stream's kind-A part for k = 2: the same pairs as in memory (a pair seen
    in both behaviors once), each with the behaviors it was seen in."""
    import ray

    from mba_dist.data.stream import StreamPlan, shard_name
    from mba_dist.dist.ray import init_ray

    ds = Dataset(two_aux)
    cfg = C.load_config(None, TWO + ["train.batch_size=256", "train.input=stream"])
    C.validate_world(cfg, 1, stream=True)
    mem = MemorySource(TrainData.load(ds, cfg), cfg.train, "sequential")
    want = mem.pairs("aux_only")
    n = ds.num_items
    started = init_ray()
    try:
        world = 2  # two ranks: each reads, and holds the keys of, its own users
        # only the MBA stage's shards (stage 1's are not read here)
        plan = StreamPlan(cfg, str(two_aux), world=world,
                          skip=[s.name for s in stage_plan(cfg) if s.name != MBA_INPUT.name])
        got, seen = [], []
        for r in range(world):
            source = plan.source(r)
            for b in source.epoch(MBA_INPUT, 1):
                if b.kind is Kind.A:
                    got.append(b.users * n + b.pos)
                    seen.append(b.positive)
                else:
                    assert b.positive is None
        rows = [sum(f.rows) for f in source.feeds[shard_name(MBA_INPUT, "aux_only")]]
        keys, seen = np.concatenate(got), np.concatenate(seen, axis=1)
        # every pair once, less the tails and the larger partition's excess
        assert len(np.unique(keys)) == len(keys) > len(want) - 256 - (max(rows) - min(rows))
        assert contains(want.keys(n), keys).all()
        order = np.argsort(keys)
        mem_seen = mem.seen_in("aux_only")[:, np.searchsorted(want.keys(n), keys[order])]
        assert np.array_equal(seen[:, order], mem_seen)
    finally:
        if started:
            ray.shutdown()
