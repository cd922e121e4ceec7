"""Run records: one JSON file per run under ``logs/runs/``, next to the run's log file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunRecord:
    """What one run of a job did. Written when the run ends, whether it succeeded or not."""

    run_id: str
    job: str
    engine: str
    status: str = "running"
    started_at: str = ""
    finished_at: str = ""
    duration_s: float = 0.0
    plan: dict[str, Any] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    rows_in: int = 0
    rows_valid: int = 0
    rows_quarantined: int = 0
    quarantine_by_rule: dict[str, int] = field(default_factory=dict)
    rows_out: int = 0
    output: dict[str, Any] = field(default_factory=dict)
    quarantine_tables: list[str] = field(default_factory=list)
    error: str = ""
    log: str = ""

    def save(self, runs_dir: Path) -> Path:
        """Write the record as ``<runs_dir>/<run_id>.json``."""
        runs_dir.mkdir(parents=True, exist_ok=True)
        path = runs_dir / f"{self.run_id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, default=str))
        tmp.replace(path)
        return path


def list_runs(runs_dir: Path, job: str | None = None) -> list[RunRecord]:
    """Every record in ``runs_dir`` (newest first), optionally of one job."""
    records = []
    for path in runs_dir.glob("*.json"):
        data = json.loads(path.read_text())
        if job is None or data.get("job") == job:
            records.append(RunRecord(**data))
    return sorted(records, key=lambda r: r.started_at, reverse=True)
