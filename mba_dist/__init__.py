"""mba-dist: multi-behavior alignment (MBA, SIGIR 2023) as a distributed trainer.

    errors.py   InputError and its kinds (what the CLI prints as one line)
    config.py   the typed config and all its validation (world size included)
    files.py    atomic writes of files and directories
    provenance.py  what a run was made with (git commit, versions, host, times)
    tracking.py    epoch records to TensorBoard (RUN/tensorboard) and MLflow
    mba/        the method: model roles, losses, the one stage plan
    data/       the dataset, the pair sets, the sampler, in-memory and Ray Data batches
    dist/       process groups, the collective device, Ray
    eval/       exact chunked full ranking, scorers, the baseline table, top-N export
    tables/     the embedding tables (plain torch, torchrec-sharded)
    train/      the step functions, the fit loop, checkpoints, the worker function
    run_dir.py  RunDir: the one owner of a run directory
    plots.py    the PNGs of a finished run (training curves, baseline bars, paper Fig. 2)
    jobs.py     run / evaluate / recommend / plot as functions
    search_lines.py  the progress lines of `search` (a Ray Tune callback)
    search.py   `mba-dist search`: Ray Tune over MBA's settings; the search directory's owner
    api.py      the Python API: `fit` and `Run` (also as `mba_dist.fit`, `mba_dist.Run`); the
                CLI in `launch.cli` is built on it and on `jobs`
    bench/      benchmarks (nothing above imports them)

Each line imports only from lines above it, and this package file only `api` (DESIGN §0;
`tests/test_layout.py`).
"""
__version__ = "0.1.0"
__all__ = ["fit", "Run", "__version__"]


def __getattr__(name: str):
    # The API on first use: `import mba_dist` stays cheap (no torch, no Ray) until it is called.
    if name in ("fit", "Run"):
        from mba_dist import api

        return getattr(api, name)
    raise AttributeError(f"module 'mba_dist' has no attribute {name!r}")
