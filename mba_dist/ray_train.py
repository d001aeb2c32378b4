"""Running the worker function inside Ray Train.

`run_with_ray(cfg, data_dir, out_dir)` starts (or joins, with RAY_ADDRESS) a Ray cluster and runs
`train.run_training` as the `train_loop_per_worker` of a `TorchTrainer`. Ray's torch backend
creates the process group (gloo on CPU); the worker function only reads it.

Networking stays on loopback for a local cluster: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 must be set
before `import ray` (without it Ray binds to the machine's non-loopback address even when told
127.0.0.1), and gloo uses the `lo` interface.

This is a single-worker path: every rank would write the same run directory, so `num_workers`
is 1 until the distributed trainer shards the input and the tables.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from mba_dist import config as C

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "GLOO_SOCKET_IFNAME": "lo",
                "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "2"}


def _train_loop_per_worker(loop_config: dict) -> None:
    """Runs on each Ray Train worker: the typed config is rebuilt from its plain-dict form."""
    from mba_dist.train import run_training

    cfg = C.apply_overrides(C.Config(), loop_config["config"], "ray worker config")
    C.validate(cfg)
    run_training(cfg, loop_config["data"], loop_config["out"])


def run_with_ray(cfg: C.Config, data_dir: str | Path, out_dir: str | Path,
                 num_workers: int = 1) -> dict:
    """Train through Ray Train; returns the run's metrics.json content."""
    if num_workers != 1:
        raise ValueError("run_with_ray supports num_workers=1 (one worker writes the run directory)")
    for k, v in LOOPBACK_ENV.items():
        os.environ.setdefault(k, v)
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address)
        else:  # the embedded default: an in-process local cluster on loopback
            ray.init(include_dashboard=False, _node_ip_address="127.0.0.1",
                     runtime_env={"env_vars": dict(LOOPBACK_ENV)})
        started = True
    out = Path(out_dir).resolve()
    try:
        trainer = TorchTrainer(
            _train_loop_per_worker,
            train_loop_config={"config": C.to_dict(cfg), "data": str(Path(data_dir).resolve()),
                               "out": str(out)},
            torch_config=TorchConfig(backend="gloo"),
            # 0.5 CPU per worker leaves room for Ray's own tasks on a 2-core machine.
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=False,
                                         resources_per_worker={"CPU": 0.5}),
            run_config=RunConfig(name="mba-dist", storage_path=str(out / "ray")),
        )
        trainer.fit()
    finally:
        if started:
            ray.shutdown()
    return json.loads((out / "metrics.json").read_text())
