"""The evaluator on 1 and 2 gloo ranks, from local tensors and from torchrec-sharded tables,
against the brute-force reference: the same metrics to 1e-9.

Factors are small integers, so every logit is an exact integer (the matrix product rounds the
same way in every batch shape) and most scores tie: the tie rule is exercised everywhere."""
import numpy as np
import pytest
import torch

from mba_dist.data.pairs import CSR, Pairs
from mba_dist.dist.local import run_local_ranks
from mba_dist.eval.ranking import evaluate
from mba_dist.eval.scorers import mba_scorer, mf_scorer
from tests import oracle
from tests.test_evaluate import pairs

U, I, D, KS = 41, 150, 4, (10, 20)


def case():
    rng = np.random.default_rng(7)
    f = {m: tuple(torch.from_numpy(rng.integers(-2, 3, size=(n, D)).astype(np.float32)) for n in (U, I))
         for m in ("t", "pre_f")}
    train_sets = [set(rng.choice(I, rng.integers(0, 30), replace=False)) if u % 4 else set()
                  for u in range(U)]
    test_sets = [set(rng.choice(sorted(set(range(I)) - tr), rng.integers(0, 25), replace=False))
                 for tr in train_sets]
    train = pairs([(u, i) for u in range(U) for i in sorted(train_sets[u])])
    test = pairs([(u, i) for u in range(U) for i in sorted(test_sets[u])])
    return f, train_sets, test_sets, train, test


def rank_fn() -> dict:
    import mba_dist.eval.ranking as ev
    from mba_dist.tables.build import build_group

    ev.MAX_ITEM_CHUNK = 16  # several item chunks, so the running top-K merges across them
    f, _, _, train, test = case()
    mask = CSR(train, U)

    def run(scorer):  # memory_mb=0: one user per rank per block, many blocks
        return evaluate(scorer, test, mask, U, I, KS, memory_mb=0)

    out = {"local_mf": run(mf_scorer(f["t"])), "local_mba": run(mba_scorer(f["t"], f["pre_f"], 0.7))}
    from mba_dist.config import ModelConfig

    model = ModelConfig(dim=D, backend="torchrec")
    t = build_group(["t"], U, I, model, None, torch.device("cpu"), seed=0)
    t.load("t", *f["t"])
    frozen = build_group(["pre_f", "pre_g"], U, I, model, None, torch.device("cpu"), seed=0)
    frozen.load("pre_f", *f["pre_f"])
    frozen.load("pre_g", *f["t"])
    out["sharded_mf"] = run(mf_scorer(t.factors("t")))
    out["sharded_mba"] = run(mba_scorer(t.factors("t"), frozen.factors("pre_f"), 0.7))
    # every evaluated user in the first rank's range: the other rank walks the blocks empty
    low = test.users < U // 2
    out["sharded_mf_low"] = evaluate(mf_scorer(t.factors("t")), Pairs(test.users[low], test.items[low]),
                                     mask, U, I, KS, memory_mb=0)
    return out


def test_one_and_two_ranks_match_brute_force():
    f, train_sets, test_sets, _, _ = case()
    dense = {"mf": f["t"][0] @ f["t"][1].T}
    sc = mba_scorer(f["t"], f["pre_f"], 0.7)
    sc.set_users(torch.arange(U))
    dense["mba"] = sc.scores(0, I).clone()
    want = {k: oracle.ranking_metrics(s.numpy(), train_sets, test_sets, KS) for k, s in dense.items()}
    want["low"] = oracle.ranking_metrics(dense["mf"].numpy(), train_sets,
                                         [t if u < U // 2 else set() for u, t in enumerate(test_sets)], KS)
    assert len(set(dense["mf"].flatten().tolist())) < 30  # integer logits: heavy ties

    one = run_local_ranks(rank_fn, 1)
    two = run_local_ranks(rank_fn, 2)
    for results in (one, two):
        for res in results:
            for variant, got in res.items():
                ref = want[variant.split("_")[-1]]
                for k, v in ref.items():
                    assert got[k] == pytest.approx(v, abs=1e-9), (len(results), variant, k)


def part_fn(root: str) -> dict:
    """A rank's part of a dataset (its own users' pairs, read through row-group filters)
    against the whole: the same pairs of its users, the same item counts, the same metrics."""
    import pyarrow.parquet as pq

    from mba_dist import config as C
    from mba_dist.data.dataset import Dataset
    from mba_dist.data.train_data import TrainData
    from mba_dist.data.pairs import user_range
    from mba_dist.dist.collective import rank_world

    cfg = C.load_config(None, ["data.aux=click"])
    ds = Dataset(root)
    lo, hi = user_range(ds.num_users, *rank_world())
    whole, part = TrainData.load(ds, cfg), TrainData.load(ds, cfg, (lo, hi))
    for name in ("target", "aux", "valid", "test", "truth"):
        w, p = getattr(whole, name), getattr(part, name)
        keep = (w.users >= lo) & (w.users < hi)
        assert np.array_equal(p.users, w.users[keep]) and np.array_equal(p.items, w.items[keep])
    from mba_dist.eval.baselines import item_popularity
    assert torch.equal(item_popularity(part), item_popularity(whole))  # the ranks' counts summed
    rng = np.random.default_rng(3)
    f = tuple(torch.from_numpy(rng.standard_normal((n, 8)).astype(np.float32))
              for n in (ds.num_users, ds.num_items))
    out = {}
    for label, d in (("whole", whole), ("part", part)):
        for split, truth, mask in (("valid", d.valid, d.mask), ("test", d.test, d.test_mask)):
            out[f"{label}_{split}"] = evaluate(mf_scorer(f), truth, mask, ds.num_users,
                                               ds.num_items, KS, memory_mb=0)
    out["row_groups"] = pq.ParquetFile(ds.path("train", "click")).metadata.num_row_groups
    return out


def test_a_ranks_part_of_the_data_ranks_like_the_whole(tiny_dataset, tmp_path):
    """Two ranks each holding only their users' pairs give the metrics of one rank holding all
    of them; the files are rewritten in many row groups, so the filters skip some."""
    import shutil

    import pyarrow.parquet as pq

    root = tmp_path / "rowgroups"
    shutil.copytree(tiny_dataset, root)
    for path in root.glob("*/*.parquet"):
        pq.write_table(pq.read_table(path), path, row_group_size=97)
    [one] = run_local_ranks(part_fn, 1, str(root))
    two = run_local_ranks(part_fn, 2, str(root))
    assert one["row_groups"] > 4
    for res in [one, *two]:
        for key, got in res.items():
            if key == "row_groups":
                continue
            for k, v in one[f"whole_{key.split('_')[1]}"].items():
                assert got[k] == pytest.approx(v, abs=1e-12), (len(two), key, k)
    assert one["whole_valid"]["users"] > 50
