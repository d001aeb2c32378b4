"""Running the worker function inside Ray Train.

`run_with_ray(cfg, data_dir, out_dir)` starts (or joins, with RAY_ADDRESS) a Ray cluster and runs
`train.run_training` as the `train_loop_per_worker` of a `TorchTrainer`. Ray's torch backend
creates the process group (gloo on CPU); the worker function only reads it.

Networking stays on loopback for a local cluster: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 must be set
before `import ray` (without it Ray binds to the machine's non-loopback address even when told
127.0.0.1), and gloo uses the `lo` interface.

With N workers the tables are torchrec-sharded across them (DMP), every worker runs the same
steps in lockstep, and rank 0 alone writes the run directory.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from mba_dist import config as C

STATE_FILE = "state.pt"
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "GLOO_SOCKET_IFNAME": "lo",
                "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "2"}
# The embedded cluster only: Ray Train's controller collects a worker's report every 2 s by
# default and a worker's next report waits for it, which made sub-second epochs (the demo) wait
# ~1.5 s each. Clusters keep Ray's default (their epochs are long).
EMBEDDED_ENV = {**LOOPBACK_ENV, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}


def _print_progress(stage: str, epoch: int, total: int, info: dict) -> None:
    """One line per epoch from rank 0 (it lands in the job's log)."""
    from mba_dist.train import selected
    sel = selected(info)
    r = f" R@20 {sel['recall@20']:.4f}" if "recall@20" in sel else ""
    # sys.stdout directly: Ray Train's patched print would log the line twice.
    sys.stdout.write(f"[mba-dist] {stage} epoch {epoch}/{total} loss {info['loss']:.4f} "
                     f"{info['triples_per_s']:,} triples/s (waiting for data "
                     f"{info.get('data_s', 0):.1f} of {info['seconds']:.1f} s){r}\n")
    sys.stdout.flush()


class RayCheckpoints:
    """Reports every epoch to Ray Train; every `every` epochs with a checkpoint of the whole
    resumable state (`state.pt`, written by rank 0; Ray copies it into the run's storage and
    registers it only once complete, so a failure never leaves a half-written checkpoint)."""

    def __init__(self, every: int, rank: int):
        self.every, self.rank = every, rank

    def epoch_end(self, record: dict, state) -> None:
        import ray.train
        import torch

        from mba_dist.train import selected
        sel = selected(record)
        metrics = {"stage": record["stage"], "epoch": record["epoch"], "loss": record["loss"],
                   "triples_per_s": record["triples_per_s"],
                   **{f"select_{k}": v for k, v in sel.items() if "@" in k}}
        if not (self.every and record["epoch"] % self.every == 0):
            ray.train.report(metrics)
            return
        st = state()  # collective: every rank gathers
        if self.rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="mba-dist-ckpt-") as d:
            torch.save(st, Path(d) / STATE_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def load_resume_state(checkpoint) -> dict:
    """The resumable state inside a Ray checkpoint (a clear error when it is not one)."""
    import torch

    with checkpoint.as_directory() as d:
        path = Path(d) / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint.path} has no {STATE_FILE}")
        return torch.load(path, map_location="cpu", weights_only=True)


def _quiet_worker_logs() -> None:
    """Warnings and errors only from a Ray Train worker: no INFO lines per report, per
    checkpoint, per loaded FBGEMM library and per built TBE (torchrec and FBGEMM log on the
    root logger), which Ray would copy into the driver's output."""
    import logging
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)


