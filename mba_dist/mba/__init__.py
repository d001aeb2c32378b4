"""The method: who the seven models are, the losses of MBA and BPR, and the one stage plan.

    roles.py    Model, the table groups (FROZEN, DN_MODELS, DP_MODELS), Kind, Phase,
                phase_of_step
    losses.py   BPR, the MBA batch loss (KL + likelihood terms), the L2 term
    stages.py   StageInput and `stage_plan(cfg)`: every stage a run trains, in order, with
                the pair sets each reads (both input paths consume exactly this plan)

May import: torch, `mba_dist.config`, `mba_dist.errors`. Nothing here knows about files,
tables or processes.
"""
