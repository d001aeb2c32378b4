"""The pair sets a stage trains on (`mba.stages`), defined once for both input paths.

    target    the target behavior's train pairs (and its validation pairs when selecting on
              the test set: the authors' protocol trains on them)
    aux       the auxiliary behavior's train pairs (of all k of them: their union)
    aux:<b>   auxiliary behavior b's train pairs (k > 1 only)
    aux_only  aux without the target pairs
    merged    target + aux_only

`build(name, ops)` is that definition; `ops` says how to read a behavior's pairs, drop the
pairs of another set and take a union: numpy pairs in memory (`batches.MemorySource`), lazy
Ray datasets and object-store key arrays in the stream (`stream.StreamPlan`). If the two
paths ever trained on different sets, it would be here that they differ.
"""
from __future__ import annotations

from typing import Protocol, TypeVar

from mba_dist import config as C
from mba_dist.data.dataset import Dataset
from mba_dist.errors import ConfigError
from mba_dist.mba.stages import PAIR_SETS

T = TypeVar("T")


class SetOps(Protocol[T]):
    def read(self, role: str) -> T:
        """The train pairs of "target", "aux" or "aux:<b>" (`role_files`)."""

    def minus(self, a: T, role: str) -> T:
        """The pairs of `a` that are not pairs of `role`'s set."""

    def union(self, parts: list[T]) -> T:
        """The union of disjoint sets."""


def build(name: str, ops: SetOps[T]) -> T:
    if name in ("target", "aux") or name.startswith("aux:"):
        return ops.read(name)
    if name == "aux_only":
        return ops.minus(ops.read("aux"), "target")
    if name == "merged":
        return ops.union([ops.read("target"), build("aux_only", ops)])
    raise ValueError(f"unknown pair set {name!r} (the sets: {', '.join(PAIR_SETS)})")


def role_files(cfg: C.Config, ds: Dataset) -> dict[str, list[tuple[str, str]]]:
    """The (split, behavior) files of "target" and (when the run reads them) "aux" and, with
    k > 1 auxiliary behaviors, each one's "aux:<b>"."""
    files = {"target": [("train", cfg.data.target)]}
    if cfg.train.select_on == "test":  # validation pairs are trained on (authors' protocol)
        files["target"].append(("valid", cfg.data.target))
    if C.needs_aux(cfg):
        aux = cfg.data.aux_behaviors
        files["aux"] = [("train", b) for b in aux]
        if len(aux) > 1:
            files.update({f"aux:{b}": [("train", b)] for b in aux})
    return files


def role_rows(cfg: C.Config, ds: Dataset) -> dict[str, int]:
    """Rows of each role's files (from meta.json); a clear error when a file is not there."""
    rows = {}
    for role, splits in role_files(cfg, ds).items():
        for split, behavior in splits:
            ds.pairs_file(split, behavior)
        rows[role] = sum(ds.meta["splits"][s][b]["rows"] for s, b in splits)
    return rows


def check_dataset(cfg: C.Config, ds: Dataset) -> None:
    """Whether `cfg` can train on `ds` (before any work): the target matches, every file the
    run reads is there and the train sets are not empty."""
    if cfg.data.target != ds.target:
        raise ConfigError(f"data.target is {cfg.data.target!r} but {ds.root} was prepared with "
                          f"target {ds.target!r}")
    needed = [("test", cfg.data.target)]
    if cfg.train.select_on == "valid":
        needed.append(("valid", cfg.data.target))
    for split, behavior in needed:
        ds.pairs_file(split, behavior)
        if ds.meta["splits"][split][behavior].get("rows") == 0:
            raise ConfigError(f"{ds.root}: the {split} split of {behavior} is empty"
                              + ("; model selection needs one (prepare with --valid or "
                                 "--valid-fraction > 0)" if split == "valid" else ""))
    for role, rows in role_rows(cfg, ds).items():  # the train files, each checked there
        if rows == 0:
            raise ConfigError(f"{ds.root}: the {role} behavior has no train pairs")
