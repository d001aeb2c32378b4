"""Entry points: the `mba-dist` command line (`cli.py`) and the `ray job submit` jobs
(`train.py`, `bench.py`, which take the same arguments). May import `mba_dist` and `data_prep`;
nothing imports this package.
"""
