"""`mba-dist plot`: the three PNGs of a finished run, and the numbers the Fig. 2 panel is made of."""
import numpy as np

from launch.cli import main
from mba_dist import plots
from mba_dist.data.pairs import Pairs, subtract_pairs


def test_plot_writes_the_three_pictures_of_a_run(tiny_dataset, tmp_path, capsys):
    import mba_dist

    run = tmp_path / "run"
    assert main(["run", "--local", "--data", str(tiny_dataset), "--config",
                 "configs/synthetic.yaml", "--out", str(run), "--set", "pretrain.epochs=3",
                 "--set", "mba.epochs=3", "--set", "train.merged_baseline=false", "-q"]) == 0
    assert main(["plot", "--run", str(run)]) == 0
    names = sorted(p.name for p in (run / "plots").iterdir())
    assert names == ["baselines.png", "behaviors.png", "training.png"]
    for n in names:
        data = (run / "plots" / n).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, n
    written = mba_dist.Run.load(run).plot(tmp_path / "elsewhere")
    assert sorted(p.name for p in written) == names
    # an MF run has no MBA model to draw beside MF
    mf = tmp_path / "mf"
    assert main(["run", "--local", "--data", str(tiny_dataset), "--out", str(mf), "--set",
                 "method=mf", "--set", "pretrain.epochs=2", "-q"]) == 0
    assert main(["plot", "--run", str(mf)]) == 0
    assert sorted(p.name for p in (mf / "plots").iterdir()) == ["baselines.png", "training.png"]


def test_the_two_users_have_the_most_of_both_behaviors():
    # user 0: 3 aux-only, 1 bought; user 1: 2 aux-only, 2 bought; user 2: 5 aux-only, 0 bought
    aux_u = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    aux_i = np.array([1, 2, 3, 9, 4, 5, 6, 1, 2, 3, 4, 5])
    tgt_u = np.array([0, 1, 1])
    tgt_i = np.array([9, 6, 7])
    bought = Pairs(tgt_u, tgt_i)
    aux_only = subtract_pairs(Pairs(aux_u, aux_i), bought, 10)
    assert plots.pick_users(aux_only, bought, 3) == [1, 0]


def test_the_centroid_gap_is_scale_free():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(50, 4))
    clicked, bought = np.arange(10), np.arange(10, 15)
    gap = plots.centroid_gap(items, clicked, bought)
    assert gap > 0 and np.isclose(plots.centroid_gap(items * 7.0, clicked, bought), gap)
    assert plots.centroid_gap(items, clicked, clicked) == 0.0
