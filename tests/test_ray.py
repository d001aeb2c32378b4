"""The Ray path: `mba-dist run` through Ray Train (Ray Data streaming, 2 workers with sharded
tables), recovery from a killed worker, and `ray job submit` against a local cluster. All on
loopback; each test starts its own Ray."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mba_dist import config as C
from mba_dist.data.dataset import Dataset
from mba_dist.data.pairs import user_range
from launch.cli import main
from tests.conftest import stop_process_group

ROOT = Path(__file__).resolve().parents[1]
TORCHREC = ["model.backend=torchrec", "optim.mode=adagrad", "optim.lr=0.05"]


def _sets(items):
    return [a for kv in items for a in ("--set", kv)]


def test_two_workers_stream_every_stage(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    rc = main(["run", "--data", str(tiny_dataset), "--config", "configs/synthetic.yaml",
               "--out", str(out), "--workers", "2", "--max-failures", "0"]
              + _sets(TORCHREC + ["pretrain.epochs=2", "mba.epochs=2", "train.batch_size=256",
                                  "train.merged_baseline=false", "train.input=stream",
                                  "train.checkpoint_every=1"]))
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["stages"]) == {"pre_f", "pre_g", "mba"}
    # Each worker streams its own users' rows once per epoch, up to the step where the smaller
    # partition ends (less its tail: fewer than a local batch of 128 rows).
    meta = json.loads((tiny_dataset / "meta.json").read_text())["splits"]["train"]
    n_target = meta["purchase"]["rows"]
    ds = Dataset(tiny_dataset)
    least = min(len(ds.pairs("train", "purchase", user_range(ds.num_users, r, 2))) for r in (0, 1))
    per_rank_epoch = m["stages"]["pre_f"]["triples"] / (2 * 2)  # 2 epochs, 2 ranks
    assert least - 128 < per_rank_epoch <= least
    assert 0 < m["stages"]["mba"]["triples"] / 2 <= meta["click"]["rows"] + n_target
    log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in log] == [
        ("pre_f", 1), ("pre_f", 2), ("pre_g", 1), ("pre_g", 2), ("mba", 1), ("mba", 2)]
    assert all(r["dn_steps"] + r["dp_steps"] > 0 for r in log if r["stage"] == "mba")
    assert (out / "recommendations.parquet").is_dir() and (out / "results.md").is_file()
    # the finished run keeps its stage files; its resumable states are removed
    assert (out / "ray").is_dir() and not list((out / "ray").rglob("state.pt"))


def _rows(source, stage, epoch) -> list[tuple[int, int, int]]:
    return [(int(u), int(i), int(n)) for b in source.epoch(stage, epoch)
            for u, i, n in zip(b.users, b.pos, b.neg)]


def test_stream_gives_every_row_once_per_epoch_in_a_new_order(tiny_dataset):
    """Both epoch orders of the stream (`train.stream_shuffle`): an epoch streams every train
    row once (less the dropped tail), in an order that is not the file's and changes from
    epoch to epoch, with negatives the worker drew outside the stage's pairs. In `blocks`
    order an epoch read again gives the same rows and negatives (what a resumed run reads), and
    two ranks take the same number of steps over the rows of their own users."""
    import numpy as np
    import ray

    from mba_dist.data.stream import StreamPlan
    from mba_dist.errors import ConfigError
    from mba_dist.dist.ray import init_ray
    from mba_dist.mba.stages import stage_plan

    started = init_ray()
    try:
        target = Dataset(tiny_dataset).pairs("train", "purchase")
        want = set(zip(target.users.tolist(), target.items.tolist()))
        for mode in ("blocks", "full"):
            cfg = C.load_config("configs/synthetic.yaml", [
                "data.aux=click", "train.batch_size=32", f"train.stream_shuffle={mode}"])
            others = [st.name for st in stage_plan(cfg) if st.name != "pre_f"]  # not read here
            plan = StreamPlan(cfg, str(tiny_dataset), skip=others)
            stage = next(st for st in stage_plan(cfg) if st.name == "pre_f")
            source = plan.source()
            orders = [_rows(source, stage, epoch) for epoch in (1, 2)]
            for rows in orders:
                pairs = [(u, i) for u, i, _ in rows]
                assert len(pairs) == len(set(pairs)) > len(want) - 32, mode
                assert set(pairs) <= want, mode
                assert not want & {(u, n) for u, _, n in rows}, mode  # negatives avoid them
            assert orders[0] != orders[1], mode
            users = np.array([u for u, _, _ in orders[0]])
            assert (np.diff(users) < 0).sum() > len(users) // 4, mode  # not in file order
            if mode == "blocks":
                assert _rows(plan.source(), stage, 2) == orders[1]
        two = StreamPlan(C.load_config("configs/synthetic.yaml", [
            "data.aux=click", "train.batch_size=32"]), str(tiny_dataset), world=2, skip=others)
        feeds = two.feeds()["pre_f"]
        ranks = [{(u, i) for u, i, _ in _rows(two.source(r), stage, 1)} for r in (0, 1)]
        assert len(ranks[0]) == len(ranks[1]) and len(ranks[0]) % 16 == 0
        assert not ranks[0] & ranks[1]
        # a rank reads its users' rows only, and its negatives' keys hold only their pairs
        for r, rows in enumerate(ranks):
            lo, hi = two.users[r]
            assert lo < hi and all(lo <= u < hi for u, _ in rows)
            keys = ray.get(feeds[r].exclude) // Dataset(tiny_dataset).num_items
            assert len(keys) and keys.min() >= lo and keys.max() < hi
        short = abs(sum(feeds[0].rows) - sum(feeds[1].rows))  # the larger partition's excess
        assert short < len(want) // 4
        assert len(ranks[0] | ranks[1]) > len(want) - 32 - short
        # a partition smaller than a local batch would train no step: refused, naming it
        big = StreamPlan(C.load_config("configs/synthetic.yaml", [
            "data.aux=click", f"train.batch_size={2 * len(want)}"]), str(tiny_dataset), world=2)
        with pytest.raises(ConfigError, match="fewer than a local batch"):
            big.feeds()
    finally:
        if started:
            ray.shutdown()


def test_auto_input_streams_large_data_only(tiny_dataset):
    from mba_dist.train.ray_job import streams
    from mba_dist.data.stream import train_rows

    cfg = C.load_config("configs/synthetic.yaml")
    meta = json.loads((tiny_dataset / "meta.json").read_text())["splits"]["train"]
    assert train_rows(cfg, tiny_dataset) == meta["purchase"]["rows"] + meta["click"]["rows"]
    assert not streams(cfg, tiny_dataset)  # far below train.stream_min_rows
    small = C.load_config("configs/synthetic.yaml", ["train.stream_min_rows=100"])
    assert streams(small, tiny_dataset)
    forced = C.load_config("configs/synthetic.yaml", ["train.input=memory",
                                                      "train.stream_min_rows=0"])
    assert not streams(forced, tiny_dataset)


def _train_worker_pids():
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if b"RayTrainWorker" in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def _reference(cfg, data, out):
    """The uninterrupted run: the same worker function on 2 local gloo ranks."""
    from mba_dist.dist.local import run_local_ranks
    from mba_dist.run_dir import RunDir
    from mba_dist.train.runner import run_training
    return run_local_ranks(run_training, 2, cfg, str(data), RunDir(out))[0]


def test_killed_worker_resumes_from_last_checkpoint(tiny_dataset, tmp_path):
    sets = TORCHREC + ["pretrain.epochs=2", "mba.epochs=3", "train.batch_size=32",
                       "train.merged_baseline=false", "train.input=memory",
                       "train.checkpoint_every=1"]
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.train", "--data", str(tiny_dataset), "--config",
         "configs/synthetic.yaml", "--out", str(out), "--workers", "2", "--max-failures", "2"]
        + _sets(sets), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    killed = None
    try:
        deadline = time.time() + 400
        while time.time() < deadline and killed is None and proc.poll() is None:
            log = out / "log.jsonl"
            records = log.read_text().splitlines() if log.is_file() else []
            if any(json.loads(r)["stage"] == "mba" for r in records):
                pids = _train_worker_pids()
                if pids:  # mba epoch 2 is under way: kill one worker process
                    killed = pids[-1]
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert killed is not None, "the run ended before a worker could be killed"
    assert "resuming from" in text
    got = json.loads((out / "metrics.json").read_text())
    cfg = C.load_config("configs/synthetic.yaml", sets)
    want = _reference(cfg, tiny_dataset, tmp_path / "reference")
    # In-memory batches draw per-epoch randomness, so the resumed run is the uninterrupted one.
    assert got["test"] == pytest.approx(want["test"], rel=1e-6)
    log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in log] == [
        ("pre_f", 1), ("pre_f", 2), ("pre_g", 1), ("pre_g", 2), ("mba", 1), ("mba", 2), ("mba", 3)]


def test_ray_job_submit_to_a_local_cluster(tiny_dataset, tmp_path):
    """The README's cluster recipe on loopback, token authentication on as on a user's cluster:
    `ray start --head` from the activated venv (so the job's `python` is the venv's), then
    `ray job submit --working-dir .` of launch.train with the cluster's token."""
    import secrets

    from mba_dist.dist.local import free_loopback_port

    venv_bin = Path(sys.executable).parent
    ray_cli = str(venv_bin / "ray")
    token = secrets.token_hex(16)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "GLOO_SOCKET_IFNAME": "lo",
           "RAY_USAGE_STATS_ENABLED": "0",
           # `source .venv/bin/activate` of the recipe
           "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(venv_bin.parent),
           # the recipe's `export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=...` (a token of this
           # test's own, not the user's ~/.ray/auth_token)
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    env.pop("RAY_ADDRESS", None)
    # the job agent's port too: its default (52365) is taken by any other Ray on the machine
    gcs, dash, agent = free_loopback_port(), free_loopback_port(), free_loopback_port()
    # --block keeps the head in a process group of its own: stopping it stops this cluster
    # only (`ray stop` would stop every Ray on the machine).
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--num-cpus=2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 180
        while subprocess.run([ray_cli, "job", "list", f"--address={address}"], env=env,
                             capture_output=True, timeout=60).returncode != 0:
            assert head.poll() is None and time.time() < deadline, "ray start --head failed"
            time.sleep(2)
        # the cluster does check the token: a submitter without it is refused
        wrong = {**env, "RAY_AUTH_TOKEN": secrets.token_hex(16)}
        refused = subprocess.run([ray_cli, "job", "list", f"--address={address}"], env=wrong,
                                 capture_output=True, timeout=60)
        assert refused.returncode != 0
        out = tmp_path / "run"
        job = subprocess.run(
            [ray_cli, "job", "submit", f"--address={address}", "--working-dir", ".",
             "--", "python", "-m", "launch.train", "--data", str(tiny_dataset), "--config",
             "configs/synthetic.yaml", "--out", str(out), "--workers", "2"]
            + _sets(TORCHREC + ["pretrain.epochs=1", "mba.epochs=1", "train.batch_size=256",
                                "train.merged_baseline=false"]),
            cwd=ROOT, env=env, capture_output=True, timeout=600)
        text = (job.stdout + job.stderr).decode(errors="replace")
        assert job.returncode == 0, text[-3000:]
        assert "succeeded" in text
        m = json.loads((out / "metrics.json").read_text())
        assert m["model"] == "mba" and m["stages"]["mba"]["triples"] > 0
    finally:
        stop_process_group(head, timeout=60)


