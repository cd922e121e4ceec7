"""``python -m streaming.event_log --topic T``: the event-log daemon (``tierflow event-log``)."""

from __future__ import annotations

import sys

from tierflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["event-log", *sys.argv[1:]]))
