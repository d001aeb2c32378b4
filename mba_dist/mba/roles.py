"""The seven MF models of MBA, the groups they move in, and the alternation of MBA steps.

    model    role                                   trained
    pre_f    P(R_f): BPR on target train pairs       stage 1, then frozen
    pre_g    P(R_g): BPR on auxiliary train pairs    stage 1, then frozen
    t        the target recommender t_theta          every MBA step
    h1_f/g   P(r=1 | true preference 1)              DN steps
    h2_f/g   P(r=1 | true preference 0)              DP steps

Models are grouped by *when they move* (frozen {pre_f, pre_g}; {t}; DN {h1_f, h1_g}; DP
{h2_f, h2_g}): a step runs forward only through the groups it reads and builds gradients only
for the groups it trains, so off-phase models and their optimizer state cannot move.
"""
from __future__ import annotations

from enum import Enum


class Model(str, Enum):
    PRE_F = "pre_f"
    PRE_G = "pre_g"
    T = "t"
    H1_F = "h1_f"
    H1_G = "h1_g"
    H2_F = "h2_f"
    H2_G = "h2_g"


FROZEN = (Model.PRE_F, Model.PRE_G)
DN_MODELS = (Model.H1_F, Model.H1_G)
DP_MODELS = (Model.H2_F, Model.H2_G)
ENTITIES = ("user", "item")


def model_name(m: Model | str) -> str:
    return str(m.value if isinstance(m, Model) else m)


class Kind(Enum):
    B = "both"  # target pair (a purchase counts as an auxiliary interaction too)
    A = "aux_only"  # auxiliary pair that is not a target pair


class Phase(Enum):
    DN = "DN"  # updates t, h1_f, h1_g
    DP = "DP"  # updates t, h2_f, h2_g


def phase_of_step(global_step: int) -> Phase:
    """The alternation: flips every mini-batch, starting with DP (authors' code).

    A pure function of the global step, so every rank computes the same phase in lockstep.
    """
    return Phase.DP if global_step % 2 == 0 else Phase.DN
