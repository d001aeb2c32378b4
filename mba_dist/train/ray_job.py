"""Training through Ray Train: the worker function as the `train_loop_per_worker` of a
`TorchTrainer`, fed from Ray Data when the run streams.

Ray's torch backend creates the process group (gloo on CPU, NCCL with GPUs); the worker function
only reads it. With N workers the tables are torchrec-sharded across them (DMP), every worker
runs the same steps in lockstep, and rank 0 alone writes through the run directory. A failed
worker restarts the whole group from the last epoch checkpoint (`RayCheckpoints`).
"""
from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

from mba_dist import config as C
from mba_dist.dist.ray import init_ray, input_error, quiet_worker_logs, ray_train_log_level
from mba_dist.train.checkpoint import RESUME_STATE_FILE, ResumeState, load_resume_state
from mba_dist.train.fit import no_progress, selected
from mba_dist.train.runner import reused_stages, run_training


def print_progress(stage: str, epoch: int, total: int, info: dict) -> None:
    """One line per epoch from rank 0 (it lands in the job's log)."""
    sel = selected(info)
    r = f" R@20 {sel['recall@20']:.4f}" if "recall@20" in sel else ""
    # sys.stdout directly: Ray Train's patched print would log the line twice.
    sys.stdout.write(f"[mba-dist] {stage} epoch {epoch}/{total} loss {info['loss']:.4f} "
                     f"{info['triples_per_s']:,} triples/s (waiting for data "
                     f"{info.get('data_s', 0):.1f} of {info['seconds']:.1f} s){r}\n")
    sys.stdout.flush()


class RayCheckpoints:
    """Reports every epoch to Ray Train; every `every` epochs with a checkpoint of the resumable
    state (each rank stages its shards, rank 0 also state.pt, in a directory of its own; Ray
    merges them in the run's storage and registers the checkpoint only once complete, so a
    failure never leaves a half-written one)."""

    def __init__(self, every: int, rank: int, run):
        self.every, self.rank, self.run = every, rank, run

    def epoch_end(self, record: dict, save) -> None:
        import ray.train

        sel = selected(record)
        metrics = {"stage": record["stage"], "epoch": record["epoch"], "loss": record["loss"],
                   "triples_per_s": record["triples_per_s"],
                   **{f"select_{k}": v for k, v in sel.items() if "@" in k}}
        if not (self.every and record["epoch"] % self.every == 0):
            ray.train.report(metrics)
            return
        with self.run.ray_staged_resume_state() as d:
            save(Path(d))  # collective: each rank writes its shards
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def resume_state_of(directory: str) -> ResumeState:
    """The resumable state in a Ray checkpoint's directory (a clear error when it is not one)."""
    return load_resume_state(Path(directory) / RESUME_STATE_FILE)


def _train_loop_per_worker(loop_config: dict) -> None:
    """Runs on each Ray Train worker: the typed config is rebuilt from its plain-dict form."""
    quiet_worker_logs()  # one progress line per epoch (rank 0) instead
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from mba_dist.data.stream import StreamSource
    from mba_dist.dist.local import share_cores

    cfg = C.load_config(loop_config["config"])
    share_cores(ray.train.get_context().get_local_world_size(), loop_config["cpus_per_worker"])
    source, rank = None, dist.get_rank()
    if loop_config["stream"] is not None:
        shards = {n: ray.train.get_dataset_shard(n) for n in loop_config["shards"]}
        source = StreamSource.of(loop_config["stream"], shards, cfg, rank, dist.get_world_size())
    device = ray.train.torch.get_device() if loop_config["use_gpu"] else None
    ckpt = ray.train.get_checkpoint()
    # The checkpoint's directory (a local copy of a remote one) stays while the shards are read.
    with ckpt.as_directory() if ckpt is not None else nullcontext() as d:
        resume = resume_state_of(d) if d is not None else None
        if resume is not None and rank == 0:
            sys.stdout.write(f"[mba-dist] resuming from {ckpt.path}: stage {resume['stage']} "
                             f"after epoch {resume['fit']['epoch']}\n")
        run = loop_config["run"]
        lines = rank == 0 and loop_config["epoch_lines"]
        run_training(cfg, loop_config["data"], run, print_progress if lines else no_progress,
                     source=source, device=device, resume=resume, reused=loop_config["reused"],
                     checkpointer=RayCheckpoints(cfg.train.checkpoint_every, rank, run))


