"""`mba-dist search`: Ray Tune over MBA's settings, selected on validation only.

    SEARCH/search.json   what is searched (dataset, resolved config, space, trials; the command's
                         config file and --set lines as first given): a command of the same
                         resolved config resumes the Ray Tune experiments, a larger --trials adds
                         trials (below); other settings are refused
    SEARCH/base/         the stage-1 models every trial shares: a finished run of the base config
                         (its table holds the MF baselines of the same split), unless
                         --pretrained names such a run
    SEARCH/tune/         the Ray Tune experiments (trials running when one stopped start again):
                         search/ the first --trials, search-2/, search-3/ ... each later growth
    SEARCH/trials.csv, search.md, search.png
                         every trial: its values, best validation Recall@20 / NDCG@20 and epoch,
                         epochs run, how it ended
    SEARCH/best.yaml     the winner as a config file (the base config's values and the winner's)
    SEARCH/best/         a run of best.yaml on the shared stage-1 models: the one place the test
                         set is read for the search's choice (when more trials pick another
                         winner, the earlier winner's run is moved to SEARCH/best-earlier-N/)

More trials: the same command with a larger `--trials` keeps every trial run so far and adds
the difference as a further Ray Tune experiment (Tune fixes an experiment's number of samples).
Its draws come from a random stream of its own (`train.seed` + K - 1 for tune/search-K; the
points were tried in the first part), and its ASHA starts with the earlier trials recorded at
the rungs they reached (`seed_rungs`), so the new trials are stopped against every trial so far.

A trial is MBA's stage 2 (`train.runner.run_training` with `read_test=False`) in a Ray Tune
actor; it reports after every validation, and ASHA stops the trials whose best validation
Recall@20 so far trails the others' at the same number of validations.

The space file (`configs/search/paper.yaml` is the paper's grid, §4.5):

    points:                              # tried first, in order; each counts as a trial
      - {mba.alpha: 10, mba.c1: 100, mba.c2: 100, mba.beta: 0.7}
    space:                               # config keys, as `--set` names them
      mba.alpha: [1, 10, 100, 1000]      # a list: one value drawn per trial
      mba.lambda_t: {loguniform: [1.0e-6, 1.0]}   # also: uniform
      mba.beta: {grid: [0.7, 0.8, 1.0]}  # every value, --trials times each
    scheduler: {grace_period: 20, reduction_factor: 3}   # ASHA, in validations

A point may set keys the space does not draw (the other trials keep the base config's value);
a file of points only runs exactly its points (`--trials` their number). Keys are MBA's own
(`mba.*`, the MBA stage's learning rate `mba.lr` included): every trial shares stage 1, so a
key that stage 1 reads (`optim.lr`, `pretrain.*`) would leave best.yaml describing a training
that no trial ran; such a key is refused.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from mba_dist import config as C
from mba_dist.errors import ConfigError
from mba_dist.files import atomic_write_bytes, ensure_dir

METRIC = "best_valid_recall@20"  # what ASHA compares and the search selects on
DISTRIBUTIONS = ("grid", "uniform", "loguniform")


@dataclass(frozen=True)
class Space:
    points: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)  # key -> list | {kind: values}
    grace_period: int = 20  # validations (configs/search/paper.yaml says why)
    reduction_factor: int = 3

    def keys(self) -> list[str]:
        return list(dict.fromkeys([*self.params, *(k for p in self.points for k in p)]))


def _values_to_check(spec: Any) -> list:
    if isinstance(spec, list):
        return spec
    (kind, values), = spec.items()
    return values


def load_space(path: str | Path, cfg: C.Config) -> Space:
    """The space file (module docstring), every value checked against `cfg`: an unknown key,
    a malformed entry or a value the config refuses is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a YAML file ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not set(raw) <= {"points", "space", "scheduler"}:
        raise ConfigError(f"{path}: expected a mapping of points, space and scheduler")
    points, params = raw.get("points") or [], raw.get("space") or {}
    sched = raw.get("scheduler") or {}
    if not isinstance(points, list) or not all(isinstance(p, dict) for p in points):
        raise ConfigError(f"{path}: points must be a list of mappings of config keys")
    if not isinstance(params, dict) or not (params or points):
        raise ConfigError(f"{path}: space must map config keys to values (or points be given)")
    if not isinstance(sched, dict) or not set(sched) <= {"grace_period", "reduction_factor"}:
        raise ConfigError(f"{path}: scheduler takes grace_period and reduction_factor")
    known = C.dotted(cfg)
    for key, spec in params.items():
        ok = (isinstance(spec, list) and spec) or (
            isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DISTRIBUTIONS
            and isinstance(next(iter(spec.values())), list))
        kind = next(iter(spec)) if isinstance(spec, dict) else None
        if not ok or (kind in ("uniform", "loguniform") and len(spec[kind]) != 2):
            raise ConfigError(f"{path}: space.{key}: expected a list of values, {{grid: [...]}}, "
                              "{uniform: [low, high]} or {loguniform: [low, high]}")
        if kind == "loguniform" and not all(isinstance(v, (int, float)) and v > 0
                                            for v in spec[kind]):
            raise ConfigError(f"{path}: space.{key}: loguniform bounds must be positive")
    for key in [*params, *(k for p in points for k in p)]:
        if key not in known:
            raise ConfigError(f"{path}: {key} is not a config key (e.g. mba.alpha, mba.beta)")
        if not key.startswith("mba."):  # stage 1 would read it, and stage 1 is shared
            raise ConfigError(f"{path}: {key} is not an MBA-stage key: every trial shares the "
                              "stage-1 models, so a search varies mba.* keys only (the MBA "
                              "stage's learning rate is mba.lr)")
    for key, spec in params.items():
        for v in _values_to_check(spec):
            C.override(cfg, {key: v}, f"{path}: space.{key}")
    for i, p in enumerate(points):
        C.override(cfg, p, f"{path}: points[{i}]")
    space = Space(points, params, **sched)
    if space.grace_period < 1 or space.reduction_factor < 2:
        raise ConfigError(f"{path}: scheduler.grace_period must be >= 1 and "
                          "reduction_factor >= 2")
    return space


