import os

from mba_dist.dist.ray import LOOPBACK_ENV  # noqa: E402  (imports no Ray)

# Keep every socket of tests on loopback (set before anything imports ray).
for _k, _v in LOOPBACK_ENV.items():
    os.environ.setdefault(_k, _v)

import pytest  # noqa: E402

from data_prep.synthetic import SynthSpec, generate  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A small synthetic dataset (300 users x 200 items) with planted preferences."""
    path = tmp_path_factory.mktemp("data") / "tiny"
    generate(SynthSpec(users=300, items=200, topics=10, seed=0), path)
    return path


def stop_process_group(proc, timeout: float) -> None:
    """Stop a server a test started in a session of its own (`start_new_session=True`): the
    whole group, SIGTERM first, SIGKILL after `timeout` seconds."""
    import signal
    import subprocess

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
