"""This process's place in the process group, and the device its collectives run on.

The one place that decides the collective device: gloo reduces CPU tensors, NCCL needs them on
this rank's GPU. Imports nothing of the package.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def rank_world(group=None) -> tuple[int, int]:
    """(rank, world size) of `group` (default: the world), or (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def collective_device() -> torch.device:
    """Where tensors must live for the default group's collectives."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(t: torch.Tensor, group=None) -> torch.Tensor:
    """`t` summed over the ranks of `group` (a no-op on one rank), on `t`'s own device."""
    if rank_world(group)[1] == 1:
        return t
    dev = collective_device()
    buf = t.to(dev)
    dist.all_reduce(buf, group=group)
    return buf.to(t.device)


def all_reduce_max(value: int, group=None) -> int:
    """The largest of the ranks' `value`s (a no-op on one rank)."""
    if rank_world(group)[1] == 1:
        return value
    buf = torch.tensor([value], dtype=torch.int64, device=collective_device())
    dist.all_reduce(buf, op=dist.ReduceOp.MAX, group=group)
    return int(buf.item())


def all_gather_rows(t: torch.Tensor, group=None) -> tuple[torch.Tensor, int]:
    """Every rank's `t` (any number of rows each) concatenated in rank order, and where this
    rank's rows start in it (a no-op on one rank); on `t`'s own device."""
    rank, world = rank_world(group)
    if world == 1:
        return t, 0
    dev = collective_device()
    n = torch.tensor([len(t)], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    sizes = [int(s.item()) for s in sizes]
    padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[:len(t)] = t.to(dev)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    out = torch.cat([p[:s] for p, s in zip(parts, sizes)])
    return out.to(t.device), sum(sizes[:rank])


def own_peak_rss_mb() -> float:
    """This process's peak resident memory so far (MiB, Linux's ru_maxrss)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_rss_mb(group=None) -> list[float]:
    """Every rank's `own_peak_rss_mb`, in rank order."""
    mine = torch.tensor([own_peak_rss_mb()], dtype=torch.float64)
    return [round(v, 1) for v in all_gather_rows(mine, group)[0].tolist()]


def from_rank0(obj):
    """Rank 0's `obj` on every rank (a no-op on one rank)."""
    if rank_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
