"""A finished stage's tables stay per rank: each of 2 ranks holds only its shards, copies into a
group of another plan go a chunk at a time, stage checkpoints are written by every rank and
read back on any world size (whole only where asked), and stage files of format 1 still read."""
import shutil

import pytest
import torch

from mba_dist import config as C
from mba_dist.dist.local import run_local_ranks
from mba_dist.mba.roles import FROZEN, Model
from mba_dist.tables.build import build_group

U, I, D = 37, 29, 8


def hand(model: str, entity: str) -> torch.Tensor:
    n = U if entity == "user" else I
    salt = sum(map(ord, model + entity))
    return (((torch.arange(n * D, dtype=torch.float64).reshape(n, D) * 31 + salt) % 19 - 9)
            / 30).float()


def _cfg():
    return C.load_config(None, ["model.backend=torchrec", "optim.mode=adagrad", f"model.dim={D}"])


def _keep_and_copy(root: str) -> dict:
    """On every rank: a trained pre_f group's snapshot as StageTables, copied (7 rows a
    collective) into a frozen pre_f/pre_g group, and saved as a stage checkpoint."""
    from mba_dist.tables import stage_tables
    from mba_dist.train import checkpoint

    cfg = _cfg()
    g = build_group([Model.PRE_F], U, I, cfg.model, cfg.optim, torch.device("cpu"), 0)
    g.load("pre_f", hand("pre_f", "user"), hand("pre_f", "item"))
    st = g.stage_tables(g.snapshot())
    held = sum(t.numel() for v in st.tables.values() for _, _, t in stage_tables.local_parts(v))
    stage_tables.COPY_CHUNK_BYTES = 7 * 4 * D
    frozen = build_group(FROZEN, U, I, cfg.model, None, torch.device("cpu"), 0, init=False)
    st.copy_into(frozen, "pre_f")
    st.copy_into(frozen, "pre_f", "pre_g")
    checkpoint.save_stage(root, "pre_f", 3, st, cfg)
    return {"held": held, "frozen": {m: frozen.weights(m) for m in frozen.models}}


def _load_back(root: str) -> dict:
    from mba_dist.train import checkpoint

    cfg = _cfg()
    g = build_group([Model.PRE_F], U, I, cfg.model, None, torch.device("cpu"), 0, init=False)
    st = checkpoint.load_stage_into(root, g)
    return {"weights": g.weights("pre_f"), "whole": st.whole("pre_f")}


def test_two_ranks_keep_only_their_shards_and_stage_checkpoints_reshard(tmp_path):
    from mba_dist.train import checkpoint

    root = tmp_path / "pre_f"
    root.mkdir()
    ranks = run_local_ranks(_keep_and_copy, 2, str(root))
    whole = (U + I) * D
    assert [r["held"] < whole for r in ranks] == [True, True]  # no rank holds both tables
    assert sum(r["held"] for r in ranks) == whole  # and together they hold each row once
    want = (hand("pre_f", "user"), hand("pre_f", "item"))
    for r in ranks:
        for m in ("pre_f", "pre_g"):  # copied across plans, 7 rows at a time
            assert all(torch.equal(a, b) for a, b in zip(r["frozen"][m], want))
    assert (root / "stage.pt").is_file() and len(list((root / "shards").glob("*.distcp"))) == 2
    read = checkpoint.load_stage_weights(root)  # whole, in this process
    assert set(read) == {"pre_f"} and all(torch.equal(a, b) for a, b in zip(read["pre_f"], want))
    for world in (1, 2):  # written by 2 ranks, read by 1 or 2
        for r in run_local_ranks(_load_back, world, str(root)):
            assert all(torch.equal(a, b) for a, b in zip(r["weights"], want))
            assert all(torch.equal(a, b) for a, b in zip(r["whole"], want))
    with pytest.raises(checkpoint.CheckpointError, match="holds tables of 37 users x 29 items"):
        plain = C.load_config(None, ["model.backend=torch", f"model.dim={D}"]).model
        other = build_group([Model.PRE_F], U + 1, I, plain, None, torch.device("cpu"), 0)
        checkpoint.load_stage_into(root, other)


def test_stage_files_of_format_1_still_evaluate(tiny_dataset, tmp_path):
    """A run whose checkpoints are `STAGE.pt` files of whole tables (format 1, as earlier
    versions wrote them) evaluates and recommends as the same run in stage directories."""
    from launch.cli import main
    from mba_dist.jobs import evaluate_table, recommend
    from mba_dist.train import checkpoint

    run = tmp_path / "run"
    assert main(["run", "--local", "--data", str(tiny_dataset), "--out", str(run),
                 "--set", "pretrain.epochs=1", "--set", "mba.epochs=1", "--set", "data.aux=click",
                 "--set", "train.merged_baseline=false"]) == 0
    before = evaluate_table(run, with_baselines=True)
    top = recommend(run, None, 5)
    for d in sorted((run / "checkpoints").iterdir()):
        weights = checkpoint.load_stage_weights(d)
        torch.save({"stage": d.name, "best_epoch": 1, "config": {},
                    "weights": {m: {"user": u, "item": i} for m, (u, i) in weights.items()}},
                   d.with_suffix(".pt"))
        shutil.rmtree(d)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["mba.pt", "pre_f.pt",
                                                                      "pre_g.pt"]
    assert evaluate_table(run, with_baselines=True) == before
    assert recommend(run, None, 5).equals(top)
