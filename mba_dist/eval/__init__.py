"""Evaluation: exact full-ranking Recall@K / NDCG@K by chunked matrix products, the scorers it
ranks by, the baseline table, and the top-N export.

    scorers.py    Factors sources (LocalFactors), FactorScorer (MF, MBA's blend), MemoryScorer
    ranking.py    chunk_top_k, RunningTopK, rank_top_k (distributed over ranks), evaluate
    baselines.py  the comparison table: the run's model beside MostPop, MF per behavior,
                  merged MF, auxiliary memory; Markdown and CSV
    export.py     top-N lists in raw ids
    denoise.py    denoising AUC: true against noisy auxiliary pairs (planted truth or later buys)

May import: torch, numpy, pyarrow, `mba_dist.config`, `mba_dist.data`, `mba_dist.mba`,
`mba_dist.dist.collective` (the all-reduce of the metric sums). Not the
tables (they hand the evaluator `Factors`) nor the training code.
"""
