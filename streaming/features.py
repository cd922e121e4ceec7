"""``python -m streaming.features --view NAME ...``: the feature daemon.

The same as ``tierflow stream``; every option of that command is accepted.
"""

from __future__ import annotations

import sys

from tierflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["stream", *sys.argv[1:]]))
