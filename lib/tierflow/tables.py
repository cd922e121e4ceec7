"""Delta table maintenance: history, compaction, and vacuum with a retention guard.

These work on any Delta table, whichever engine wrote it, local or at an ``s3://`` path,
through delta-rs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tierflow.errors import UsageError

#: Vacuum never deletes files younger than this unless told to: older versions stay
#: readable for time travel, and a long-running reader never loses its files.
MIN_RETENTION_HOURS = 168


class RetentionError(UsageError):
    """A vacuum asked to delete files younger than the retention guard allows."""


def history(path: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The table's commits, newest first: version, timestamp, operation, parameters, metrics."""
    from tierflow.storage import delta_table

    table = delta_table(path)
    latest = table.version()
    entries = table.history(limit)
    out = []
    for i, entry in enumerate(entries):
        out.append(
            {
                "version": entry.get("version", latest - i),
                "timestamp": entry.get("timestamp"),
                "operation": entry.get("operation"),
                "parameters": entry.get("operationParameters", {}),
                "metrics": entry.get("operationMetrics", {}),
            }
        )
    return out


def optimize(path: str, *, target_size_mb: int | None = None) -> dict[str, Any]:
    """Compact small files into larger ones (a new version; old files stay until vacuum)."""
    from tierflow.storage import delta_table

    table = delta_table(path)
    target = target_size_mb * 1024 * 1024 if target_size_mb else None
    metrics = table.optimize.compact(target_size=target)
    return {"version": delta_table(path).version(), **metrics}


@dataclass(frozen=True)
class VacuumResult:
    """Files a vacuum removed (or would remove, on a dry run)."""

    files: list[str]
    dry_run: bool
    retention_hours: int


def vacuum(
    path: str,
    *,
    retention_hours: int = MIN_RETENTION_HOURS,
    dry_run: bool = True,
    allow_short_retention: bool = False,
) -> VacuumResult:
    """Delete data files no version within ``retention_hours`` needs.

    Dry run by default. Below :data:`MIN_RETENTION_HOURS` it refuses unless
    ``allow_short_retention``: time travel to older versions, and readers still on them,
    would break.
    """
    from tierflow.storage import delta_table

    if retention_hours < MIN_RETENTION_HOURS and not allow_short_retention:
        raise RetentionError(
            f"retention of {retention_hours}h is below the {MIN_RETENTION_HOURS}h guard: versions "
            "older than that could no longer be read (time travel, long-running readers); "
            "pass allow_short_retention (--allow-short-retention) if that is intended"
        )
    files = delta_table(path).vacuum(
        retention_hours=retention_hours,
        dry_run=dry_run,
        enforce_retention_duration=not allow_short_retention,
    )
    return VacuumResult(files=sorted(files), dry_run=dry_run, retention_hours=retention_hours)


def delta_version(path: str) -> int | None:
    """The newest version of the Delta table at ``path``; None when there is no table."""
    from tierflow.storage import delta_table, is_delta_table

    if not is_delta_table(path):
        return None
    return int(delta_table(path).version())