def list_keys(cfg: C.Config | dict) -> set[str]:
    """The config keys whose value is a list (e.g. mba.blend_each)."""
    return {k for k, v in C.dotted(cfg).items() if isinstance(v, (list, tuple))}


# Ray Tune reads a list inside a trial's values as one value per element (and a point's list as
# paths into the space it cannot find), so a list-valued key travels through Tune as JSON text.
def tune_value(key: str, value: Any, lists: set[str]) -> Any:
    return json.dumps(list(value)) if key in lists else value


def to_tune(values: dict, lists: set[str]) -> dict:
    return {k: tune_value(k, v, lists) for k, v in values.items()}


def from_tune(values: dict, lists: set[str]) -> dict:
    return {k: json.loads(v) if k in lists and isinstance(v, str) else v
            for k, v in values.items()}


def tune_space(space: Space, base: C.Config) -> tuple[dict, list[dict]]:
    """The space as Ray Tune's `param_space`, and the points as its `points_to_evaluate`. A key
    only the points set is a constant of the base config's value there: Tune takes a point's
    keys only from the space."""
    from ray import tune

    lists = list_keys(base)
    kinds = {"grid": tune.grid_search, "uniform": lambda v: tune.uniform(*v),
             "loguniform": lambda v: tune.loguniform(*v)}
    out = {}
    for key, spec in space.params.items():
        if isinstance(spec, list):
            out[key] = tune.choice([tune_value(key, v, lists) for v in spec])
        else:
            (kind, values), = spec.items()
            if kind == "grid":
                values = [tune_value(key, v, lists) for v in values]
            out[key] = kinds[kind](values)
    known = C.dotted(base)
    for key in space.keys():
        if key not in out:
            out[key] = tune_value(key, known[key], lists)
    return out, [to_tune(p, lists) for p in space.points]


