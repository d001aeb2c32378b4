"""Local process groups for launchers outside Ray Train (the worker function never creates one).

`run_local_ranks` hands each rank's result back through a temporary directory of its own (not
a run directory), read once every rank has finished."""
from __future__ import annotations

import os
import pickle
import socket
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator

import torch.distributed as dist


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_process_group() -> Iterator[None]:
    """A 1-rank gloo group on loopback, for torchrec tables outside Ray Train."""
    if dist.is_initialized():
        yield
        return
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_loopback_port()}",
                            rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def share_cores(local_ranks: int, cpus: float | None = None) -> int:
    """Give this process its share of the machine's cores for torch's intra-op threads: ranks
    on one host that each use every core slow each other down (and gloo's polling with them).
    `cpus`: the CPUs the scheduler gave this rank (Ray's `--cpus-per-worker`), which wins."""
    import torch
    if cpus is not None:
        n = max(1, int(cpus))
    else:
        n = max(1, (os.cpu_count() or 1) // max(1, local_ranks))
    torch.set_num_threads(n)
    return n


def _rank_entry(rank: int, fn, world: int, args: tuple, out_dir: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    share_cores(world)
    # The ranks meet through a file of the run's own directory, not a TCP port picked in
    # advance, which another process could take between the pick and the bind
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'rendezvous')}",
                            rank=rank, world_size=world)
    try:
        result = fn(*args)
        with open(os.path.join(out_dir, f"{rank}.pkl"), "wb") as f:
            pickle.dump(result, f)
        # A rank whose last collective returned may still be sending to a slower peer; leaving
        # now would reset that connection and abort the peer (gloo). Meet before tearing down.
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # torchrec table groups keep the process group's gloo threads alive past
    # destroy_process_group (modules in reference cycles; a fused optimizer's hold from C++,
    # out of the collector's reach). The interpreter's teardown then destroys them running and
    # aborts the process (SIGABRT, "terminate called without an active exception") in about
    # one exit of 25 here, after its result is written. Nothing is left to tear down.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_local_ranks(fn, world: int, *args) -> list:
    """Run `fn(*args)` in `world` fresh processes joined in a gloo group on loopback; returns
    the results by rank. `fn` must be importable (a module-level function)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_rank_entry, args=(fn, world, args, out_dir),
                           nprocs=world, start_method="spawn")
        results = []
        for r in range(world):
            with open(os.path.join(out_dir, f"{r}.pkl"), "rb") as f:
                results.append(pickle.load(f))
        return results
