"""Job entry point: `python -m launch.search --data DIR --config configs/X.yaml --out SEARCH_DIR`.

Thin by design: the same arguments and code path as `mba-dist search`. On a cluster
(`ray job submit`) the trials are Ray Tune actors spread over its nodes; SEARCH_DIR and the
dataset must be on storage every node reads.
"""
import sys

from launch.cli import main

if __name__ == "__main__":
    sys.exit(main(["search"] + sys.argv[1:]))
