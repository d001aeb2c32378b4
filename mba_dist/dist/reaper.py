"""The embedded Ray cluster ends with the process that started it, even when that one is killed.

`ray.init()` starts gcs_server, a raylet, agents and workers as children of the driver; a driver
killed by SIGKILL or the OOM killer never calls `ray.shutdown()`, and some of them (the
dashboard and runtime-env agents among them) then live on. `watch()` starts a small watcher
process in its own session: it notes the driver's Ray descendants every second and, once the
driver is gone (the pipe it holds reaches end-of-file), stops those still running (SIGTERM,
then SIGKILL). Linux only (it reads /proc); elsewhere it does nothing.

    python -m mba_dist.dist.reaper DRIVER_PID   # stdin: the pipe; run by `watch`
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

PROC = Path("/proc")
SCAN_S = 1.0  # how often the driver's descendants are noted
GRACE_S = 3.0  # SIGTERM to SIGKILL


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, or None."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[1]), fields[19]) if fields[0] != "Z" else None


# What a Ray process's command line holds: a worker's or actor's title, Ray's own files (raylet,
# gcs_server, the agents, log_monitor), the dashboard's forkserver. Not just "ray": a user named
# murray runs everything from /home/murray.
RAY_MARKERS = (b"ray::", b"site-packages/ray/", b"dist-packages/ray/", b"ray.dashboard")


def _is_ray(pid: int) -> bool:
    try:
        cmd = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False
    return any(m in cmd for m in RAY_MARKERS)


def ray_descendants(root: int) -> dict[int, str]:
    """The live descendants of `root` that are Ray's (`RAY_MARKERS`): pid -> start time (a pid
    reused by another process later does not match its start time)."""
    children: dict[int, list[int]] = {}
    start: dict[int, str] = {}
    for d in PROC.iterdir():
        if d.name.isdigit() and (st := _stat(int(d.name))) is not None:
            children.setdefault(st[0], []).append(int(d.name))
            start[int(d.name)] = st[1]
    found, todo = {}, [root]
    while todo:
        for kid in children.get(todo.pop(), []):
            todo.append(kid)
            if _is_ray(kid):
                found[kid] = start[kid]
    return found


def _stop(noted: dict[int, str]) -> None:
    def alive() -> list[int]:
        return [p for p, t in noted.items() if (st := _stat(p)) is not None and st[1] == t]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in alive():
            try:
                os.kill(p, sig)
            except OSError:
                pass
        deadline = time.monotonic() + GRACE_S
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)


def _main(driver: int) -> None:
    noted: dict[int, str] = {}
    while True:
        noted.update(ray_descendants(driver))
        ready, _, _ = select.select([sys.stdin], [], [], SCAN_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):  # end-of-file: the driver is gone
            break
    _stop(noted)


_watcher: subprocess.Popen | None = None  # held until exit: its pipe closes with this process


def watch() -> None:
    """Start the watcher of this process's Ray descendants (module docstring), once."""
    global _watcher
    if not PROC.is_dir() or (_watcher is not None and _watcher.poll() is None):
        return
    # The write end of stdin's pipe stays in this process only (not inherited: Ray's processes
    # are exec'd): when it exits, however it exits, the watcher reads end-of-file. Its own
    # session keeps a Ctrl-C in the terminal from reaching it before the driver has exited.
    _watcher = subprocess.Popen([sys.executable, "-m", "mba_dist.dist.reaper", str(os.getpid())],
                                stdin=subprocess.PIPE, start_new_session=True, close_fds=True)


if __name__ == "__main__":
    _main(int(sys.argv[1]))
