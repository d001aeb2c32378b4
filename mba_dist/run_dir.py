"""`RunDir`: the one owner of a run directory.

    RUN/config.yaml                  the resolved config
    RUN/run.json                     dataset path, config file, overrides, start time
    RUN/log.jsonl                    one record per epoch (rank 0)
    RUN/checkpoints/<stage>/         each finished stage's best weights, every rank's shards
                                     (`train.checkpoint`; `<stage>.pt` in runs of format 1)
    RUN/metrics.json                 test metrics and the baseline table: the run finished
    RUN/results.md                   the table as printed
    RUN/recommendations.parquet/     top-N lists of every test user, raw ids, one part-RANK.parquet
                                     per rank (not with eval.top_n 0; a file in earlier runs)
    RUN/ray/                         Ray Train's storage: resumable states (unless --storage)
    RUN/{baselines,evaluation}.{md,csv}   written by `mba-dist evaluate`

Nothing else in the package writes into a run directory: the worker function hands its records,
stage checkpoints and metrics to a `RunDir` (`train.runner.RunOutputs`). Every decision about a
directory is taken here and *before* anything is written (`check_new_run`): a finished run is
never overwritten without `--overwrite`, a resumable state of another config is refused, so a
rejected command changes nothing on disk. `load` reads a finished run back (`FinishedRun`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager, Iterator

import numpy as np

from mba_dist import config as C
from mba_dist.data.dataset import Dataset
from mba_dist.data.train_data import TrainData
from mba_dist.errors import CheckpointError, RunError
from mba_dist.eval import baselines
from mba_dist.eval.export import top_n_table
from mba_dist.eval.scorers import AuxFirst, Scorer
from mba_dist.files import (atomic_dir, atomic_write_bytes, clear_leftovers, ensure_dir,
                            swap_in, temp_dir_for, temp_prefix)
from mba_dist.mba.stages import main_model
from mba_dist.tracking import Trackers, Tracking
from mba_dist.train import checkpoint
from mba_dist.train.runner import reused_stages

SIGNATURE = {"tool": "mba-dist", "kind": "run"}  # in run.json: this directory is a run


def is_run(path: Path) -> bool:
    """Whether `path` is a run directory this tool wrote (its run.json carries the signature;
    runs written before the signature existed have run.json with their dataset and overrides)."""
    try:
        info = json.loads((Path(path) / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and (
        all(info.get(k) == v for k, v in SIGNATURE.items()) or {"data", "sets"} <= set(info))


def stage_path(root: Path, name: str) -> Path:
    """A stage's checkpoint: its directory, or the file of a run written in format 1."""
    d = Path(root) / "checkpoints" / name
    legacy = d.with_name(f"{name}.pt")
    return legacy if legacy.is_file() and not d.is_dir() else d


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({e})") from None


def _check_same_dataset(info: dict, ds: Dataset, root: Path, what: str = "") -> None:
    """A run's run.json records its dataset's fingerprint (runs from before it did not)."""
    want = info.get("dataset_fingerprint")
    if want is not None and want != ds.fingerprint:
        raise RunError(f"{what}{root} was trained on another dataset than {ds.root} "
                       f"(fingerprint {want}, this one {ds.fingerprint}: its meta.json differs)")