def _worker_resources(use_gpu: bool, cpus: float | None) -> dict | None:
    """What Ray reserves per worker: `cpus` (and its GPU), or by default 0.5 CPU on CPU
    workers, which leaves room for Ray Data's tasks (the stream's once-per-run shuffle, the
    `full` order's per-epoch one) on a 2-core machine."""
    if cpus is not None:
        return {"CPU": cpus, **({"GPU": 1} if use_gpu else {})}
    return None if use_gpu else {"CPU": 0.5}


def remove_checkpoints(result) -> None:
    """A finished run's resumable states go from its storage (local or remote: each checkpoint
    names its filesystem); the stage files in the run directory are the finished run."""
    for ckpt, _ in result.best_checkpoints or []:
        try:
            ckpt.filesystem.delete_dir(ckpt.path)
        except FileNotFoundError:
            pass


def streams(cfg: C.Config, data_dir: str | Path) -> bool:
    """Whether this run feeds its workers from Ray Data (`train.input`)."""
    if cfg.train.input != "auto":
        return cfg.train.input == "stream"
    from mba_dist.data.stream import train_rows
    return train_rows(cfg, data_dir) > cfg.train.stream_min_rows


def run_with_ray(cfg: C.Config, data_dir: str | Path, run, num_workers: int = 1,
                 use_gpu: bool = False, max_failures: int = 3, storage: str | None = None,
                 fresh: bool = False, reused=None, epoch_lines: bool = True,
                 cpus_per_worker: float | None = None) -> dict:
    """Train through Ray Train on `num_workers` workers; returns the run's metrics.

    `run` is the `run_dir.RunDir` the workers write through (its checks have passed).
    `train.input: stream` feeds the workers from Ray Data (`data.stream.StreamPlan`); `memory`
    has every worker read the pairs and take its share of each global batch; `auto` streams
    when the train pairs exceed `train.stream_min_rows`. A failed worker restarts the whole
    group from the last epoch checkpoint, up to `max_failures` times; checkpoints live under
    `storage` (default RUN/ray; on a multi-node cluster, storage that every node reaches)
    until the run has finished. `epoch_lines`: rank 0 prints a line per epoch.
    `cpus_per_worker`: the CPUs Ray reserves for each worker, and its torch threads (default:
    0.5 CPU reserved on CPU workers, none beside a GPU, threads = the node's cores shared by
    its workers)."""
    stream = streams(cfg, data_dir)
    C.validate_world(cfg, num_workers, stream)
    started = init_ray()
    import ray
    import ray.data

    # One line per epoch from rank 0 instead of a progress bar per dataset execution.
    ray.data.DataContext.get_current().enable_progress_bars = False
    from ray.train import (CheckpointConfig, FailureConfig, LoggingConfig, RunConfig,
                           ScalingConfig)
    from ray.train.torch import TorchConfig, TorchTrainer

    from mba_dist.data.stream import StreamPlan

    data = str(Path(data_dir).resolve())
    try:
        datasets, inputs = {}, None
        if stream:
            skip = reused_stages(reused, cfg) if cfg.method == "mba" and reused else ()
            plan = StreamPlan(cfg, data, skip, num_workers)
            datasets, inputs = plan.ray_datasets(), plan.worker_inputs()
        trainer = TorchTrainer(
            _train_loop_per_worker,
            train_loop_config={"config": C.to_dict(cfg), "data": data, "run": run,
                               "reused": reused, "shards": sorted(datasets),
                               "stream": inputs,
                               "use_gpu": use_gpu,
                               "epoch_lines": epoch_lines, "cpus_per_worker": cpus_per_worker},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                         resources_per_worker=_worker_resources(
                                             use_gpu, cpus_per_worker)),
            run_config=RunConfig(name=run.ray_run_name(storage, fresh),
                                 storage_path=run.ray_storage(storage),
                                 failure_config=FailureConfig(max_failures=max_failures),
                                 # resume needs the latest; one more covers a crash mid-copy
                                 checkpoint_config=CheckpointConfig(num_to_keep=2),
                                 logging_config=LoggingConfig(log_level=ray_train_log_level())),
            datasets=datasets or None,
        )
        try:
            result = trainer.fit()
        except SystemExit:  # Ray Train's Ctrl-C handler aborts the run and exits
            raise KeyboardInterrupt from None
        except Exception as e:
            cause = input_error(e)
            if cause is None:
                raise
            raise cause from None  # a bad config or input: its one clear line, not Ray's wrapping
        remove_checkpoints(result)
    finally:
        if started:
            ray.shutdown()
    return run.read_metrics()
