"""Embedding tables: the user and item factors of the seven models, grouped by when they move.

    base.py             TableGroup (the interface a step and the evaluator use), Rows, logits
    torch_tables.py     plain `nn.Embedding` tables (one process; dense or sparse optimizers)
    row_optim.py        sparse-row Adagrad / lazy Adam for the torch tables
    torchrec_tables.py  EmbeddingBagCollection per group, sharded by DMP, fused optimizers
    stage_tables.py     StageTables (a finished stage's best epoch, each rank its part) and
                        ShardedFactors (the evaluator's view of shards, a chunk at a time)
    plan.py             the torchrec sharding plan, and `describe(plan)` to print it
    lightgcn.py         LightGCN: one model's tables propagated over the target train graph
                        (`model.t: lightgcn`); MF-shaped factors and stage tables out
    build.py            build_group: the backend `model.backend` names, tables initialised

May import: torch, torchrec / FBGEMM (torchrec_tables, plan only), `mba_dist.config`,
`mba_dist.errors`, `mba_dist.mba`, `mba_dist.dist.collective`, `mba_dist.eval.scorers`.
"""
