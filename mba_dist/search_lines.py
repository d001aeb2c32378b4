"""The progress lines of `mba-dist search`: a Ray Tune callback, one line per ended trial.

Its own module because it subclasses `ray.tune.Callback`, so importing it imports Ray: the
search imports it only after `dist.ray.init_ray` has set the loopback environment that Ray
reads at import. What the lines need from the search (where they go, `say`; its size,
`total`; the table rows of its earlier experiments, `earlier_rows`; its rules for how a
trial ended and which row is best, `ended_as` and `best_of`) are module values set for each
of its experiments, not attributes of the callback, because Ray Tune pickles its callbacks
with the experiment and restores them as they were.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from ray import tune

from mba_dist.errors import ConfigError

say: Callable[[str], None] = lambda line: None
total = 0
earlier_rows: list[dict] = []  # `search.trial_rows` of the search's earlier experiments
ended_as: Callable[[dict, dict], str] = lambda config, result: "ended"
best_of: Callable[[list[dict]], dict] | None = None  # `search.best_row`

_ENDED = ("TERMINATED", "ERROR")  # Ray Tune's Trial.TERMINATED and Trial.ERROR


def number(trial) -> int:
    """The trial's number in the search's tables: Ray Tune ids end in the trial's index within
    its experiment (`..._00003`), and the experiments' trials are counted in turn."""
    return len(earlier_rows) + int(trial.trial_id.rsplit("_", 1)[-1]) + 1


class TrialLines(tune.Callback):
    """One line per ended trial (Ray Tune's own progress tables are switched off): its number
    and values, how it ended, its best validation, how many trials have ended and the best so
    far. Counted from Tune's list of trials, so a resumed experiment goes on where it stopped."""

    def __init__(self, metric: str, fmt: Callable[[Any], str]):
        self.metric, self.fmt = metric, fmt

    def _line(self, trials: list, trial, how: str) -> None:
        # the ending trial is still RUNNING in Tune's list while its callbacks run
        rows = earlier_rows + [
            {"trial": number(t), "ended": how if t is trial else
             "failed" if t.status == "ERROR" else "ended",
             "valid_recall@20": (t.last_result or {}).get(self.metric, math.nan)}
            for t in trials if t.status in _ENDED or t is trial]
        try:
            best = best_of(rows) if best_of else None
        except ConfigError:  # no trial with a validation result yet
            best = None
        r = trial.last_result or {}
        values = " ".join(f"{k}={self.fmt(v)}" for k, v in trial.config.items())
        say(f"trial {number(trial)} {how} ({len(rows)} of {total} ended): {values}: "
            f"best valid R@20 {r.get(self.metric, math.nan):.4f} at epoch "
            f"{r.get('best_epoch', '-')}, {r.get('training_iteration', 0)} validations"
            + (f"; the best so far: trial {best['trial']}, {best['valid_recall@20']:.4f}"
               if best else ""))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trials, trial, ended_as(trial.config, trial.last_result or {}))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trials, trial, "failed")
