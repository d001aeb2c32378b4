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


def from_rank0(obj):
    """Rank 0's `obj` on every rank (a no-op on one rank)."""
    if rank_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
