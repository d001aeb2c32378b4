"""The seven MF models of MBA, the groups they move in, and the alternation of MBA steps.

    model    role                                   trained
    pre_f    P(R_f): BPR on target train pairs       stage 1, then frozen
    pre_g    P(R_g): BPR on auxiliary train pairs    stage 1, then frozen
    t        the target recommender t_theta          every MBA step
    h1_f/g   P(r=1 | true preference 1)              DN steps
    h2_f/g   P(r=1 | true preference 0)              DP steps

With k auxiliary behaviors (DESIGN §11) every g model is repeated per behavior b: pre_b, h1_b,
h2_b, named after the behavior (`AuxRoles`); k = 1 keeps the names above.

Models are grouped by *when they move* (frozen {pre_f, pre_g}; {t}; DN {h1_f, h1_g}; DP
{h2_f, h2_g}): a step runs forward only through the groups it reads and builds gradients only
for the groups it trains, so off-phase models and their optimizer state cannot move.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mba_dist.config import aux_model_keys


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


@dataclass(frozen=True)
class AuxRoles:
    """The models of a run's auxiliary behaviors (`DataConfig.aux_behaviors`, in order): each
    behavior's key is g when there is one (the paper's names), else the behavior itself."""

    behaviors: tuple[str, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return aux_model_keys(self.behaviors)

    def pre(self, behavior: str) -> str:
        """The pretrained model (and stage) of one auxiliary behavior."""
        return f"pre_{self.keys[self.behaviors.index(behavior)]}"

    @property
    def pre_aux(self) -> tuple[str, ...]:
        return tuple(f"pre_{k}" for k in self.keys)

    @property
    def frozen(self) -> tuple[str, ...]:
        """The frozen group, f first: the order of the loss's models (`mba.losses.Logits`)."""
        return (Model.PRE_F.value, *self.pre_aux)

    def h(self, level: int) -> tuple[str, ...]:
        """The DN (level 1) or DP (level 2) group, f first."""
        return (f"h{level}_f", *(f"h{level}_{k}" for k in self.keys))


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
