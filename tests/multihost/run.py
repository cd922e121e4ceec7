"""Build the lab, run the scenario on its client host, tear everything down.

``python -m tests.multihost.run WORK`` (or ``scripts/multihost.sh``): needs root (network
namespaces). The hosts get addresses in 10.231.0.0/24 on a bridge of their own that is
connected to nothing else. Exit status: the scenario's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.multihost.lab import Lab
from tierflow.services.process import load_records

PROJECT = Path(__file__).resolve().parents[2]
HOSTS = {"h1": "10.231.0.1", "h2": "10.231.0.2", "h3": "10.231.0.3", "client": "10.231.0.10"}


def run(work: Path, timeout: float = 1500) -> int:
    """The whole scenario in ``work``; returns its exit status."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    lab = Lab(dict(HOSTS))
    try:
        lab.create()
        lab.save(work / "lab.json")
        with (work / "logs" / "scenario.log").open("ab") as log:
            done = subprocess.run(
                ["ip", "netns", "exec", lab.ns("client"), sys.executable, "-m",
                 "tests.multihost.scenario", str(work)],
                cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False,
            )  # fmt: skip
        return done.returncode
    finally:
        records = work / "processes.json"
        lab.processes = load_records(records) if records.exists() else []
        stragglers = lab.destroy()
        (work / "stragglers.txt").write_text("\n".join(map(str, stragglers)))


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