def test_a_killed_driver_leaves_no_ray_processes(tiny_dataset, tmp_path):
    """SIGKILL of the driver of the embedded cluster (no `ray.shutdown()`): every Ray process it
    started ends (`dist.reaper`)."""
    from mba_dist.dist.reaper import _stat, ray_descendants

    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch.cli", "run", "--data", str(tiny_dataset), "--config",
         "configs/synthetic.yaml", "--out", str(out), "--set", "pretrain.epochs=300",
         "--set", "pretrain.patience=300"], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (out / "log.jsonl").is_file() and time.time() < deadline:
            time.sleep(0.2)
        ray_procs = ray_descendants(proc.pid)
        assert (out / "log.jsonl").is_file() and len(ray_procs) >= 3  # gcs, raylet, workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 30
        while time.time() < deadline:
            left = [p for p, t in ray_procs.items() if (st := _stat(p)) and st[1] == t]
            if not left:
                break
            time.sleep(0.5)
        assert not left, [(p, (Path("/proc") / str(p) / "cmdline").read_bytes()[:60]) for p in left]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_reaper_takes_only_rays_processes():
    """A child whose command line merely contains "ray" (a home directory named murray) is not
    one of Ray's, and is never stopped."""
    from mba_dist.dist.reaper import ray_descendants

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                              "/home/murray/notes", "ray"])
    try:
        time.sleep(0.3)
        assert child.pid not in ray_descendants(os.getpid())
    finally:
        child.kill()
        child.wait()
