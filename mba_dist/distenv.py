"""Process-group helpers for launchers (the worker function never creates a process group)."""
from __future__ import annotations

import os
import socket
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
