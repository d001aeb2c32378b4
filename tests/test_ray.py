"""The worker function inside Ray Train: TorchTrainer creates the gloo group, torchrec DMP uses it."""
import json

from mba_dist import config as C


def test_worker_function_runs_inside_ray_train(tiny_dataset, tmp_path):
    from mba_dist.ray_train import run_with_ray

    cfg = C.load_config("configs/synthetic.yaml", [
        "pretrain.epochs=2", "mba.epochs=2", "model.backend=torchrec", "optim.mode=adagrad",
        "optim.lr=0.05", "train.merged_baseline=false"])
    m = run_with_ray(cfg, tiny_dataset, tmp_path / "run")
    assert m["model"] == "mba" and m["stages"]["mba"]["triples"] > 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"] == m["test"]
    assert (tmp_path / "run" / "checkpoints" / "mba.pt").is_file()
