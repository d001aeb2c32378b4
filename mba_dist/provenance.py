"""What a run was made with, for its run.json: the code's git commit (when it runs from a
checkout), the versions of the packages that decide its numbers, the host, and the time.

Nothing here fails a run: a missing git or package reads as None.
"""
from __future__ import annotations

import datetime
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("mba-dist", "torch", "torchrec", "fbgemm-gpu", "fbgemm-gpu-cpu", "ray", "pyarrow",
            "numpy")
_ROOT = Path(__file__).resolve().parents[1]


def now() -> str:
    """The time as a run.json and log.jsonl write it: ISO 8601, UTC, seconds."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def git_commit() -> dict | None:
    """{"commit", "dirty"} of the checkout this package runs from, or None (an installed
    wheel, no git)."""
    if not (_ROOT / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_ROOT, capture_output=True,
                              text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def record() -> dict:
    """The run.json fields of this process: code, versions, host, start time."""
    return {"git": git_commit(), "versions": versions(), "host": socket.gethostname(),
            "platform": platform.platform(), "started": now()}