class _QuietTune:
    """Drops two of Tune's warnings that say nothing wrong here: that a point's value differs
    from the space's constant for a key only the points set (`tune_space`: that is what such a
    point means), and, when an experiment is resumed, a line per trial that has not reported
    yet (no result file: the trials still to run)."""

    def filter(self, record) -> bool:
        message = record.getMessage()
        if message.startswith("Failed to fetch metrics"):
            return not all("FileNotFoundError" in line for line in message.splitlines()[1:])
        return not message.startswith("Pre-set value")


_QUIET_TUNE = _QuietTune()  # one instance: a logger adds the same filter only once


@dataclass(frozen=True)
class TrialSetup:
    """What every trial needs, sent to the Ray Tune actors (plain values)."""

    config: dict  # the base config (`config.to_dict`)
    data: str
    pretrained: str  # the run whose stage-1 models a trial reuses (`pretrain.from_run`)
    threads: int

    def trial_config(self, params: dict) -> C.Config:
        """The base config with a trial's values, on the shared stage-1 models (unless the
        trial trains its own: `mba.joint_pretrain`)."""
        cfg = C.override(C.load_config(self.config), from_tune(params, list_keys(self.config)),
                         "search trial")
        if cfg.mba.joint_pretrain:
            return cfg
        return C.override(cfg, {"pretrain.from_run": self.pretrained}, "search trial")


def _trial(params: dict, setup: TrialSetup) -> None:
    """One trial: MBA's stage 2 with `params` over the shared stage-1 models; a report to Ray
    Tune after every validation. Runs in a Ray Tune actor."""
    import torch
    from ray import tune

    from mba_dist.errors import DivergedError
    from mba_dist.jobs import process_group_for
    from mba_dist.run_dir import RunDir
    from mba_dist.train.runner import run_training

    torch.set_num_threads(setup.threads)
    cfg = setup.trial_config(params)
    best = {"recall@20": -1.0, "ndcg@20": 0.0, "epoch": 0}

    def progress(stage: str, epoch: int, total: int, record: dict) -> None:
        sel = record.get("valid")
        if stage != "mba" or not sel:
            return
        if sel["recall@20"] > best["recall@20"]:  # the fit loop's rule: the first best epoch
            best.update({"recall@20": sel["recall@20"], "ndcg@20": sel["ndcg@20"], "epoch": epoch})
        tune.report({METRIC: best["recall@20"], "best_valid_ndcg@20": best["ndcg@20"],
                     "best_epoch": best["epoch"], "epoch": epoch,
                     "valid_recall@20": sel["recall@20"], "diverged": 0})

    try:
        with process_group_for(cfg):
            run_training(cfg, setup.data, None, progress, read_test=False,
                         reused=RunDir(cfg.pretrain.from_run).stages()
                         if cfg.pretrain.from_run else None)
    except DivergedError:  # a result, not a failure: the settings train to NaN
        tune.report({METRIC: max(best["recall@20"], 0.0), "best_valid_ndcg@20": best["ndcg@20"],
                     "best_epoch": best["epoch"], "epoch": -1, "valid_recall@20": 0.0,
                     "diverged": 1})


def fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def trial_rows(grids: list, keys: list[str], base: C.Config) -> list[dict]:
    """One row per trial of the search's Ray Tune `ResultGrid`s, in the order the trials were
    made (the experiments in turn)."""
    return [{**row, "trial": i} for i, row in
            enumerate((row for grid in grids for row in _grid_rows(grid, keys, base)), 1)]


