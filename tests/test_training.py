"""Sampler exclusion, phase freezing (tables and optimizer state), stage behaviour."""
import numpy as np
import pytest
import torch

from mba_dist import config as C
from mba_dist.mba.stages import bpr_input
from mba_dist.data.dataset import Dataset
from mba_dist.data.pairs import Pairs, unique_ints
from mba_dist.mba.losses import Kind, Phase
from mba_dist.data.pairs import contains
from mba_dist.data.sampler import NegativeSampler, Observed
from mba_dist.mba.roles import DN_MODELS, DP_MODELS, FROZEN, Model
from mba_dist.data.train_data import TrainData
from mba_dist.train.fit import Worker, fit_bpr
from mba_dist.train.steps import L2, ids_on, mba_step


def test_sampler_never_returns_observed_pairs():
    rng = np.random.default_rng(0)
    n_users, n_items = 50, 40
    # Dense users: user u has observed all items but u % 5 + 1 of them.
    users, items = [], []
    for u in range(n_users):
        free = set(rng.choice(n_items, u % 5 + 1, replace=False))
        items += [i for i in range(n_items) if i not in free]
        users += [u] * (n_items - len(free))
    obs = Pairs(np.array(users), np.array(items))
    keys = obs.keys(n_items)
    s = NegativeSampler(n_items, Observed(keys, n_items), seed=1)
    batch = np.repeat(np.arange(n_users), 200)
    neg = s.sample(batch)
    assert not contains(keys, batch * n_items + neg).any()
    assert s.stats["accepted_hits"] == 0 and s.stats["redraws"] > 0
    # every free item gets drawn: the sampler is uniform over the allowed ones
    for u in range(3):
        allowed = set(range(n_items)) - set(obs.items[obs.users == u])
        assert set(neg[batch == u]) == allowed


