"""Job entry point: `python -m launch.train --data DIR --config configs/X.yaml --out RUN_DIR`.

Thin by design: the same arguments and code path as `mba-dist run`.
"""
import sys

from launch.cli import main

if __name__ == "__main__":
    sys.exit(main(["run"] + sys.argv[1:]))
