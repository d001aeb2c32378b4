"""Job entry point: `python -m launch.bench --workers 1,2,4 [--data DIR --config F] --out DIR`.

The arguments of `mba-dist bench`, with the worker counts run as Ray Train workers of the
cluster the job was submitted to (`--ray`), so a sweep spans nodes. The side-by-side baselines
run in the job's driver process. `--data` must be a path every node can read.
"""
import sys

from launch.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(["bench"] + args + ([] if "--ray" in args else ["--ray"])))
