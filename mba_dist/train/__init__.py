"""Training: the steps, the fit loop, the checkpoint schema and the worker function.

    steps.py       bpr_step, mba_step (functions over table groups), the L2 term and its
                   world-size scaling, backward_and_step
    fit.py         Worker (what the stages of one worker share), fit_stage (epochs,
                   validation, early stopping, resumable states), fit_bpr, fit_mba
    checkpoint.py  the one versioned checkpoint schema: stage files and resumable states
    runner.py      run_training: the worker function (the stage plan, then the test metrics)
    ray_job.py     run_with_ray: the worker function on Ray Train workers, Ray Data input

May import: everything below it (`config`, `errors`, `mba`, `data`, `tables`, `eval`, `dist`).
It writes nothing: rank 0 hands its outputs to a `RunOutputs` (`run_dir.RunDir`).
"""
