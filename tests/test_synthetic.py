"""Synthetic generator: structure of the planted data, streaming, and (slow) MBA recovery."""
import json

import pytest

from data_prep.synthetic import SynthSpec, generate
from mba_dist.data.dataset import Dataset


def _keys(p, n):
    return set((p.users * n + p.items).tolist())


def test_planted_structure(tmp_path):
    generate(SynthSpec(users=400, items=300, topics=10, seed=3), tmp_path / "d")
    ds = Dataset(tmp_path / "d")
    n = ds.num_items
    buy_tr, click = _keys(ds.pairs("train", "purchase"), n), _keys(ds.pairs("train", "click"), n)
    valid, test = _keys(ds.pairs("valid", "purchase"), n), _keys(ds.pairs("test", "purchase"), n)
    truth = _keys(ds.pairs("truth", "purchase"), n)
    assert buy_tr <= click  # every purchase is also a click
    assert not (truth & buy_tr)  # truth excludes train purchases
    assert test <= truth and valid <= truth  # held-out purchases are true preferences
    assert len(click - truth - buy_tr) > 0.2 * len(click)  # plenty of false clicks
    assert len(buy_tr) < len(click) / 3  # the target behavior is the sparse one


def test_a_second_auxiliary_behavior_is_sparser_cleaner_and_changes_nothing_else(tmp_path):
    import pyarrow.parquet as pq

    generate(SynthSpec(users=400, items=300, topics=10, seed=3), tmp_path / "one")
    generate(SynthSpec(users=400, items=300, topics=10, seed=3, carts=True), tmp_path / "two")
    one, two = Dataset(tmp_path / "one"), Dataset(tmp_path / "two")
    assert one.behaviors("train") == ["click", "purchase"]
    assert two.behaviors("train") == ["cart", "click", "purchase"]
    for split, b in [("train", "purchase"), ("train", "click"), ("valid", "purchase"),
                     ("test", "purchase"), ("truth", "purchase")]:
        assert pq.read_table(tmp_path / "one" / split / f"{b}.parquet").equals(
            pq.read_table(tmp_path / "two" / split / f"{b}.parquet")), (split, b)
    n = two.num_items
    bought = set().union(*(_keys(two.pairs(s, "purchase"), n) for s in ("train", "valid", "test")))
    cart, click = _keys(two.pairs("train", "cart"), n), _keys(two.pairs("train", "click"), n)
    truth = _keys(two.pairs("truth", "purchase"), n)
    assert bought <= cart and len(cart) < len(click)  # every purchase carted; fewer carts
    precision = {name: len((keys - bought) & truth) / len(keys - bought)
                 for name, keys in (("cart", cart), ("click", click))}
    assert precision["cart"] > precision["click"] + 0.1, precision  # cleaner than the clicks
    assert precision["cart"] < 1.0  # but not noise-free


def test_streaming_chunks_do_not_change_the_rows(tmp_path):
    a = generate(SynthSpec(users=500, items=200, chunk_users=500), tmp_path / "a")
    b = generate(SynthSpec(users=500, items=200, chunk_users=128), tmp_path / "b")
    assert a["num_users"] == b["num_users"] == 500
    for m in (a, b):
        rows = m["splits"]["train"]["click"]["rows"]
        assert 500 * 5 < rows < 500 * 60
    # different chunking draws differently, but the same spec twice is identical
    c = generate(SynthSpec(users=500, items=200, chunk_users=128), tmp_path / "c")
    assert json.dumps(b["splits"]) == json.dumps(c["splits"])


def test_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        generate(SynthSpec(users=1, items=10), tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_mba_recovers_planted_preferences_better_than_single_behavior_mf(tmp_path):
    """The demo's data: MBA's Recall@20 against the planted truth beats MF on either behavior."""
    from mba_dist import config as C
    from mba_dist.run_dir import RunDir
    from mba_dist.train.runner import run_training

    generate(SynthSpec(users=3000, items=1500, seed=0), tmp_path / "d")
    cfg = C.load_config("configs/synthetic.yaml")
    m = run_training(cfg, tmp_path / "d", RunDir(tmp_path / "run"))
    truth = {k: v["truth"]["recall@20"] for k, v in m["baselines"].items()}
    assert truth["mba"] > truth["mf_purchase"]
    assert truth["mba"] > truth["mf_click"]
