"""Data: the dataset on disk, the pair sets a stage trains on, and the batches that feed a step.

    format.py      the on-disk layout (meta.json, Parquet pair files), written by `data_prep`
    pairs.py       Pairs, CSR and the sorted-key set operations on them
    dataset.py     Dataset: a prepared dataset, read lazily
    pair_sets.py   the one definition of target / aux / aux_only / merged, and the dataset
                   checks a run makes before any work
    train_data.py  TrainData: what the stages and the evaluator read, in memory
    sampler.py     vectorised negative sampling (Observed: per-user sorted keys)
    batches.py     MemorySource (in-memory batches, split by rank), prefetch
    stream.py      StreamPlan (driver: Ray datasets, feeds) and StreamSource (worker: batches)
    stream_ops.py  the stream's Ray tasks: key arrays, filter, membership index (no torch)

May import: numpy, pyarrow, Ray Data (stream only), `mba_dist.config`, `mba_dist.errors`,
`mba_dist.mba`. No torch here.
"""
