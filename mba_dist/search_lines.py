"""The progress lines of `mba-dist search`: a Ray Tune callback, one line per ended trial.

Its own module because it subclasses `ray.tune.Callback`, so importing it imports Ray: the
search imports it only after `dist.ray.init_ray` has set the loopback environment that Ray
reads at import. Where the lines go (`say`) is a module value, not an attribute of the
callback, because Ray Tune pickles its callbacks with the experiment and restores them.
"""
from __future__ import annotations

from typing import Any, Callable

from ray import tune

say: Callable[[str], None] = lambda line: None


class TrialLines(tune.Callback):
    """One line per ended trial (Ray Tune's own progress tables are switched off)."""

    def __init__(self, total: int, metric: str, fmt: Callable[[Any], str], before: int = 0):
        """`before`: the trials of the search's earlier experiments (`search.py`, more trials)."""
        self.total, self.metric, self.fmt, self.ended = total, metric, fmt, before

    def _line(self, trial, how: str) -> None:
        self.ended += 1
        r = trial.last_result or {}
        values = " ".join(f"{k}={self.fmt(v)}" for k, v in trial.config.items())
        say(f"trial {self.ended}/{self.total} ({how}): {values}: best valid R@20 "
            f"{r.get(self.metric, float('nan')):.4f} at epoch {r.get('best_epoch', '-')}, "
            f"{r.get('training_iteration', 0)} validations")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trial, "diverged" if (trial.last_result or {}).get("diverged") else "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, "failed")
