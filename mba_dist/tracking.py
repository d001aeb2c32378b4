"""Experiment tracking: the per-epoch records of log.jsonl (which stays the source of truth) as
TensorBoard scalars in RUN/tensorboard/ (by default) and in an MLflow run (when asked).

`Tracking` is what to send where (plain data: it travels to the Ray Train workers inside the run
directory); `Trackers` are the open writers, made on rank 0 where the records are. The MLflow run
is created by the driver (`start_mlflow`: params = the resolved config, flattened), fed epoch
by epoch by rank 0, and finished by the driver (`finish_mlflow`: the test metrics, the baseline
table, and the run's files as artifacts).

Names: `STAGE/loss`, `STAGE/triples_per_s`, `STAGE/valid/recall_at_20` (MLflow refuses `@`),
with the stage's epoch as the step; the final ones are `test/recall_at_20` and
`baselines/MODEL/test/recall_at_20`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from mba_dist import config as C

TENSORBOARD_DIR = "tensorboard"


@dataclass
class Tracking:
    tensorboard: bool = True
    mlflow_uri: str | None = None
    mlflow_experiment: str = "mba-dist"
    mlflow_run_id: str | None = None  # set by `start_mlflow`


def metric_name(name: str) -> str:
    return name.replace("@", "_at_")


def epoch_scalars(record: dict) -> dict[str, float]:
    """The scalars of one log.jsonl record, by name (without the step)."""
    stage = record["stage"]
    out = {f"{stage}/loss": record["loss"], f"{stage}/triples_per_s": record["triples_per_s"]}
    for split in ("valid", "test"):
        for k, v in (record.get(split) or {}).items():
            if "@" in k:
                out[f"{stage}/{split}/{metric_name(k)}"] = v
    return out


def _client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:  # an optional dependency
        from mba_dist.errors import ArgumentError
        raise ArgumentError("--mlflow needs the mlflow package (pip install mlflow)") from None
    return MlflowClient(tracking_uri=uri)


def start_mlflow(t: Tracking, cfg: C.Config, name: str, tags: dict[str, str]) -> None:
    """Create the MLflow run of this training run (its id goes into `t`), with the resolved
    config as params."""
    if t.mlflow_uri is None:
        return
    client = _client(t.mlflow_uri)
    exp = client.get_experiment_by_name(t.mlflow_experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(
        t.mlflow_experiment)
    run = client.create_run(exp_id, run_name=name, tags=tags)
    t.mlflow_run_id = run.info.run_id
    from mlflow.entities import Param
    # MLflow takes param values of at most 6000 characters
    params = [Param(k, str(v)[:6000]) for k, v in sorted(C.dotted(cfg).items())]
    for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(t.mlflow_run_id, params=params[i:i + 100])


def finish_mlflow(t: Tracking, metrics: dict | None, files: list[Path]) -> None:
    """End the MLflow run: with the final metrics and `files` as artifacts, or, when
    `metrics` is None, as failed."""
    if t.mlflow_run_id is None:
        return
    client = _client(t.mlflow_uri)
    if metrics is None:
        client.set_terminated(t.mlflow_run_id, "FAILED")
        return
    from mlflow.entities import Metric
    now = int(time.time() * 1000)
    final = {f"test/{metric_name(k)}": v for k, v in metrics["test"].items() if "@" in k}
    for model, row in metrics["baselines"].items():
        for split, values in row.items():
            for k, v in values.items():
                if "@" in k:
                    final[f"baselines/{model}/{split}/{metric_name(k)}"] = v
    final["best_epoch"] = metrics["best_epoch"]
    items = [Metric(k, float(v), now, 0) for k, v in sorted(final.items())]
    for i in range(0, len(items), 1000):
        client.log_batch(t.mlflow_run_id, metrics=items[i:i + 1000])
    for f in files:
        if f.is_file():
            client.log_artifact(t.mlflow_run_id, str(f))
    client.set_terminated(t.mlflow_run_id, "FINISHED")


class Trackers:
    """The open writers of one run (rank 0): TensorBoard under `root`, the MLflow run."""

    def __init__(self, t: Tracking, root: Path):
        self.t, self.tb, self.client = t, None, None
        if t.tensorboard:
            from tensorboardX import SummaryWriter
            self.tb = SummaryWriter(logdir=str(root / TENSORBOARD_DIR), flush_secs=10)
        if t.mlflow_run_id is not None:
            self.client = _client(t.mlflow_uri)

    def epoch(self, record: dict) -> None:
        scalars = epoch_scalars(record)
        step = int(record["epoch"])
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.client is not None:
            from mlflow.entities import Metric
            now = int(time.time() * 1000)
            self.client.log_batch(self.t.mlflow_run_id,
                                  metrics=[Metric(k, float(v), now, step)
                                           for k, v in scalars.items()])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