def test_observed_rows_answer_like_a_search_over_all_keys():
    rng = np.random.default_rng(3)
    n_items = 50
    # user u has u items (user 7 none; users past 39 none either)
    lengths = [0 if u == 7 else u for u in range(40)]
    users = np.concatenate([np.full(n, u) for u, n in enumerate(lengths)])
    items = np.concatenate([rng.choice(n_items, n, replace=False) for n in lengths])
    keys = np.sort(users * n_items + items)
    obs = Observed(keys, n_items)
    qu = rng.integers(0, 60, 20_000)  # includes users past the last observed one
    qi = rng.integers(0, n_items, 20_000)
    got = obs.contains(qu, qi)
    assert got.any() and not got.all()
    assert (got == contains(keys, qu * n_items + qi)).all()
    assert list(obs.row(3)) == sorted(items[users == 3]) and len(obs.row(55)) == 0
    empty = Observed(np.zeros(0, np.int64), n_items)
    assert not empty.contains(qu, qi).any() and len(empty.row(0)) == 0
    # the keys of one range of users (a streamed rank's): an index of that range's size, the
    # same answers for its users, none for the others
    part = keys[(keys // n_items >= 20) & (keys // n_items < 30)]
    mine = Observed(part, n_items)
    assert len(mine.starts) == 10 + 2
    assert (mine.contains(qu, qi) == (got & (qu >= 20) & (qu < 30))).all()
    assert list(mine.row(23)) == list(obs.row(23)) and len(mine.row(3)) == len(mine.row(35)) == 0


def test_unique_ints_matches_numpy_on_runs_and_on_random_input():
    rng = np.random.default_rng(0)
    a, b = np.sort(rng.integers(0, 1000, 500)), np.sort(rng.integers(0, 1000, 700))
    for values in (np.concatenate([a, b]), rng.integers(-50, 50, 10_000), np.zeros(0, np.int64)):
        assert np.array_equal(unique_ints(values), np.unique(values))


def test_uniform_sampler_can_hit_observed_pairs():
    # user 0 observed items 0..8: uniform mode never looks at them
    neg = NegativeSampler(10, None, seed=0).sample(np.zeros(1000, np.int64))
    assert (neg < 9).mean() > 0.8


def _snapshot(group):
    w = {m: [t.clone() for t in group.weights(m)] for m in group.models}
    return w, _tensors(group.optimizer_state())


def _tensors(obj):
    """Every tensor inside an optimizer state (ShardedTensor local shards included)."""
    out = []
    if isinstance(obj, torch.Tensor):
        if hasattr(obj, "local_shards"):
            out += [s.tensor.detach().clone() for s in obj.local_shards()]
        else:
            out.append(obj.detach().clone())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            out += _tensors(obj[k])
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out += _tensors(v)
    return out


def _same(a, b):
    wa, sa = a
    wb, sb = b
    same_w = all(torch.equal(x, y) for m in wa for x, y in zip(wa[m], wb[m]))
    same_s = len(sa) == len(sb) and all(torch.equal(x, y) for x, y in zip(sa, sb))
    return same_w, same_s


CASES = [("torch", "dense_adam"), ("torch", "sparse_adam"), ("torch", "adagrad"), ("torch", "sgd"),
         ("torchrec", "adagrad"), ("torchrec", "rowwise_adagrad"), ("torchrec", "sgd")]


@pytest.mark.parametrize("backend,mode", CASES)
def test_off_phase_models_and_their_optimizer_state_do_not_move(tiny_dataset, backend, mode):
    from mba_dist.dist.local import local_process_group

    cfg = C.load_config(None, [f"model.backend={backend}", f"optim.mode={mode}", "optim.lr=0.05",
                               "data.aux=click", "model.dim=8"])
    ds = Dataset(tiny_dataset)
    with local_process_group():
        w = Worker.of(cfg, TrainData.load(ds, cfg))
        frozen = w.group(FROZEN, trained=False)
        t = w.group([Model.T], trained=True)
        dn = w.group(DN_MODELS, trained=True)
        dp = w.group(DP_MODELS, trained=True)
        reg = L2.of(cfg.optim, w.data.num_users)
        d = w.data
        rng = np.random.default_rng(0)
        for step in range(6):  # DP, DN, DP, DN, DP, DN
            phase = Phase.DP if step % 2 == 0 else Phase.DN
            idx = rng.choice(len(d.target), 64)
            before = {n: _snapshot(g) for n, g in (("frozen", frozen), ("t", t), ("dn", dn), ("dp", dp))}
            ids = ids_on(torch.device("cpu"), d.target.users[idx], d.target.items[idx],
                         rng.integers(0, d.num_items, 64))
            mba_step(cfg.mba, reg, Kind.B if step % 3 else Kind.A, phase, ids, frozen, t,
                     dn if phase is Phase.DN else dp)
            after = {n: _snapshot(g) for n, g in (("frozen", frozen), ("t", t), ("dn", dn), ("dp", dp))}
            off = "dp" if phase is Phase.DN else "dn"
            on = "dn" if phase is Phase.DN else "dp"
            assert _same(before["frozen"], after["frozen"]) == (True, True)
            assert _same(before[off], after[off]) == (True, True), f"{off} moved in a {phase} step"
            assert not _same(before[on], after[on])[0], f"{on} did not move in a {phase} step"
            assert not _same(before["t"], after["t"])[0]


def test_bpr_stage_learns_and_selects_on_validation(tiny_dataset, tmp_path):
    cfg = C.load_config(None, ["method=mf", "pretrain.epochs=6", "pretrain.patience=100",
                               "optim.lr=0.05", "optim.mode=adagrad", "data.aux=click"])
    ds = Dataset(tiny_dataset)
    st = fit_bpr(Worker.of(cfg, TrainData.load(ds, cfg)), bpr_input("mf_target", "target"))
    assert st.epochs_run == 6 and len(st.history) == 6
    losses = [h["loss"] for h in st.history]
    assert losses[-1] < losses[0]
    best = max(h["valid"]["recall@20"] for h in st.history)
    assert st.best_select["recall@20"] == best
    assert "test" not in st.history[0]  # selection never reads the test set


def test_t_can_start_as_a_pretrained_model_and_blend_pre_g(tiny_dataset, tmp_path):
    """mba.t_init copies pre_g into t (with a vanishing learning rate t stays there), and a run
    with mba.blend_g scores through pre_g too; a blend weight beyond 1 - beta is refused."""
    from mba_dist.api import fit
    from mba_dist.run_dir import RunDir

    with pytest.raises(C.ConfigError, match=r"mba.blend_g must sum to at most 1 - mba.beta"):
        C.load_config(None, ["mba.beta=0.8", "mba.blend_g=0.3"])
    assert C.load_config(None, ["mba.beta=0.8", "mba.blend_g=0.2"]).mba.blend_g == 0.2  # the bound
    sets = ["pretrain.epochs=2", "mba.epochs=1", "data.aux=click", "train.merged_baseline=false",
            "mba.t_init=pre_g", "optim.lr=1e-12", "mba.blend_g=0.2", "mba.alpha_f=0"]
    run = fit(tiny_dataset, tmp_path / "run", sets=sets, local=True)
    stages = RunDir(run.path).load()
    t = stages.stage_weights("mba")[Model.T.value]
    g = stages.stage_weights("pre_g")[Model.PRE_G.value]
    for a, b in zip(t, g):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    parts = stages.scorer().parts
    assert [w for w, _ in parts] == pytest.approx([0.7, 0.1, 0.2])


def test_joint_pretraining_trains_the_teachers_inside_the_mba_stage(tiny_dataset, tmp_path):
    """mba.joint_pretrain (MBA-PT): no stage 1; pre_f and pre_g leave their initialisation
    through their BPR steps while t trains, and serve as the run's MF rows."""
    from mba_dist.api import fit
    from mba_dist.run_dir import RunDir
    from mba_dist.tables.build import build_group

    with pytest.raises(C.ConfigError, match="mba.joint_pretrain trains pre_f and pre_g"):
        C.load_config(None, ["mba.joint_pretrain=true", "mba.t_init=pre_f"])
    sets = ["mba.epochs=2", "data.aux=click", "train.merged_baseline=false",
            "mba.joint_pretrain=true"]
    run = fit(tiny_dataset, tmp_path / "run", sets=sets, local=True)
    finished = RunDir(run.path).load()
    assert {r["stage"] for r in RunDir(run.path).read_log()} == {"mba"}
    cfg = finished.cfg
    for m in (Model.PRE_F, Model.PRE_G):
        trained = finished.stage_weights(m.value)[m.value]
        init = build_group([m], finished.ds.num_users, finished.ds.num_items, cfg.model,
                           cfg.optim, torch.device("cpu"), cfg.train.seed).weights(m.value)
        assert trained[0].shape == init[0].shape
        assert not torch.allclose(trained[1], init[1])
        torch.testing.assert_close(trained[1], finished.stage_weights("mba")[m.value][1])
    assert "mf_purchase" in run.metrics["baselines"]
    assert set(run.metrics["stages"]) == {"mba", "pre_f", "pre_g"}


def test_mba_lr_is_the_learning_rate_of_the_mba_stage_alone(tiny_dataset, monkeypatch):
    """Every table the MBA stage trains (t, the h models, MBA-PT's teachers) takes mba.lr;
    stage 1 keeps optim.lr (a search shares stage 1 and varies mba.lr); unset, MBA takes
    optim.lr; a non-positive mba.lr is refused at load."""
    import mba_dist.train.fit as fit

    seen = []

    def spy(models, *args):
        optim = args[3]
        seen.append((tuple(getattr(m, "value", m) for m in models), optim and optim.lr))
        return build(models, *args)

    build = fit.build_group
    monkeypatch.setattr(fit, "build_group", spy)
    cfg = C.load_config("configs/synthetic.yaml", [
        "mba.lr=0.0002", "optim.lr=0.003", "pretrain.epochs=1", "mba.epochs=1",
        "mba.joint_pretrain=true", "train.max_steps_per_epoch=2"])
    w = Worker.of(cfg, TrainData.load(Dataset(tiny_dataset), cfg))
    fit_bpr(w, bpr_input("pre_f", "target"))
    fit.fit_mba(w, None)
    assert seen[0] == (("pre_f",), 0.003)  # stage 1
    mba = [s for s in seen[1:] if s[1] is not None]
    assert {m for ms, _ in mba for m in ms} >= {"t", "h1_f", "pre_f", "pre_g"}  # MBA-PT's too
    assert {lr for _, lr in mba} == {0.0002}
    assert C.load_config("configs/synthetic.yaml").stage_optim(True).lr == C.OptimConfig().lr
    with pytest.raises(C.ConfigError, match="mba.lr must be greater than 0.0, got 0"):
        C.load_config("configs/synthetic.yaml", ["mba.lr=0"])