def _grid_rows(results, keys: list[str], base: C.Config) -> list[dict]:
    rows, lists = [], list_keys(base)
    for r in results:
        m, values = r.metrics or {}, from_tune(r.config, lists)
        trial_id = m.get("trial_id") or Path(r.path).name
        ended = "failed" if r.error is not None else how_ended(m, values, base)
        rows.append({"trial": trial_id, **{k: values.get(k) for k in keys},
                     "valid_recall@20": m.get(METRIC, float("nan")),
                     "valid_ndcg@20": m.get("best_valid_ndcg@20", float("nan")),
                     "best_epoch": m.get("best_epoch", -1),
                     "validations": m.get("training_iteration", 0), "ended": ended,
                     "seconds": round(m.get("time_total_s", 0.0), 1)})
    return sorted(rows, key=lambda row: row["trial"].rsplit("_", 1)[-1])


def how_ended(metrics: dict, values: dict, base: C.Config) -> str:
    """How a trial that raised no error ended, from its last result: Ray Tune marks a trial
    that ASHA stopped as done too, so a trial finished on its own when its fit loop stopped
    (patience epochs after the best, or mba.epochs)."""
    mba = C.override(base, values, "search trial").mba
    epoch, best_epoch = metrics.get("epoch", 0), metrics.get("best_epoch", 0)
    if metrics.get("diverged"):
        return "diverged"
    if epoch >= mba.epochs or epoch - best_epoch >= mba.patience:
        return "finished"
    return "stopped by ASHA"


def best_row(rows: list[dict]) -> dict:
    """The trial with the highest best validation Recall@20 (the earlier one on a tie)."""
    usable = [r for r in rows if r["ended"] != "failed" and math.isfinite(r["valid_recall@20"])]
    if not usable:
        raise ConfigError("no trial of the search produced a validation result")
    return max(usable, key=lambda r: (r["valid_recall@20"], -r["trial"]))


def rows_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def rows_markdown(rows: list[dict], keys: list[str], best: int) -> str:
    """The trials, best validation Recall@20 first."""
    cols = ["trial", *keys, "valid_recall@20", "valid_ndcg@20", "best_epoch", "validations",
            "ended", "seconds"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in sorted(rows, key=lambda r: -r["valid_recall@20"]):
        cells = [f"{r[c]:.4f}" if c.startswith("valid_") else fmt(r[c]) for c in cols]
        if r["trial"] == best:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_config_yaml(base: C.Config, values: dict[str, Any], header: str) -> str:
    """The winner as a config file: the searched values and every other value that differs
    from the defaults."""
    cfg = C.override(base, values, "search winner")
    default = C.dotted(C.Config())
    diff = {k: v for k, v in C.dotted(cfg).items()
            if (v != default[k] or k in values) and k != "pretrain.from_run"}
    body = yaml.safe_dump(C.nest(diff, "search winner"), sort_keys=False)
    return "".join(f"# {ln}\n" for ln in header.splitlines()) + body


def _identity(data: str, config: str | None, base: C.Config, sets: list[str], space: Space,
              trials: int, pretrained: str | None) -> dict:
    return {"tool": "mba-dist", "kind": "search", "data": data,
            "config": C.to_dict(base), "config_file": config,
            "sets": sets, "space": asdict(space), "trials": trials, "pretrained": pretrained,
            "parts": [trials]}


def check_search_dir(root: Path, ident: dict) -> list[int] | None:
    """The trials of each Ray Tune experiment so far when `root` continues this search (with
    as many trials or more), None when it is new; a search of other settings is refused."""
    path = root / "search.json"
    if path.is_file():
        try:
            had = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            raise ConfigError(f"{path}: not a search of mba-dist (not valid JSON)") from None
        if had.get("kind") != "search":
            raise ConfigError(f"{path}: not a search of mba-dist")
        try:  # config keys added since the search began count with their defaults
            had = {**had, "config": C.to_dict(C.load_config(had.get("config") or {}))}
        except ConfigError as e:
            raise ConfigError(f"{path}: its config does not load here ({e})") from None
        parts = list(had.get("parts") or [had.get("trials")])  # searches before parts had one
        while len(parts) > 1 and not (root / "tune" / f"search-{len(parts)}").exists():
            parts.pop()  # more trials asked for, but the command stopped before they began
        # the resolved config is what must match, not the file or the --set lines that gave it
        fixed = ("config_file", "sets", "trials", "parts")
        diff = sorted(k for k in ident if k not in fixed and had.get(k) != ident[k])
        if "config" in diff:
            was, now = C.dotted(had["config"]), C.dotted(ident["config"])
            keys = C.differing_keys(was, now)
            diff[diff.index("config")] = "config" + ": " * bool(keys) + ", ".join(
                f"{k} {was.get(k)!r} there, {now.get(k)!r} here" for k in keys[:4]) + \
                (" ..." if len(keys) > 4 else "")
        if diff:
            raise ConfigError(f"{root} holds a search with other settings (differs in "
                              f"{'; '.join(diff)}); give another --out")
        done, trials = sum(parts), ident["trials"]
        if trials < done:
            raise ConfigError(f"{root} holds a search of {done} trials: --trials may grow, "
                              f"not shrink (got {trials})")
        return parts
    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"{root} exists and is not a search directory; give another --out")
    return None


