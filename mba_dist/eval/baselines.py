"""The comparison table: the run's model beside the baselines, all ranked by one evaluator.

Rows (those the run has checkpoints for):
    mostpop              items by target train popularity
    mf_<target>          BPR-MF on the target behavior (pre_f)
    mf_<aux>             BPR-MF on the auxiliary behavior (pre_g), scored on the target (one
                         row per auxiliary behavior b, pre_<b>, when there are several)
    mf_merged            BPR-MF on target and auxiliary pairs merged
    lightgcn_bpr         LightGCN-BPR on the target behavior (a `model.t: lightgcn` run)
    aux_memory_<aux>     the user's auxiliary-but-not-target items by popularity, then popular items
                         (several behaviors: their union, aux_memory_<b1>+<b2>...)
    mba                  t and pre_f blended (paper Eq. 3)
    mba_t                MBA's t alone, when the score blends it (beta < 1): what the alternating
                         steps trained, apart from the pretrained models the score mixes in
    mf_<on>              the model of an `method: mf` run
    <model>+aux_first    (`eval.aux_first`) the same candidates as the auxiliary memory, ordered by
                         the model instead of popularity
Splits: `valid` (train items masked), `test` (train and validation items masked), and `truth`
(planted preferences, synthetic data only).
"""
from __future__ import annotations

import csv
import io
from typing import Any, Callable

import torch

from mba_dist import config as C
from mba_dist.data.pairs import CSR
from mba_dist.dist.collective import all_reduce_sum
from mba_dist.eval.ranking import evaluate
from mba_dist.eval.scorers import (AuxFirst, MemoryScorer, Scorer, mba_scorer, mf_scorer,
                                   popularity)
from mba_dist.mba.roles import AuxRoles, Model
from mba_dist.mba.stages import LIGHTGCN_BPR, main_model

MBA_T = "mba_t"  # the row of t alone
StageWeights = dict[str, dict[str, tuple]]  # stage name -> model name -> (user, item) factors
COLUMNS = ["recall@10", "recall@20", "ndcg@10", "ndcg@20"]


def model_scorer(cfg: C.Config, stages: StageWeights) -> Scorer:
    """The scorer of the run's own model: the MF model of an mf run, or MBA's blend."""
    if cfg.method == "mf":
        name = main_model(cfg)
        return mf_scorer(stages[name][name])
    return mba_blend(cfg, stages["mba"][Model.T.value], stages["pre_f"][Model.PRE_F.value],
                     lambda m: stages[m][m])


def blended_models(cfg: C.Config) -> list[tuple[str, float]]:
    """(pre_<b>, weight) of each auxiliary behavior's pretrained model in MBA's score."""
    roles = AuxRoles(cfg.data.aux_behaviors)
    ws = cfg.mba.blend_weights(len(roles.behaviors))
    return [(m, w) for m, w in zip(roles.pre_aux, ws) if w > 0]


def mba_blend(cfg: C.Config, t, pre_f, pre: Callable[[str], Any]) -> Scorer:
    """MBA's score of `cfg` (`mba.beta`, the blend), `pre` giving a pretrained model's factors."""
    return mba_scorer(t, pre_f, cfg.mba.beta, [(w, pre(m)) for m, w in blended_models(cfg)])


def scorers(cfg: C.Config, data, stages: StageWeights) -> dict[str, Scorer]:
    """Every row the stages allow, in the table's order; `data` is a `data.train_data.TrainData`."""
    pop = item_popularity(data)
    aux = aux_cells(data)
    out: dict[str, Scorer] = {"mostpop": MemoryScorer(pop)}
    if cfg.method == "mf":
        out[main_model(cfg)] = model_scorer(cfg, stages)
        return with_aux_first(cfg, out, aux)
    pre_f = stages["pre_f"][Model.PRE_F.value]
    out[f"mf_{cfg.data.target}"] = mf_scorer(pre_f)
    roles = AuxRoles(cfg.data.aux_behaviors)
    for b in roles.behaviors:
        if roles.pre(b) in stages:
            out[f"mf_{b}"] = mf_scorer(stages[roles.pre(b)][roles.pre(b)])
    for name in ("mf_merged", LIGHTGCN_BPR):  # its stage tables hold the propagated rows
        if name in stages:
            out[name] = mf_scorer(stages[name][name])
    if aux is not None:
        out[f"aux_memory_{cfg.data.aux_label}"] = MemoryScorer(pop, aux)
    if "mba" in stages:
        out["mba"] = model_scorer(cfg, stages)
        if cfg.mba.beta < 1.0:
            out[MBA_T] = mf_scorer(stages["mba"][Model.T.value])
    return with_aux_first(cfg, out, aux)


def item_popularity(data):
    """Popularity of the items over every user's target train pairs: the ranks' counts summed
    when `data` holds a rank's part (collective then)."""
    counts = data.item_counts()
    if data.users is not None:
        counts = all_reduce_sum(torch.from_numpy(counts)).numpy()
    return popularity(counts)


def aux_cells(data) -> CSR | None:
    """The auxiliary train pairs by user (the auxiliary memory's candidates), if the run has them."""
    return data.csr(data.aux) if data.aux is not None else None


def is_single_model(row: str) -> bool:
    """Whether a table row is one trained model on its own (MF per behavior or merged, the
    LightGCN-BPR baseline): what MBA is compared against."""
    return row.startswith("mf_") or row == LIGHTGCN_BPR


def with_aux_first(cfg: C.Config, rows: dict[str, Scorer], aux: CSR | None) -> dict[str, Scorer]:
    """`rows` and, with `eval.aux_first`, each MF and MBA row again as "+aux_first": the
    auxiliary memory's candidates ordered by the model instead of popularity."""
    if not cfg.eval.aux_first or aux is None:
        return rows
    return {**rows, **{f"{n}+aux_first": AuxFirst(sc, aux) for n, sc in rows.items()
                       if is_single_model(n) or n in ("mba", MBA_T)}}


def table(cfg: C.Config, data, rows: dict[str, Scorer], splits=("test", "truth"),
          group=None) -> dict[str, dict[str, dict]]:
    """{row: {split: metrics}} for the splits the data has. `valid` ranks against the train
    mask; `test` and `truth` against every known target pair."""
    pairs = {"valid": (data.valid, data.mask), "test": (data.test, data.test_mask),
             "truth": (data.truth, data.test_mask)}
    todo = [s for s in splits if pairs[s][0] is not None]
    return {name: {s: evaluate(sc, pairs[s][0], pairs[s][1], data.num_users, data.num_items,
                               group=group, **C.evaluate_args(cfg)) for s in todo}
            for name, sc in rows.items()}


def markdown(tab: dict, highlight: str | None = None) -> str:
    splits = list(next(iter(tab.values())))
    head = "| model | " + " | ".join(f"{s} {c}" for s in splits for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (1 + len(splits) * len(COLUMNS))]
    for name, row in tab.items():
        mark = " **(this run)**" if name == highlight else ""
        lines.append(f"| {name}{mark} | " + " | ".join(f"{row[s][c]:.4f}" for s in splits
                                                      for c in COLUMNS) + " |")
    return "\n".join(lines)


def csv_text(tab: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "split", *COLUMNS, "users"])
    for name, row in tab.items():
        for split, m in row.items():
            w.writerow([name, split, *(f"{m[c]:.6f}" for c in COLUMNS), m["users"]])
    return buf.getvalue()