class RunDir:
    """Paths, decisions and writers of one run directory (picklable: workers get it).
    `tracking`: where rank 0 also sends every epoch record (`tracking.Tracking`)."""

    def __init__(self, root: str | Path, tracking: Tracking | None = None):
        self.root = Path(root).resolve()
        self.tracking = tracking
        self._trackers: Trackers | None = None  # opened by the first record, on rank 0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_trackers": None}  # open writers stay in their process

    # ---- paths -----------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.json"

    @property
    def log_path(self) -> Path:
        return self.root / "log.jsonl"

    def stage_path(self, name: str) -> Path:
        return stage_path(self.root, name)

    @property
    def local_state_path(self) -> Path:
        """A `--local` run's resumable state: RUN/checkpoint/state.pt, beside its shards (the
        directory is replaced whole every checkpoint)."""
        return self.root / "checkpoint" / checkpoint.RESUME_STATE_FILE

    def ray_storage(self, storage: str | None) -> str:
        return storage or str(self.root / "ray")

    def ray_run_name(self, storage: str | None, fresh: bool) -> str:
        """The Ray Train run a job resumes from when it is submitted again. Under RUN/ray it is
        the run directory's own ("mba-dist"; `--overwrite` clears RUN/ray first). In a shared
        `storage` it is keyed by the run directory, so runs do not resume each other's
        checkpoints, and a `fresh` start (`--overwrite`) gets a new one."""
        if storage is None:
            return "mba-dist"
        name = f"mba-dist-{self.root.name}-{hashlib.sha1(str(self.root).encode()).hexdigest()[:8]}"
        return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}" if fresh else name

    # ---- decisions (before anything is written) ---------------------------------------------
    def check_new_run(self, cfg: C.Config, overwrite: bool, storage: str | None = None,
                      local: bool = False) -> Path | None:
        """Whether `mba-dist run` may train `cfg` into this directory: not over a finished run
        without `overwrite`, and not on top of a resumable state of another config. Returns
        the state this run resumes from (`latest_resume_state`), if any."""
        if self.root.exists() and not self.root.is_dir():
            raise RunError(f"{self.root} exists and is not a directory")
        if self.root.is_dir() and any(self.root.iterdir()) and not is_run(self.root):
            raise RunError(f"{self.root} is not an mba-dist run (no run.json of one); choose "
                           "another --out" + ("; --overwrite replaces only a run mba-dist wrote"
                                              if overwrite else ""))
        if self.metrics_path.exists() and not overwrite:
            raise RunError(f"{self.root} holds a finished run (metrics.json); pass --overwrite "
                           "or choose another --out")
        if overwrite:
            return None  # nothing is resumed
        state = self.latest_resume_state(storage, local)
        if state is not None:
            try:  # memory-mapped: the config is read, the tables are not
                checkpoint.check_resumable(checkpoint.load_resume_state(state, mmap=True), cfg)
            except (C.ConfigError, CheckpointError) as e:
                raise type(e)(f"{self.root} holds an unfinished run that would resume "
                              f"({state}): {e}; pass --overwrite to start over") from None
        return state

    def latest_resume_state(self, storage: str | None = None, local: bool = False
                            ) -> Path | None:
        """The newest resumable state this run would resume from, if any: a `local` run's own
        (`local_state_path`), or Ray Train's run of it in RUN/ray or in a `storage` on a local
        path (a remote storage is not looked into; the workers check what they resume)."""
        if local:
            if self.local_state_path.is_file():
                return self.local_state_path
            # a kill between the two renames of a swap leaves the last state under its .old name
            final = self.local_state_path.parent
            old = list(final.parent.glob(f".{final.name}.old-*/{checkpoint.RESUME_STATE_FILE}"))
            return max(old, key=lambda p: p.stat().st_mtime) if old else None
        if storage is not None and "://" in storage:
            return None
        ray_dir = Path(self.ray_storage(storage)) / self.ray_run_name(storage, fresh=False)
        found = list(ray_dir.rglob(checkpoint.RESUME_STATE_FILE)) if ray_dir.is_dir() else []
        return max(found, key=lambda p: p.stat().st_mtime) if found else None

    def build_dir(self, overwrite: bool) -> "RunDir":
        """Where this command builds its run: here, or with `overwrite` over a run that is
        already here, beside it (a `files.temp_dir_for` sibling, swapped in by `replace_with`
        once finished), so that a killed or failed command leaves the earlier run as it was;
        what a killed command of this run left beside it is removed here."""
        clear_leftovers(self.root.parent, self.root.name)
        if not (overwrite and is_run(self.root)):
            return self
        return RunDir(temp_dir_for(self.root), self.tracking)

    def replace_with(self, built: "RunDir") -> None:
        """Swap a finished `built` run in for this one (the earlier run is moved aside, the new
        one renamed into place, then the earlier one deleted)."""
        if built.root != self.root:
            swap_in(built.root, self.root)

    # ---- writers ------------------------------------------------------------------------------
    def begin(self, cfg: C.Config, info: dict, overwrite: bool, storage: str | None = None) -> None:
        """Start a run (after `check_new_run`): the config and run.json, a fresh log."""
        if overwrite:  # a fresh start resumes nothing the directory held
            shutil.rmtree(self.local_state_path.parent, ignore_errors=True)
            if storage is None:  # Ray Train would resume its last checkpoint from RUN/ray
                shutil.rmtree(self.root / "ray", ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path.unlink(missing_ok=True)
        atomic_write_bytes(self.config_path, C.config_yaml(cfg).encode())
        atomic_write_bytes(self.root / "run.json",
                           json.dumps({**SIGNATURE, **info}, indent=2).encode())

    def add_info(self, fields: dict) -> None:
        """Add `fields` to run.json (the finish time)."""
        atomic_write_bytes(self.root / "run.json",
                           json.dumps({**self.read_info(), **fields}, indent=2).encode())

    def append_log(self, record: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tracking is not None:
            if self._trackers is None:
                self._trackers = Trackers(self.tracking, self.root)
            self._trackers.epoch(record)

    def rewrite_log(self, records: list[dict]) -> None:
        atomic_write_bytes(self.log_path, "".join(json.dumps(r) + "\n" for r in records).encode())

    def new_resume_state(self) -> ContextManager[Path]:
        """A directory for the next resumable state that replaces RUN/checkpoint once the block
        ends (`files.atomic_dir`: built beside it, the earlier state kept until then)."""
        return atomic_dir(self.local_state_path.parent, overwrite=True)

    def remove_checkpoints(self) -> None:
        """A finished run keeps its stage files; its resumable state goes (`--local`; Ray
        Train's are removed by `train.ray_job`)."""
        shutil.rmtree(self.local_state_path.parent, ignore_errors=True)

    def new_stage(self, name: str) -> ContextManager[Path]:
        """A directory for a stage's checkpoint that becomes RUN/checkpoints/<name> once the
        block ends (`files.atomic_dir`)."""
        return atomic_dir(self.root / "checkpoints" / name, overwrite=True)

    def write_metrics(self, metrics: dict) -> None:
        atomic_write_bytes(self.metrics_path, json.dumps(metrics, indent=2).encode())
        if self._trackers is not None:  # the last record of the run has been sent
            self._trackers.close()
            self._trackers = None

    @property
    def recommendations_path(self) -> Path:
        return self.root / "recommendations.parquet"

    def new_recommendations(self) -> ContextManager[Path]:
        """A directory for the ranks' parts that becomes RUN/recommendations.parquet once the
        block ends (`files.atomic_dir`)."""
        return atomic_dir(self.recommendations_path, overwrite=True)

    def write_results(self, report: str) -> None:
        """results.md."""
        atomic_write_bytes(self.root / "results.md", (report + "\n").encode())

    def write_report(self, stem: str, markdown: str, csv: str, dest: Path | None = None) -> Path:
        """`mba-dist evaluate`'s STEM.md and STEM.csv, in the run or in `dest`."""
        out = ensure_dir(Path(dest) if dest is not None else self.root)
        atomic_write_bytes(out / f"{stem}.md", (markdown + "\n").encode())
        atomic_write_bytes(out / f"{stem}.csv", csv.encode())
        return out

    def write_plots(self, pngs: dict[str, bytes], dest: Path | None = None) -> list[Path]:
        """`mba-dist plot`'s PNG files, in RUN/plots or in `dest`."""
        out = ensure_dir(Path(dest) if dest is not None else self.root / "plots")
        for name, data in pngs.items():
            atomic_write_bytes(out / name, data)
        return [out / name for name in pngs]

    @contextmanager
    def ray_staged_resume_state(self) -> Iterator[str]:
        """A temporary directory for this rank's part of a resumable state, for Ray Train to
        copy into the run's storage (`train.ray_job.RayCheckpoints`; the ranks' parts are
        merged there)."""
        clear_leftovers(Path(tempfile.gettempdir()), "mba-dist-ckpt")
        with tempfile.TemporaryDirectory(prefix=temp_prefix("mba-dist-ckpt")) as d:
            yield d

    # ---- reading -----------------------------------------------------------------------------
    def read_metrics(self) -> dict:
        return _read_json(self.metrics_path)

    def read_info(self) -> dict:
        """run.json: the dataset and its fingerprint, what the run was made with, its times."""
        return _read_json(self.root / "run.json")

    def read_log(self) -> list[dict]:
        """The epoch records of log.jsonl."""
        try:
            return [json.loads(ln) for ln in self.log_path.read_text().splitlines() if ln]
        except FileNotFoundError:
            raise RunError(f"{self.log_path} is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunError(f"{self.log_path}: not a log of JSON lines ({e})") from None

    def stages(self) -> "StageFiles":
        """The stage checkpoints of this run, finished or not (`pretrain.from_run`)."""
        if not self.config_path.is_file():
            raise RunError(f"{self.config_path} is missing: {self.root} is not an mba-dist run")
        return StageFiles(self.root, C.load_config(self.config_path))

    def load(self) -> "FinishedRun":
        """A finished run: its config, dataset and stage checkpoints."""
        for name in ("run.json", "config.yaml", "metrics.json"):
            if not (self.root / name).is_file():
                raise RunError(f"{self.root / name} is missing: {self.root} is not a finished "
                               "mba-dist run")
        info = self.read_info()
        if "data" not in info:
            raise RunError(f"{self.root / 'run.json'} names no dataset")
        ds = Dataset(info["data"])
        _check_same_dataset(info, ds, self.root)
        return FinishedRun(self.root, C.load_config(self.config_path), ds)


@dataclass
class StageFiles:
    """Stage checkpoints of a run directory (`train.runner.FinishedStages`)."""

    root: Path
    cfg: C.Config

    def has_stage(self, name: str) -> bool:
        return stage_path(self.root, name).exists()

    def stage_checkpoint(self, name: str) -> Path:
        return stage_path(self.root, name)

    def stage_weights(self, name: str) -> checkpoint.Weights:
        """A stage's whole tables (`evaluate`, `recommend`, the plots)."""
        return checkpoint.load_stage_weights(stage_path(self.root, name))

    def stage_info(self, name: str) -> dict:
        """The stage's entry in metrics.json ({} while the run is still going)."""
        path = self.root / "metrics.json"
        return _read_json(path).get("stages", {}).get(name, {}) if path.is_file() else {}

    def check_reusable(self, cfg: C.Config, ds: Dataset) -> None:
        """Whether `cfg` (method mba) on `ds` can reuse this run's stage-1 models."""
        path = self.root / "run.json"
        if path.is_file():
            _check_same_dataset(_read_json(path), ds, self.root, "pretrain.from_run ")
        if self.cfg.data.target != cfg.data.target:
            raise C.ConfigError(f"pretrain.from_run {self.root}: target {self.cfg.data.target!r} "
                                f"differs from data.target {cfg.data.target!r}")
        # the runner's rule of what is reused; mf_merged is taken only where there is one
        needed = [n for n in reused_stages(self, cfg) if n != "mf_merged"]
        for name in needed:
            if not self.has_stage(name):
                raise RunError(f"pretrain.from_run {self.root}: no {name} checkpoint yet")


@dataclass
class FinishedRun(StageFiles):
    """A finished run read back: the scorer of its model, its evaluation, its top-N lists."""

    ds: Dataset

    def all_stage_weights(self) -> dict[str, checkpoint.Weights]:
        where = self.root / "checkpoints"
        found = sorted({p.parent.name for p in where.glob(f"*/{checkpoint.STAGE_FILE}")
                        if not p.parent.name.startswith(".")}
                       | {p.stem for p in where.glob("*.pt")})
        if not found:
            raise RunError(f"{where} holds no checkpoint")
        return {n: self.stage_weights(n) for n in found}

    def scorer(self) -> Scorer:
        """The scorer of the run's own model (the MF model of an mf run, or MBA's blend)."""
        needed = ([main_model(self.cfg)] if self.cfg.method == "mf" else
                  ["mba", "pre_f"] + [m for m, _ in baselines.blended_models(self.cfg)])
        return baselines.model_scorer(self.cfg, {n: self.stage_weights(n) for n in needed})

    def data(self) -> TrainData:
        return TrainData.load(self.ds, self.cfg)

    def evaluate(self, with_baselines: bool = True, group=None) -> dict:
        """{row: {split: metrics}}: the run's model, and the baselines it has checkpoints for."""
        data = self.data()
        stages = self.all_stage_weights()
        rows = (baselines.scorers(self.cfg, data, stages) if with_baselines
                else baselines.with_aux_first(
                    self.cfg, {main_model(self.cfg): baselines.model_scorer(self.cfg, stages)},
                    baselines.aux_cells(data)))
        return baselines.table(self.cfg, data, rows, ("valid", "test", "truth"), group)

    def recommendations(self, users: np.ndarray, n: int):
        """Top-n lists of `users` (dense ids) in raw ids, known purchases excluded (with
        `eval.aux_first`, each user's auxiliary items first)."""
        data, scorer = self.data(), self.scorer()
        if self.cfg.eval.aux_first and data.aux is not None:
            scorer = AuxFirst(scorer, baselines.aux_cells(data))
        return top_n_table(scorer, self.ds, users, data.test_mask, n, self.cfg.eval.memory_mb)

    def with_aux_first(self) -> "FinishedRun":
        """This run evaluated with `eval.aux_first` on (`mba-dist evaluate --aux-first`)."""
        return dataclasses.replace(self, cfg=C.override(self.cfg, {"eval.aux_first": True},
                                                        "--aux-first"))


def evaluate_run_dir(root: str, with_baselines: bool, aux_first: bool = False) -> dict:
    """`FinishedRun.evaluate` of a run directory: a module-level function, so that local ranks
    (`dist.local.run_local_ranks`) can import it."""
    run = RunDir(root).load()
    return (run.with_aux_first() if aux_first else run).evaluate(with_baselines)
