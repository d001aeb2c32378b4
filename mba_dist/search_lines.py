"""The progress lines of `mba-dist search`: a Ray Tune callback, one line per ended trial.

Its own module because it subclasses `ray.tune.Callback`, so importing it imports Ray: the
search imports it only after `dist.ray.init_ray` has set the loopback environment that Ray
reads at import. Where the lines go (`say`) and the count they show (`ended` of `total`, set
for each of the search's experiments) are module values, not attributes of the callback,
because Ray Tune pickles its callbacks with the experiment and restores them as they were.
"""
from __future__ import annotations

from typing import Any, Callable

from ray import tune

say: Callable[[str], None] = lambda line: None
total, ended = 0, 0


class TrialLines(tune.Callback):
    """One line per ended trial (Ray Tune's own progress tables are switched off)."""

    def __init__(self, metric: str, fmt: Callable[[Any], str]):
        self.metric, self.fmt = metric, fmt

    def _line(self, trial, how: str) -> None:
        global ended
        ended += 1
        r = trial.last_result or {}
        values = " ".join(f"{k}={self.fmt(v)}" for k, v in trial.config.items())
        say(f"trial {ended}/{total} ({how}): {values}: best valid R@20 "
            f"{r.get(self.metric, float('nan')):.4f} at epoch {r.get('best_epoch', '-')}, "
            f"{r.get('training_iteration', 0)} validations")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trial, "diverged" if (trial.last_result or {}).get("diverged") else "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, "failed")
