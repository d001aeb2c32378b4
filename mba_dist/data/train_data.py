"""`TrainData`: everything the stages and the evaluator read, built once from a dataset.

Whole (every user's pairs) when the batches come from memory; a rank's part (the pairs of its
own users, `data.pairs.user_range`) when they are streamed: the evaluator ranks only a
rank's own users, so the masks, the evaluation pairs and the auxiliary memory's candidates of
the others are never read there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from mba_dist import config as C
from mba_dist.data.dataset import Dataset
from mba_dist.data.pair_sets import check_dataset, role_files
from mba_dist.data.pairs import CSR, Pairs, merge_pairs


@dataclass
class TrainData:
    num_users: int
    num_items: int
    target: Pairs  # target train pairs (plus validation pairs when selecting on test)
    aux: Pairs | None  # every auxiliary behavior's train pairs (their union when k > 1)
    valid: Pairs | None  # None when selecting on test
    test: Pairs
    truth: Pairs | None  # planted preferences (synthetic data only)
    users: tuple[int, int] | None = None  # the users [lo, hi) held (a rank's part); None: all
    # k > 1 auxiliary behaviors: each one's train pairs, by pair set ("aux:<b>")
    aux_each: dict[str, Pairs] = field(default_factory=dict)

    @classmethod
    def load(cls, ds: Dataset, cfg: C.Config, users: tuple[int, int] | None = None) -> "TrainData":
        """Every pair the config reads, or with `users` = (lo, hi) only those of users lo..hi-1
        (read from the Parquet files through row-group filters, never whole)."""
        check_dataset(cfg, ds)
        tgt = cfg.data.target

        read_once: dict[tuple[str, str], Pairs] = {}  # k > 1: "aux" and "aux:<b>" share files

        def read(split: str, behavior: str) -> Pairs:
            if (split, behavior) not in read_once:
                read_once[split, behavior] = ds.pairs(split, behavior, users)
            return read_once[split, behavior]

        roles = {role: merge_pairs([read(s, b) for s, b in splits], ds.num_items)
                 if len(splits) > 1 else read(*splits[0])
                 for role, splits in role_files(cfg, ds).items()}
        valid = read("valid", tgt) if cfg.train.select_on == "valid" else None
        truth = read("truth", tgt) if ds.has("truth", tgt) else None
        return cls(ds.num_users, ds.num_items, roles["target"], roles.get("aux"), valid,
                   read("test", tgt), truth, users,
                   {r: p for r, p in roles.items() if r.startswith("aux:")})

    def csr(self, pairs: Pairs) -> CSR:
        """`pairs` by user, over the users this data holds."""
        lo, hi = self.users or (0, self.num_users)
        return CSR(pairs, hi, lo)

    @cached_property
    def mask(self) -> CSR:
        """Target train items of each user: masked in validation rankings."""
        return self.csr(self.target)

    @cached_property
    def test_mask(self) -> CSR:
        """All known target pairs (train + validation): masked in test rankings (the authors'
        protocol masks every train purchase)."""
        known = [self.target] + ([self.valid] if self.valid is not None else [])
        return self.csr(merge_pairs(known, self.num_items))

    def item_counts(self) -> np.ndarray:
        """Target train pairs per item of the users held (a rank's part: the ranks' counts sum
        to the whole, `eval.baselines.item_popularity`)."""
        return np.bincount(self.target.items, minlength=self.num_items)