def search_run(data: str | Path, out: str | Path, config: str | None, space_file: str | Path,
               sets: list[str] = (), trials: int = 20, pretrained: str | None = None,
               cpus_per_trial: float = 1.0, concurrent: int = 0,
               say: Callable[[str], None] = lambda line: None) -> dict:
    """`mba-dist search` (module docstring); returns {"rows", "best", "metrics", "report"}."""
    from mba_dist.data.dataset import Dataset
    from mba_dist.data.pair_sets import check_dataset
    from mba_dist.jobs import train_run
    from mba_dist.run_dir import RunDir

    sets = list(sets)
    base = C.load_config(config, sets)
    if base.method != "mba":
        raise ConfigError("mba-dist search tunes MBA: the config's method must be mba")
    if base.train.select_on != "valid":
        raise ConfigError("mba-dist search selects on validation: train.select_on must be valid")
    space = load_space(space_file, base)
    if not space.params and trials != len(space.points):
        raise ConfigError(f"{space_file} has points only (no space: to draw from): --trials must "
                          f"be {len(space.points)}, got {trials}")
    if trials < len(space.points):
        raise ConfigError(f"--trials {trials} is fewer than the {len(space.points)} points of "
                          f"{space_file}")
    ds = Dataset(data)
    check_dataset(base, ds)
    root = Path(out).resolve()
    data = str(Path(data).resolve())
    pre = str(Path(pretrained).resolve()) if pretrained else None
    ident = _identity(data, config, base, sets, space, trials, pre)
    had = check_search_dir(root, ident)
    resumed = had is not None
    parts = [trials] if had is None else had + [trials - sum(had)] * (trials > sum(had))
    if resumed and parts != had:
        say(f"adding {parts[-1]} trials to the {sum(had)} of the search")
    ensure_dir(root)
    if not resumed:
        atomic_write_bytes(root / "search.json", json.dumps(ident, indent=1).encode())
    say(f"{'resuming ' if resumed else ''}search in {root}: {trials} trials of "
        f"{', '.join(space.keys())} on {ds.root}")

    # Stage 1, once for every trial.
    if pre is None:
        pre = str(root / "base")
        if not (Path(pre) / "metrics.json").is_file():
            say(f"stage-1 models and baselines: a run of the base config in {pre}")
            train_run(data, pre, config, sets, local=True, say=say)
    RunDir(pre).stages().check_reusable(base, ds)

    from mba_dist.dist.ray import init_ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables from Tune
    # Tune's own Ctrl-C handler ends fit() as if the experiment were complete (every trial
    # marked terminated), so the search would go on to pick a winner from unfinished trials.
    # Without it Ctrl-C is a KeyboardInterrupt here; the experiment state Tune saves as it
    # runs resumes as after a kill.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    started = init_ray()  # before any import of Ray: it sets the loopback environment
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from mba_dist import search_lines

    search_lines.say, search_lines.best_of = say, best_row
    lists = list_keys(base)
    search_lines.ended_as = lambda config, result: how_ended(result, from_tune(config, lists),
                                                              base)
    try:
        threads = max(1, int(cpus_per_trial))
        trainable = tune.with_resources(
            tune.with_parameters(_trial, setup=TrialSetup(C.to_dict(base), data, pre, threads)),
            {"cpu": cpus_per_trial})
        param_space, points = tune_space(space, base)
        for logger in ("ray.tune.search.variant_generator",
                       "ray.tune.analysis.experiment_analysis"):
            logging.getLogger(logger).addFilter(_QUIET_TUNE)
        recorded = json.loads((root / "search.json").read_text())
        if recorded.get("parts") != parts:  # a growth: recorded once it is about to begin
            atomic_write_bytes(root / "search.json", json.dumps(
                {**recorded, "trials": trials, "parts": parts}, indent=1).encode())
        results, per_trial = [], max(1, base.mba.epochs // base.train.eval_every)
        for i, n in enumerate(parts):
            name = "search" if i == 0 else f"search-{i + 1}"
            path = root / "tune" / name
            search_lines.total = trials
            search_lines.earlier_rows = trial_rows(results, space.keys(), base)
            if tune.Tuner.can_restore(str(path)):
                say(f"continuing the Ray Tune experiment in {path}")
                tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True,
                                           param_space=param_space)
            else:
                tuner = tune.Tuner(
                    trainable, param_space=param_space,
                    tune_config=tune.TuneConfig(
                        metric=METRIC, mode="max", num_samples=n,
                        max_concurrent_trials=concurrent or None,
                        search_alg=BasicVariantGenerator(points_to_evaluate=[] if i else points,
                                                         random_state=base.train.seed + i),
                        scheduler=seed_rungs(ASHAScheduler(
                            max_t=per_trial, grace_period=space.grace_period,
                            reduction_factor=space.reduction_factor), results, say)),
                    run_config=tune.RunConfig(
                        name=name, storage_path=str(root / "tune"), verbose=0,
                        callbacks=[search_lines.TrialLines(METRIC, fmt)]))
            results.append(tuner.fit())
    finally:
        if started:
            import ray

            ray.shutdown()
    return finish_search(root, data, base, space, results, pre, trials, say)


