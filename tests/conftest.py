import os

# Keep every socket of tests on loopback and the 2-core CI machine uncontended.
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402

from data_prep.synthetic import SynthSpec, generate  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A small synthetic dataset (300 users x 200 items) with planted preferences."""
    path = tmp_path_factory.mktemp("data") / "tiny"
    generate(SynthSpec(users=300, items=200, topics=10, seed=0), path)
    return path
