"""Benchmarks, off the library's hot path: nothing outside this package imports it.

    train.py  one rank of `mba-dist bench` (the training step functions of `train.steps`,
              timed by their record_function ranges), the rows, the tables and the plot
    step.py   the authors'-style step and the timing helpers shared by the benchmarks
    eval.py   `mba-dist bench-eval`: evaluator speed against a bare matmul, peak memory
    suite.py  `mba-dist bench`: the rows over worker counts and the files it writes

May import anything in `mba_dist` except `run_dir` (a bench writes its own --out directory).
"""
