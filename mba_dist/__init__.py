"""mba-dist: multi-behavior alignment (MBA, SIGIR 2023) as a distributed trainer.

    errors.py   InputError and its kinds (what the CLI prints as one line)
    config.py   the typed config and all its validation (world size included)
    files.py    atomic writes of files and directories
    mba/        the method: model roles, losses, the one stage plan
    data/       the dataset, the pair sets, the sampler, in-memory and Ray Data batches
    dist/       process groups, the collective device, Ray
    eval/       exact chunked full ranking, scorers, the baseline table, top-N export
    tables/     the embedding tables (plain torch, torchrec-sharded)
    train/      the step functions, the fit loop, checkpoints, the worker function
    run_dir.py  RunDir: the one owner of a run directory
    jobs.py     run / evaluate / recommend as functions (the CLI in `launch.cli` calls them)
    bench/      benchmarks (nothing above imports them)

Each line imports only from lines above it (DESIGN §0; `tests/test_layout.py`).
"""
__version__ = "0.1.0"
