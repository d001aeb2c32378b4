"""Ray: joining a cluster or starting the embedded one on loopback, and running a function on
W Ray Train workers.

Networking stays on loopback for a local cluster: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 must be set
before `import ray` (without it Ray binds to the machine's non-loopback address even when told
127.0.0.1), and gloo uses the `lo` interface. Nothing here knows what the workers train
(`train.ray_job` runs the worker function through Ray Train).
"""
from __future__ import annotations

import logging
import os
import re
import tempfile

from mba_dist.errors import InputError

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "GLOO_SOCKET_IFNAME": "lo",
                "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "2"}
# The embedded cluster only: Ray Train's controller collects a worker's report every 2 s by
# default and a worker's next report waits for it, which made sub-second epochs (the demo) wait
# ~1.5 s each. Clusters keep Ray's default (their epochs are long).
EMBEDDED_ENV = {**LOOPBACK_ENV, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}


# How much of Ray's own output reaches the user (`configure_logs`). "debug": all of it; any other
# level: Ray's warnings and errors, without the lines below, which are Ray Train's internals on
# a healthy run (the placement-group cleaner's traceback when the cluster shuts down before it
# has stopped, a core-worker note about an actor's arguments).
_ray_verbose = False
NOISE_ACTORS = ("PlacementGroupCleaner",)
NOISE_LINES = re.compile(r"has constructor arguments in the object store and max_restarts"
                         r"|Failed to query Ray Train Controller actor state")


def configure_logs(level: str) -> None:
    """`--log-level`: "debug" shows everything Ray prints; otherwise Ray says only warnings."""
    global _ray_verbose
    _ray_verbose = level == "debug"


def ray_train_log_level() -> str:
    """Ray Train's own level (`ray.train.LoggingConfig`): its INFO lines narrate scheduling."""
    return "INFO" if _ray_verbose else "WARNING"


def _filter_worker_output() -> None:
    """Drop the NOISE_* lines from what Ray copies from its processes to this driver (Ray's
    dispatcher of worker output; left as it is when that internal is not there)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as d
    except ImportError:
        return
    handlers = [(n, h) for n, h in d.handlers if n == "ray_print_logs"]
    if not handlers:
        return
    _, show = handlers[0]

    def filtered(data: dict) -> None:
        if data.get("actor_name") in NOISE_ACTORS:
            return
        lines = [ln for ln in data.get("lines", []) if not NOISE_LINES.search(ln)]
        if lines:
            show({**data, "lines": lines})

    d.remove_handler("ray_print_logs")
    d.add_handler("ray_print_logs", filtered)


def init_ray() -> bool:
    """Join the cluster at RAY_ADDRESS, or start the embedded in-process one on loopback.
    Returns whether this call started Ray (and so should shut it down)."""
    for k, v in (LOOPBACK_ENV if os.environ.get("RAY_ADDRESS") else EMBEDDED_ENV).items():
        os.environ.setdefault(k, v)
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    quiet = {} if _ray_verbose else {"logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **quiet)
    else:  # the embedded default: a new in-process local cluster on loopback ("local": never
        # a cluster that `ray start` left registered on this machine), ended with this process
        from mba_dist.dist.reaper import watch

        watch()
        if not _ray_verbose:  # token auth of a loopback cluster that lives as long as this run
            logging.getLogger("ray._private.authentication.authentication_token_setup"
                              ).setLevel(logging.ERROR)
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
                 runtime_env={"env_vars": dict(EMBEDDED_ENV)}, **quiet)
    if not _ray_verbose:
        _filter_worker_output()
    return True


def quiet_worker_logs() -> None:
    """Warnings and errors only from a Ray Train worker: no INFO lines per report, per
    checkpoint, per loaded FBGEMM library and per built TBE (torchrec and FBGEMM log on the
    root logger), which Ray would copy into the driver's output."""
    import logging
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)


def input_error(e: BaseException) -> BaseException | None:
    """The input error (`errors.InputError`: bad config, dataset, checkpoint) that failed a
    Ray Train worker, from the driver's exception, or None for other failures."""
    for failure in getattr(e, "worker_failures", {}).values():
        x, seen = failure, 0
        while x is not None and seen < 5:  # Ray wraps the worker's exception (cause chain)
            if isinstance(x, InputError):
                return x
            x, seen = getattr(x, "cause", None) or x.__cause__, seen + 1
    return None


def _rank_loop(loop_config: dict) -> None:
    """Runs `fn(*args)` on one Ray Train worker and hands its result to the driver's collector."""
    quiet_worker_logs()
    import ray
    import ray.train
    import torch.distributed as dist

    from mba_dist.dist.local import share_cores

    share_cores(ray.train.get_context().get_local_world_size())
    result = loop_config["fn"](*loop_config["args"])
    ray.get(loop_config["results"].put.remote(dist.get_rank(), result))


def run_ray_ranks(fn, world: int, *args, use_gpu: bool = False) -> list:
    """`dist.local.run_local_ranks` through Ray Train: `fn(*args)` on `world` Ray Train workers of
    the cluster at RAY_ADDRESS (any number of nodes) or of the embedded local one, in the
    process group Ray's torch backend creates (gloo, or NCCL with `use_gpu`); returns the
    results by rank. Results travel through a small actor, so no storage has to be shared."""
    started = init_ray()
    import ray
    from ray.train import LoggingConfig, RunConfig, ScalingConfig
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
                run_config=RunConfig(name="mba-dist-ranks", storage_path=storage,
                                     logging_config=LoggingConfig(log_level=ray_train_log_level())),
            ).fit()
        by_rank = ray.get(results.get.remote())
        return [by_rank[r] for r in range(world)]
    finally:
        if started:
            ray.shutdown()
