"""Streaming input: Ray Data reads the train Parquet files and feeds the Ray Train workers.

Per stage (see `batches.StageInput`) the driver builds one lazy Ray dataset per part:

    read_parquet(train/<behavior>.parquet)            never whole in one process
      -> drop target pairs (part aux_only only)      map_batches, target keys
      -> [union of parts, BPR stages]
      -> random_shuffle()                             a fresh order every epoch
      -> add one negative per row                     map_batches, vectorised sampler

and Ray Train splits each across the workers (`get_dataset_shard`, `streaming_split` with
`equal=True`: every worker gets the same number of rows per epoch). A worker reads batches of
`train.batch_size / W` rows with the tail dropped, so every worker takes the same number of
steps: the global batch is W local batches, as in `MemorySource`.

The sorted keys (user * num_items + item) that the filter and the sampler need are built by Ray
tasks from the Parquet files and put in the object store once; map tasks fetch them once per
worker process, never per batch (`stream_ops`, which Ray workers import without torch).

Unlike `MemorySource`, the stream is not bit-reproducible: the shuffle and the negatives draw
fresh entropy each epoch (Ray Data's block layout decides which task sees which rows).
"""
from __future__ import annotations

import itertools
from typing import Iterator

import numpy as np

from mba_dist import config as C
from mba_dist.batches import MBA_INPUT, MF_TRAIN_SETS, PART_KIND, Batch, StageInput, bpr_input
from mba_dist.dataset import Dataset
from mba_dist.stream_ops import add_negatives, drop_known, keys_of, union_keys


def stage_plan(cfg: C.Config) -> list[StageInput]:
    """Every stage `run_training` may run for this config (a reused stage is never read)."""
    if cfg.method == "mf":
        from mba_dist.baselines import main_model
        return [bpr_input(main_model(cfg), MF_TRAIN_SETS[cfg.mf_train_on])]
    plan = [bpr_input("pre_f", "target"), bpr_input("pre_g", "aux")]
    if cfg.train.merged_baseline:
        plan.append(bpr_input("mf_merged", "merged"))
    return plan + [MBA_INPUT]


def shard_name(stage: StageInput, part: str) -> str:
    """The Ray Train dataset name of one part of a stage (one per stage unless by kind)."""
    return f"{stage.name}.{part}" if stage.by_kind else stage.name


# ---- driver side ------------------------------------------------------------------------------
def _train_files(cfg: C.Config, ds: Dataset) -> dict[str, list[tuple[str, str]]]:
    """(split, behavior) files of each part the run trains on."""
    files = {"target": [("train", cfg.data.target)]}
    if cfg.train.select_on == "test":  # validation pairs are trained on (authors' protocol)
        files["target"].append(("valid", cfg.data.target))
    if C.needs_aux(cfg):
        files["aux"] = [("train", cfg.data.aux)]
    return files


def _rows(ds: Dataset, splits: list[tuple[str, str]]) -> int:
    return sum(ds.meta["splits"][s][b]["rows"] for s, b in splits)


def train_rows(cfg: C.Config, data_dir) -> int:
    """Train pairs the run reads (from meta.json)."""
    ds = Dataset(data_dir)
    return sum(_rows(ds, splits) for splits in _train_files(cfg, ds).values())


class StreamPlan:
    """The driver's lazy Ray datasets for every stage of a config, keyed by shard name."""

    def __init__(self, cfg: C.Config, data_dir: str):
        import ray

        self.cfg, self.ds = cfg, Dataset(data_dir)
        ds, n = self.ds, self.ds.num_items
        self.files, self.rows = {}, {}
        for part, splits in _train_files(cfg, ds).items():
            for split, behavior in splits:
                ds.pairs_file(split, behavior)  # a clear error when listed but missing
            self.files[part] = [str(ds.path(s, b)) for s, b in splits]
            self.rows[part] = _rows(ds, splits)
            if self.rows[part] == 0:
                raise ValueError(f"{ds.root}: the {part} behavior has no train pairs")
        remote_keys = ray.remote(keys_of)
        self.keys = {part: remote_keys.remote(paths, n) for part, paths in self.files.items()}
        if "aux" in self.keys:
            self.keys["merged"] = ray.remote(union_keys).remote(self.keys["target"],
                                                                 self.keys["aux"])

    def _part(self, part: str):
        n = self.ds.num_items
        if part == "aux_only":
            return self._read("aux").map_batches(
                drop_known, fn_kwargs={"keys_ref": self.keys["target"], "num_items": n},
                batch_format="numpy")
        return self._read(part)

    def _read(self, part: str):
        import ray
        return ray.data.read_parquet(self.files[part]).select_columns(["user", "item"])

    def _sampled(self, parts: list, exclude: str):
        ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
        keys = self.keys[exclude] if self.cfg.train.negatives == "exclude" else None
        return ds.random_shuffle().map_batches(
            add_negatives, fn_kwargs={"keys_ref": keys, "num_items": self.ds.num_items},
            batch_format="numpy")

    def datasets(self) -> dict:
        out = {}
        for stage in stage_plan(self.cfg):
            parts = list(stage.parts)
            if stage.by_kind:
                for p in parts:
                    out[shard_name(stage, p)] = self._sampled([self._part(p)], stage.exclude)
            else:
                out[shard_name(stage, "")] = self._sampled([self._part(p) for p in parts],
                                                           stage.exclude)
        return out

    def part_rows(self) -> dict[str, int]:
        """Rows per part from meta.json (aux_only: an upper bound); weights of interleaving."""
        r = dict(self.rows)
        if "aux" in r:
            r["aux_only"] = r["aux"]
        return r


# ---- worker side ------------------------------------------------------------------------------
class StreamSource:
    """Batches from this worker's Ray Data shards (one per shard name)."""

    def __init__(self, shards: dict, batch_size: int, world: int, seed: int, batch_order: str,
                 part_rows: dict[str, int]):
        self.shards, self.local = shards, batch_size // world
        self.seed, self.batch_order, self.part_rows = seed, batch_order, part_rows

    def check(self, stage: StageInput) -> None:
        for p in (stage.parts if stage.by_kind else ("",)):
            if shard_name(stage, p) not in self.shards:
                raise ValueError(f"stage {stage.name}: no dataset shard {shard_name(stage, p)!r}")

    def _iter(self, name: str, kind) -> Iterator[Batch]:
        for b in self.shards[name].iter_batches(batch_size=self.local, drop_last=True,
                                                batch_format="numpy", prefetch_batches=2):
            yield Batch(kind, b["user"], b["item"], b["neg"])

    def epoch(self, stage: StageInput, epoch: int) -> Iterator[Batch]:
        if not stage.by_kind:
            yield from self._iter(shard_name(stage, ""), None)
            return
        its = {p: self._iter(shard_name(stage, p), PART_KIND[p]) for p in stage.parts}
        if self.batch_order == "sequential":
            yield from itertools.chain(*its.values())
            return
        # Interleaved: the same draws on every rank (same seed); a part runs out on every rank
        # at the same step (equal shards, same local batch size), so ranks stay in lockstep.
        rng = np.random.default_rng([self.seed, stage.key, epoch])
        left = {p: max(self.part_rows.get(p, 1), 1) for p in its}
        while its:
            parts = list(its)
            w = np.array([left[p] for p in parts], dtype=float)
            p = parts[rng.choice(len(parts), p=w / w.sum())]
            try:
                yield next(its[p])
                left[p] = max(left[p] - self.local, 1)
            except StopIteration:
                del its[p]