def _train_loop_per_worker(loop_config: dict) -> None:
    """Runs on each Ray Train worker: the typed config is rebuilt from its plain-dict form."""
    _quiet_worker_logs()  # one progress line per epoch (rank 0) instead
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from mba_dist.distenv import share_cores
    from mba_dist.stream import StreamSource
    from mba_dist.train import run_training, _no_progress

    cfg = C.apply_overrides(C.Config(), loop_config["config"], "ray worker config")
    C.validate(cfg)
    share_cores(ray.train.get_context().get_local_world_size())
    source = None
    if loop_config["shards"]:
        shards = {n: ray.train.get_dataset_shard(n) for n in loop_config["shards"]}
        source = StreamSource(shards, cfg.train.batch_size, dist.get_world_size(), cfg.train.seed,
                              cfg.mba.batch_order, loop_config["part_rows"])
    progress = _print_progress if dist.get_rank() == 0 else _no_progress
    device = ray.train.torch.get_device() if loop_config["use_gpu"] else None
    ckpt = ray.train.get_checkpoint()
    resume = load_resume_state(ckpt) if ckpt is not None else None
    if resume is not None and dist.get_rank() == 0:
        sys.stdout.write(f"[mba-dist] resuming from {ckpt.path}: stage {resume['stage']} after "
                         f"epoch {resume['fit']['epoch']}\n")
    run_training(cfg, loop_config["data"], loop_config["out"], progress, source=source,
                 device=device, resume=resume,
                 checkpointer=RayCheckpoints(cfg.train.checkpoint_every, dist.get_rank()))


def init_ray() -> bool:
    """Join the cluster at RAY_ADDRESS, or start the embedded in-process one on loopback.
    Returns whether this call started Ray (and so should shut it down)."""
    for k, v in (LOOPBACK_ENV if os.environ.get("RAY_ADDRESS") else EMBEDDED_ENV).items():
        os.environ.setdefault(k, v)
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:  # the embedded default: a new in-process local cluster on loopback ("local": never
        # a cluster that `ray start` left registered on this machine)
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
                 runtime_env={"env_vars": dict(EMBEDDED_ENV)})
    return True


def streams(cfg: C.Config, data_dir: str | Path) -> bool:
    """Whether this run feeds its workers from Ray Data (`train.input`)."""
    if cfg.train.input != "auto":
        return cfg.train.input == "stream"
    from mba_dist.stream import train_rows
    return train_rows(cfg, data_dir) > cfg.train.stream_min_rows


def run_with_ray(cfg: C.Config, data_dir: str | Path, out_dir: str | Path,
                 num_workers: int = 1, use_gpu: bool = False, max_failures: int = 3,
                 storage: str | None = None, fresh: bool = False) -> dict:
    """Train through Ray Train on `num_workers` workers; returns the run's metrics.json content.

    `train.input: stream` feeds the workers from Ray Data (`stream.StreamPlan`); `memory` has
    every worker read the pairs and take its share of each global batch; `auto` streams when the
    train pairs exceed `train.stream_min_rows`. A failed worker
    restarts the whole group from the last epoch checkpoint, up to `max_failures` times;
    checkpoints live under `storage` (default RUN/ray; on a multi-node cluster, storage that
    every node reaches)."""
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    if num_workers > 1 and cfg.model.backend != "torchrec":
        raise C.ConfigError(f"{num_workers} workers need model.backend=torchrec (sharded tables)")
    stream = streams(cfg, data_dir)
    if stream and cfg.train.batch_size % num_workers:
        raise C.ConfigError(f"train.batch_size {cfg.train.batch_size} is not a multiple of "
                            f"{num_workers} workers (each reads batch_size / workers rows a step)")
    started = init_ray()
    import ray
    import ray.data

    # One line per epoch from rank 0 instead of a progress bar per dataset execution.
    ray.data.DataContext.get_current().enable_progress_bars = False
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from mba_dist.stream import StreamPlan

    out = Path(out_dir).resolve()
    data = str(Path(data_dir).resolve())
    try:
        datasets, part_rows = {}, {}
        if stream:
            plan = StreamPlan(cfg, data)
            datasets, part_rows = plan.datasets(), plan.part_rows()
        trainer = TorchTrainer(
            _train_loop_per_worker,
            train_loop_config={"config": C.to_dict(cfg), "data": data, "out": str(out),
                               "shards": sorted(datasets), "part_rows": part_rows,
                               "use_gpu": use_gpu},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            # 0.5 CPU per worker leaves room for Ray Data's tasks on a 2-core machine.
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                         resources_per_worker=None if use_gpu else {"CPU": 0.5}),
            run_config=RunConfig(name=ray_run_name(out, storage, fresh),
                                 storage_path=storage or str(out / "ray"),
                                 failure_config=FailureConfig(max_failures=max_failures)),
            datasets=datasets or None,
        )
        try:
            trainer.fit()
        except Exception as e:
            cause = input_error(e)
            if cause is None:
                raise
            raise cause from None  # a bad config or input: its one clear line, not Ray's wrapping
    finally:
        if started:
            ray.shutdown()
    return json.loads((out / "metrics.json").read_text())


