"""Training entry point for ``ray job submit``: ``python jobs/train.py CONFIG [options]``.

The same as ``tierflow train CONFIG``; submit it with
``ray job submit --working-dir . -- python jobs/train.py flight_delays_mlp``.
"""

from __future__ import annotations

import sys

from tierflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
