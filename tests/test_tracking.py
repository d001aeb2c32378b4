"""Experiment tracking: TensorBoard event files hold the records of log.jsonl, and a real MLflow
tracking server (started here on 127.0.0.1, SQLite backend) receives the config, every epoch,
the final table and the run's files."""
import json
import socket
import struct
import subprocess
import sys
import time
import urllib.request

import pytest

from launch.cli import main
from tests.conftest import stop_process_group

FAST = ["pretrain.epochs=3", "mba.epochs=3", "train.merged_baseline=false", "data.aux=click"]


def _sets(items):
    return [a for kv in items for a in ("--set", kv)]


def _log(run):
    return [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]


def _events(logdir):
    """(tag, step, value) of every scalar in the TensorBoard event files under `logdir`."""
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):  # TFRecord: length, its crc, the record, its crc
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                out.append((v.tag, event.step, v.simple_value))
    return out


def test_tensorboard_holds_every_epoch_record(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--local", "--data", str(tiny_dataset), "--config",
                 "configs/synthetic.yaml", "--out", str(out)] + _sets(FAST)) == 0
    got = {(tag, step): value for tag, step, value in _events(out / "tensorboard")}
    records = _log(out)
    assert len(records) == 9
    for r in records:
        assert got[(f"{r['stage']}/loss", r["epoch"])] == pytest.approx(r["loss"], rel=1e-6)
        if r.get("valid"):
            assert got[(f"{r['stage']}/valid/recall_at_20", r["epoch"])] == pytest.approx(
                r["valid"]["recall@20"], rel=1e-6)
    assert main(["run", "--local", "--data", str(tiny_dataset), "--config",
                 "configs/synthetic.yaml", "--out", str(tmp_path / "quiet"),
                 "--no-tensorboard"] + _sets(FAST)) == 0
    assert not (tmp_path / "quiet" / "tensorboard").exists()


@pytest.fixture
def mlflow_server(tmp_path):
    pytest.importorskip("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tmp_path / "mlflow"
    store.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--artifacts-destination", str(store / "artifacts"), "--workers", "1"],
        cwd=store, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield uri
    finally:
        stop_process_group(proc, timeout=20)


def test_mlflow_receives_config_epochs_table_and_files(tiny_dataset, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "run"
    # through Ray Train: rank 0 sends the epochs from its worker process
    assert main(["run", "--data", str(tiny_dataset), "--config", "configs/synthetic.yaml",
                 "--out", str(out), "--mlflow", mlflow_server, "--mlflow-experiment", "t"]
                + _sets(FAST + ["mba.alpha=7"])) == 0
    info = json.loads((out / "run.json").read_text())["mlflow"]
    client = MlflowClient(mlflow_server)
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "t"
    assert run.data.params["mba.alpha"] == "7.0" and run.data.params["data.aux"] == "click"
    assert run.data.tags["mba_dist.run_dir"] == str(out.resolve())
    for stage in ("pre_f", "pre_g", "mba"):
        history = client.get_metric_history(info["run_id"], f"{stage}/loss")
        want = [(r["epoch"], r["loss"]) for r in _log(out) if r["stage"] == stage]
        got = sorted((m.step, m.value) for m in history)
        assert [g[0] for g in got] == [w[0] for w in want]
        assert [g[1] for g in got] == pytest.approx([w[1] for w in want], rel=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["test/recall_at_20"] == pytest.approx(metrics["test"]["recall@20"])
    assert run.data.metrics["baselines/mostpop/test/recall_at_20"] == pytest.approx(
        metrics["baselines"]["mostpop"]["test"]["recall@20"])
    files = {a.path for a in client.list_artifacts(info["run_id"])}
    assert files >= {"results.md", "metrics.json", "config.yaml", "run.json", "log.jsonl",
                     "training.png", "baselines.png", "behaviors.png"}
    # a run that fails is marked failed
    bad = tmp_path / "bad"
    assert main(["run", "--local", "--data", str(tiny_dataset), "--out", str(bad), "--mlflow",
                 mlflow_server, "--set", "method=mf", "--set", "optim.mode=sgd",
                 "--set", "optim.lr=1e30", "--set", "pretrain.epochs=3"]) == 2
    failed = client.search_runs([client.get_experiment_by_name("mba-dist").experiment_id])
    assert [r.info.status for r in failed] == ["FAILED"]