def seed_rungs(asha, grids: list, say: Callable[[str], None] = lambda line: None):
    """`asha` with the trials of the search's earlier experiments recorded at every rung they
    reached, so that a grown search stops its new trials against all the trials so far, as one
    experiment would. The rungs are Ray Tune's internal state (`_brackets`, `_rungs`): where
    that layout is not found, the scheduler is left empty and the search says so."""
    brackets = getattr(asha, "_brackets", None)
    if not grids:
        return asha
    if not brackets or not all(hasattr(b, "_rungs") for b in brackets):
        say("ASHA's rungs could not be given the earlier trials (an unknown Ray Tune layout): "
            "the new trials are compared among themselves")
        return asha
    seeded = 0
    for part, grid in enumerate(grids):
        for n, result in enumerate(grid):
            df = result.metrics_dataframe
            if df is None or METRIC not in df or "training_iteration" not in df:
                continue
            seeded += 1
            history = dict(zip(df["training_iteration"], df[METRIC]))
            for bracket in brackets:
                for milestone, recorded in bracket._rungs:
                    if milestone in history:  # mode max: Tune records the metric as it is
                        recorded[f"earlier-{part}-{n}"] = float(history[milestone])
    say(f"ASHA compares the new trials with each other and the {seeded} earlier ones")
    return asha


