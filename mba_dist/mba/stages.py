"""The one stage plan: what a run trains, in order, and the pair sets each stage reads.

A stage reads the union of some *pair sets* of the train split and draws its negatives outside
another one (the sets are built in `data.pair_sets`, for memory and stream alike):

    pair set   pairs
    target     target train pairs                       (MBA kind B)
    aux        auxiliary train pairs (of every auxiliary behavior)
    aux:<b>    auxiliary behavior b's train pairs       (k > 1 behaviors only)
    aux_only   auxiliary pairs that are not target ones (MBA kind A)
    merged     target + aux_only                        (every observed pair)

    method mba:  pre_f (BPR on target), pre_g (BPR on aux), [mf_merged (BPR on merged)], mba
                 (with mba.joint_pretrain: [mf_merged], mba, which also trains pre_f and pre_g)
                 k > 1 auxiliary behaviors: pre_<b> (BPR on aux:<b>) for each in place of pre_g
                 model.t lightgcn: lightgcn_bpr (LightGCN-BPR on target, a baseline) before mba
    method mf:   mf_<on> (BPR on target, aux or merged)

`stage_plan(cfg)` is read by the fit loop (`train.runner`) and by the Ray Data input
(`data.stream`), so the two input paths train the same stages on the same sets.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

from mba_dist import config as C
from mba_dist.mba.roles import AuxRoles, Kind, Model

PAIR_SETS = ("target", "aux", "aux_only", "merged")
PART_KIND = {"target": Kind.B, "aux_only": Kind.A}  # MBA: the loss of a batch of each part
# `mf_train_on` -> the pair set an MF baseline trains on
MF_TRAIN_SETS = {"target": "target", "aux": "aux", "all": "merged"}


@dataclass(frozen=True)
class StageInput:
    name: str  # the stage and the model it trains
    parts: tuple[str, ...]  # pair sets whose union is trained on
    exclude: str  # pair set that negatives avoid (in `train.negatives: exclude` mode)
    by_kind: bool = False  # MBA: homogeneous batches per part (the loss differs by kind)

    @property
    def key(self) -> int:
        """A stable number for this stage, mixed into its random seeds."""
        return zlib.crc32(self.name.encode()) % 100_003

    @property
    def union(self) -> str:
        """The one pair set that is the union of the parts ("target" + "aux_only" is "merged")."""
        return "merged" if len(self.parts) > 1 else self.parts[0]


def bpr_input(name: str, train_on: str) -> StageInput:
    """BPR on `train_on` (target, aux or merged); negatives avoid the same set."""
    parts = ("target", "aux_only") if train_on == "merged" else (train_on,)
    return StageInput(name, parts, train_on)


MBA_INPUT = StageInput("mba", ("target", "aux_only"), "merged", by_kind=True)
LIGHTGCN_BPR = "lightgcn_bpr"  # the LightGCN-BPR baseline of a model.t: lightgcn run


def graph_models(cfg: C.Config) -> frozenset[str]:
    """The models trained as LightGCN over the target train graph (`tables.lightgcn`)."""
    return frozenset({Model.T.value, LIGHTGCN_BPR} if cfg.model.t == "lightgcn" else ())


def aux_set(roles: AuxRoles, behavior: str) -> str:
    """The pair set of one auxiliary behavior's train pairs."""
    return "aux" if len(roles.behaviors) == 1 else f"aux:{behavior}"


def main_model(cfg: C.Config) -> str:
    """The row (and stage) name of a run's own model."""
    return f"mf_{cfg.mf_train_on}" if cfg.method == "mf" else "mba"


def stage_plan(cfg: C.Config) -> list[StageInput]:
    """Every stage a run of `cfg` trains, in order (a stage reused from `pretrain.from_run` or
    already finished is skipped by the runner, never reordered)."""
    if cfg.method == "mf":
        return [bpr_input(main_model(cfg), MF_TRAIN_SETS[cfg.mf_train_on])]
    aux = AuxRoles(cfg.data.aux_behaviors)
    plan = ([] if cfg.mba.joint_pretrain  # pre_f and pre_g are trained in the MBA stage
            else [bpr_input("pre_f", "target")]
            + [bpr_input(aux.pre(b), aux_set(aux, b)) for b in aux.behaviors])
    if cfg.train.merged_baseline:
        plan.append(bpr_input("mf_merged", "merged"))
    if cfg.model.t == "lightgcn":
        plan.append(bpr_input(LIGHTGCN_BPR, "target"))
    return plan + [MBA_INPUT]
