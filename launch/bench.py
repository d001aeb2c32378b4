"""Job entry point: `python -m launch.bench --workers 1,2 [--data DIR --config F] --out DIR`.

The arguments of `mba-dist bench`. The worker counts run as local gloo ranks (or NCCL GPUs with
--device cuda) on the node that runs the job; a multi-node sweep through Ray Train is not built
yet.
"""
import sys

from mba_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench"] + sys.argv[1:]))
