"""Synthetic multi-behavior data with planted true preferences (`mba-dist synth`).

The generative story, per user u (vectorised over a chunk of users at a time, so tens of millions
of rows stream to Parquet with bounded memory):

1. Items are split into `topics` groups; u likes two topics (weights 0.7 / 0.3).
2. True preferences: L_u ~ 1 + Poisson(true_per_user - 1) items, each from a topic of u, drawn
   by a Zipf(`topic_zipf`) over the topic's items (some items are liked by most of the topic's
   fans: structure an MF model can learn).               -> `truth` (minus train purchases)
3. Target behavior (purchase, sparse): each true item with probability `p_buy`.
4. Auxiliary behavior (click, dense and noisy): every purchased item, each other true item with
   probability `p_click_true` (the rest are missed), plus Poisson(false_click_ratio * L_u)
   false clicks drawn from a Zipf popularity over all items (popularity bias).
5. A second auxiliary behavior (cart, with `carts`: sparser and cleaner than the clicks):
   every purchased item, each other true item with probability `p_cart_true`, plus
   Poisson(false_cart_ratio * L_u) popularity-biased false carts; drawn from a generator of its
   own, so the other behaviors' files are the same with and without it.
6. Purchases split 80/20 at random into train/test; a validation split is carved per user from
   the train purchases (as `prepare` does).

The planted preferences make the right answer known: a method that denoises the clicks should
rank the truth above MF on the sparse purchases alone and above MF on the noisy clicks alone.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_prep.prepare import carve_valid
from mba_dist.data.format import FORMAT_VERSION, check_output
from mba_dist.data.pairs import contains, unique_ints
from mba_dist.errors import ArgumentError
from mba_dist.files import atomic_dir

TARGET, AUX = "purchase", "click"


@dataclass(frozen=True)
class SynthSpec:
    users: int = 2000
    items: int = 1000
    topics: int = 20
    true_per_user: float = 20.0  # mean number of truly preferred items per user
    p_buy: float = 0.3  # a true item is bought with this probability
    p_click_true: float = 0.5  # a true, not bought item is clicked with this probability
    false_click_ratio: float = 1.0  # false clicks per true item (popularity-biased)
    zipf: float = 1.1  # popularity exponent of false clicks (over all items)
    topic_zipf: float = 0.8  # exponent of true preference within a topic
    test_fraction: float = 0.2
    valid_fraction: float = 0.1
    seed: int = 0
    chunk_users: int = 100_000  # users generated per streaming chunk
    carts: bool = False  # also a second auxiliary behavior, cart (step 5 of the docstring)
    p_cart_true: float = 0.2  # a true, not bought item is carted with this probability
    false_cart_ratio: float = 0.1  # false carts per true item (popularity-biased)


SIZES = {  # name -> (users, items)
    "tiny": (300, 200),
    "small": (5_000, 2_000),
    "medium": (50_000, 20_000),
    "large": (2_000_000, 500_000),  # ~ 60M rows
}


def _noisy(users: np.ndarray, keys: np.ndarray, kept: np.ndarray, n_false: np.ndarray,
           rng: np.random.Generator, pop_cdf: np.ndarray, n_items: int) -> np.ndarray:
    """An auxiliary behavior's pair keys: the `kept` true pairs of `keys`, and n_false[k]
    popularity-drawn false items for users[k]."""
    u_false = np.repeat(users, n_false)
    i_false = np.minimum(np.searchsorted(pop_cdf, rng.random(len(u_false))), n_items - 1)
    return unique_ints(np.concatenate([keys[kept], u_false * n_items + i_false]))


def _chunk(spec: SynthSpec, lo: int, hi: int, rng: np.random.Generator, topic_items: np.ndarray,
           topic_cdf: np.ndarray, pop_cdf: np.ndarray, cart_rng: np.random.Generator | None = None
           ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    n = hi - lo
    n_items = spec.items
    topic_pair = np.stack([rng.integers(0, spec.topics, n), rng.integers(0, spec.topics, n)], 1)
    L = 1 + rng.poisson(max(spec.true_per_user - 1, 0), n)
    u_true = np.repeat(np.arange(lo, hi), L)
    which = (rng.random(len(u_true)) >= 0.7).astype(np.int64)
    topic = topic_pair[u_true - lo, which]
    i_true = topic_items[topic, np.searchsorted(topic_cdf, rng.random(len(u_true)))]
    keys = unique_ints(u_true * n_items + i_true)  # drop repeats
    u_true, i_true = keys // n_items, keys % n_items

    bought = rng.random(len(keys)) < spec.p_buy
    clicked_true = bought | (rng.random(len(keys)) < spec.p_click_true)
    users = np.arange(lo, hi)
    click = _noisy(users, keys, clicked_true, rng.poisson(spec.false_click_ratio * L), rng,
                   pop_cdf, n_items)

    buy = keys[bought]
    is_test = rng.random(len(buy)) < spec.test_fraction
    train, test = buy[~is_test], buy[is_test]
    keep, val = carve_valid(train // n_items, train % n_items, spec.valid_fraction, int(rng.integers(1 << 31)))
    truth = keys[~contains(train[keep], keys)]  # train[keep] is sorted
    out = {"train/purchase": train[keep], "valid/purchase": train[val], "test/purchase": test,
           "train/click": click, "truth/purchase": truth}
    if cart_rng is not None:
        carted = bought | (cart_rng.random(len(keys)) < spec.p_cart_true)
        out["train/cart"] = _noisy(users, keys, carted,
                                   cart_rng.poisson(spec.false_cart_ratio * L), cart_rng,
                                   pop_cdf, n_items)
    return {k: (v // n_items, v % n_items) for k, v in out.items()}


def generate(spec: SynthSpec, out: str | Path, overwrite: bool = False,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Write a prepared dataset (see `mba_dist.data.format`) with planted preferences to `out`."""
    if spec.users < 2 or spec.items < spec.topics or spec.topics < 1:
        raise ArgumentError(f"synthetic sizes too small: {spec.users} users, {spec.items} items, "
                         f"{spec.topics} topics (need users >= 2, items >= topics >= 1)")
    check_output(Path(out), overwrite)  # before any work
    rng = np.random.default_rng(spec.seed)
    per_topic = spec.items // spec.topics
    topic_items = rng.permutation(spec.items)[: per_topic * spec.topics].reshape(spec.topics, per_topic)
    pop = 1.0 / np.arange(1, spec.items + 1) ** spec.zipf
    pop = pop[np.argsort(rng.permutation(spec.items))]  # popularity not aligned with ids
    pop_cdf = np.cumsum(pop / pop.sum())
    pop_cdf[-1] = 1.0
    in_topic = 1.0 / np.arange(1, per_topic + 1) ** spec.topic_zipf
    topic_cdf = np.cumsum(in_topic / in_topic.sum())
    topic_cdf[-1] = 1.0
    cart_rng = np.random.default_rng([spec.seed, 1]) if spec.carts else None
    schema = pa.schema([("user", pa.int64()), ("item", pa.int64())])
    counts: dict[str, dict] = {}
    with atomic_dir(Path(out), overwrite=overwrite, check=check_output) as tmp:
        writers: dict[str, pq.ParquetWriter] = {}
        try:
            for lo in range(0, spec.users, spec.chunk_users):
                hi = min(spec.users, lo + spec.chunk_users)
                for name, (u, i) in _chunk(spec, lo, hi, rng, topic_items, topic_cdf, pop_cdf,
                                               cart_rng).items():
                    if name not in writers:
                        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                        writers[name] = pq.ParquetWriter(tmp / f"{name}.parquet", schema)
                    writers[name].write_table(pa.table({"user": u, "item": i}, schema=schema))
                    c = counts.setdefault(name, {"rows": 0, "users": 0})
                    c["rows"] += int(len(u))
                    c["users"] += int(len(unique_ints(u)))
                if progress:
                    progress(hi, spec.users)
        finally:
            for w in writers.values():
                w.close()
        splits: dict[str, dict] = {}
        for name, c in counts.items():
            split, b = name.split("/")
            splits.setdefault(split, {})[b] = c
        meta = {"format_version": FORMAT_VERSION, "num_users": spec.users, "num_items": spec.items,
                "target": TARGET, "splits": splits,
                "valid_protocol": {"source": "carved from target train pairs, per user",
                                   "fraction": spec.valid_fraction, "seed": spec.seed},
                "id_types": {"user": "identity", "item": "identity"},
                "synthetic": asdict(spec), "created_by": "mba-dist synth"}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta
