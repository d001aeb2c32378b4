"""`TrainData`: everything the stages and the evaluator read, built once from a dataset."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from mba_dist import config as C
from mba_dist.data.dataset import Dataset
from mba_dist.data.pair_sets import check_dataset, role_files
from mba_dist.data.pairs import CSR, Pairs, merge_pairs


@dataclass
class TrainData:
    num_users: int
    num_items: int
    target: Pairs  # target train pairs (plus validation pairs when selecting on test)
    aux: Pairs | None
    valid: Pairs | None  # None when selecting on test
    test: Pairs
    truth: Pairs | None  # planted preferences (synthetic data only)
    mask: CSR  # target train items of each user, masked in every ranking

    @classmethod
    def load(cls, ds: Dataset, cfg: C.Config) -> "TrainData":
        check_dataset(cfg, ds)
        tgt = cfg.data.target
        read = {role: merge_pairs([ds.pairs(s, b) for s, b in splits], ds.num_items)
                if len(splits) > 1 else ds.pairs(*splits[0])
                for role, splits in role_files(cfg, ds).items()}
        # Test rankings mask all known train purchases, validation pairs included (authors'
        # protocol masks every train purchase); validation rankings mask the train pairs only.
        valid = ds.pairs("valid", tgt) if cfg.train.select_on == "valid" else None
        truth = ds.pairs("truth", tgt) if ds.has("truth", tgt) else None
        return cls(ds.num_users, ds.num_items, read["target"], read.get("aux"), valid,
                   ds.pairs("test", tgt), truth, CSR(read["target"], ds.num_users))

    @cached_property
    def test_mask(self) -> CSR:
        """All known target pairs (train + validation): masked in test rankings."""
        known = [self.target] + ([self.valid] if self.valid is not None else [])
        return CSR(merge_pairs(known, self.num_items), self.num_users)