def finish_search(root: Path, data: str, base: C.Config, space: Space, results, pre: str,
                  trials: int, say: Callable[[str], None]) -> dict:
    """The trial table and plot, best.yaml, and the run of the winner (the test set, once)."""
    from mba_dist import plots
    from mba_dist.jobs import train_run
    from mba_dist.run_dir import RunDir

    keys = space.keys()
    rows = trial_rows(results, keys, base)
    best = best_row(rows)
    values = {k: best[k] for k in keys if best[k] is not None}
    atomic_write_bytes(root / "trials.csv", rows_csv(rows).encode())
    atomic_write_bytes(root / "search.png", plots.search_png(rows, f"search in {root.name}"))
    header = (f"Found by `mba-dist search` in {root} on {data}:\n"
              f"trial {best['trial']} of {len(rows)}, validation Recall@20 "
              f"{best['valid_recall@20']:.4f} (best epoch {best['best_epoch']}).")
    best_yaml = root / "best.yaml"
    atomic_write_bytes(best_yaml, best_config_yaml(base, values, header).encode())
    run = RunDir(root / "best")
    keep_earlier_winner(run, best_yaml, say)
    if run.metrics_path.is_file():
        metrics = run.read_metrics()
    else:
        say(f"the winner, trial {best['trial']}: a run of {best_yaml} in {run.root} "
            "(its test set is read once)")
        joint = C.load_config(best_yaml).mba.joint_pretrain  # trains its own stage 1
        metrics, _ = train_run(data, run.root, str(best_yaml),
                               [] if joint else [f"pretrain.from_run={pre}"], local=True, say=say)
    report = summary(rows, keys, best, metrics, trials)
    atomic_write_bytes(root / "search.md", report.encode())
    return {"rows": rows, "best": best, "metrics": metrics, "report": report}


def keep_earlier_winner(run, best_yaml: Path, say: Callable[[str], None]) -> None:
    """When SEARCH/best holds a run of another config than best.yaml (the winner before more
    trials were added), move it to SEARCH/best-earlier-N: the user's run is kept, not mixed
    with the new winner's."""
    if not run.config_path.is_file():
        return
    had = C.to_dict(C.load_config(run.config_path))
    now = C.to_dict(C.load_config(best_yaml))
    had["pretrain"]["from_run"] = now["pretrain"]["from_run"]  # the shared stage 1 or its own
    if had == now:
        return
    root = run.root.parent
    moved = next(root / f"best-earlier-{n}" for n in range(1, 10**6)
                 if not (root / f"best-earlier-{n}").exists())
    run.root.rename(moved)
    say(f"more trials chose another winner: the earlier winner's run is now in {moved}")


def mf_rows(metrics: dict) -> dict[str, float]:
    """Test Recall@20 of the run's single-model baselines (MF per behavior, merged, and
    LightGCN-BPR in a `model.t: lightgcn` run)."""
    from mba_dist.eval.baselines import is_single_model

    return {n: row["test"]["recall@20"] for n, row in metrics["baselines"].items()
            if is_single_model(n)}


def summary(rows: list[dict], keys: list[str], best: dict, metrics: dict, trials: int) -> str:
    """search.md: the winner against the single-model baselines on test, then every trial."""
    mba = metrics["baselines"]["mba"]["test"]["recall@20"]
    mf = mf_rows(metrics)
    top = max(mf, key=mf.get) if mf else None
    ratio = f", {mba / mf[top]:.3f}x {top} ({mf[top]:.4f})" if top else ""
    rerun = metrics["valid"]["recall@20"]
    wall = sum(r["seconds"] for r in rows)
    ended = {e: sum(r["ended"] == e for r in rows) for e in dict.fromkeys(r["ended"] for r in rows)}
    return (f"# Search: {len(rows)} of {trials} trials\n\n"
            f"Winner (validation): trial {best['trial']}, "
            + ", ".join(f"{k} = {fmt(best[k])}" for k in keys)
            + f": valid R@20 {best['valid_recall@20']:.4f} in the search, {rerun:.4f} in its run "
            f"(best/); **test R@20 {mba:.4f}**{ratio}.\n\n"
            f"Trials: {', '.join(f'{n} {e}' for e, n in ended.items())}; {wall:.0f} s of trial "
            "time in all.\n\n" + rows_markdown(rows, keys, best["trial"]) + "\n")
