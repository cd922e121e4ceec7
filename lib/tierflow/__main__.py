"""``python -m tierflow`` runs the command line interface."""

from __future__ import annotations

import sys

from tierflow.cli import main

sys.exit(main())