def ray_run_name(out: Path, storage: str | None, fresh: bool) -> str:
    """The Ray Train run a job resumes from when it is submitted again. Under RUN/ray it is the
    run directory's own ("mba-dist"; `--overwrite` clears RUN/ray first). In a shared
    `storage` it is keyed by the run directory, so runs do not resume each other's checkpoints,
    and a `fresh` start (`--overwrite`) gets a new one."""
    if storage is None:
        return "mba-dist"
    import hashlib
    name = f"mba-dist-{out.name}-{hashlib.sha1(str(out).encode()).hexdigest()[:8]}"
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}" if fresh else name


def input_error(e: BaseException) -> BaseException | None:
    """The input error (`ValueError`, `FileNotFoundError`: bad config, dataset, checkpoint)
    that failed a Ray Train worker, from the driver's exception, or None for other failures."""
    for failure in getattr(e, "worker_failures", {}).values():
        x, seen = failure, 0
        while x is not None and seen < 5:  # Ray wraps the worker's exception (cause chain)
            if isinstance(x, (ValueError, FileNotFoundError)):
                return x
            x, seen = getattr(x, "cause", None) or x.__cause__, seen + 1
    return None


def _rank_loop(loop_config: dict) -> None:
    """Runs `fn(*args)` on one Ray Train worker and hands its result to the driver's collector."""
    _quiet_worker_logs()
    import ray
    import ray.train
    import torch.distributed as dist

    from mba_dist.distenv import share_cores

    share_cores(ray.train.get_context().get_local_world_size())
    result = loop_config["fn"](*loop_config["args"])
    ray.get(loop_config["results"].put.remote(dist.get_rank(), result))


def run_ray_ranks(fn, world: int, *args, use_gpu: bool = False) -> list:
    """`distenv.run_local_ranks` through Ray Train: `fn(*args)` on `world` Ray Train workers of
    the cluster at RAY_ADDRESS (any number of nodes) or of the embedded local one, in the
    process group Ray's torch backend creates (gloo, or NCCL with `use_gpu`); returns the
    results by rank. Results travel through a small actor, so no storage has to be shared."""
    started = init_ray()
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    @ray.remote(num_cpus=0)
    class Results:
        def __init__(self):
            self.by_rank: dict[int, object] = {}

        def put(self, rank: int, value) -> None:
            self.by_rank[rank] = value

        def get(self) -> dict:
            return self.by_rank

    try:
        results = Results.remote()
        with tempfile.TemporaryDirectory(prefix="mba-dist-ranks-") as storage:
            TorchTrainer(
                _rank_loop,
                train_loop_config={"fn": fn, "args": args, "results": results},
                torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
                scaling_config=ScalingConfig(num_workers=world, use_gpu=use_gpu),
                run_config=RunConfig(name="mba-dist-ranks", storage_path=storage),
            ).fit()
        by_rank = ray.get(results.get.remote())
        return [by_rank[r] for r in range(world)]
    finally:
        if started:
            ray.shutdown()
