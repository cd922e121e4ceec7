"""The tier planner: the one place where the engine is chosen, and why.

It adds up the estimated in-memory size of a job's inputs (from file sizes, Parquet
footers and the Delta log; see :mod:`tierflow.jobs.sources`) and compares it with the
thresholds of ``conf/tierflow.yaml``:

- single-node (Polars) while the estimate is at most ``single_max_gb`` *and* at most
  ``single_node_memory_fraction`` of this machine's RAM (joins and aggregations need
  several times their input);
- Dask up to ``dask_max_gb``;
- Spark beyond.

The plan explains itself (``tierflow plan JOB``), and an explicit ``--engine`` wins, with
the override recorded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierflow.config.jobs import EngineName, JobConfig
from tierflow.config.project import GiB, TierThresholds
from tierflow.jobs.sources import ResolvedSource, resolve_source


def machine_memory() -> int:
    """Physical memory of this machine in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gb(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 100 else f"{n / 1024**2:.1f} MiB"


@dataclass(frozen=True)
class TierPlan:
    """The chosen engine, with everything that went into the choice."""

    job: str
    engine: EngineName
    reason: str
    sources: tuple[ResolvedSource, ...]
    total_in_memory_bytes: int
    thresholds: TierThresholds
    memory_bytes: int
    single_limit_bytes: int
    recommended: EngineName
    notes: tuple[str, ...] = ()

    @property
    def overridden(self) -> bool:
        """True when ``--engine`` replaced the planner's own choice."""
        return self.engine != self.recommended

    def explain(self) -> str:
        """A human-readable account of inputs, estimates, thresholds and the decision."""
        lines = [f"job {self.job}", "inputs:"]
        for s in self.sources:
            rows = f"{s.rows:,}" if s.rows is not None else "?"
            files = f"{len(s.files)} file(s)"
            lines.append(
                f"  {s.name:<14} {s.config.format:<8} {s.label}\n"
                f"  {'':<14} {files}, {_gb(s.bytes_on_disk)} on disk, ~{rows} rows, "
                f"~{_gb(s.in_memory_bytes)} in memory ({s.estimate})"
            )
        t = self.thresholds
        lines += [
            f"estimated in-memory input: {_gb(self.total_in_memory_bytes)}",
            "thresholds:",
            f"  single-node up to min({t.single_max_gb:g} GiB, "
            f"{t.single_node_memory_fraction:g} x {_gb(self.memory_bytes)} RAM) = "
            f"{_gb(self.single_limit_bytes)}",
            f"  dask up to {t.dask_max_gb:g} GiB; spark beyond",
            f"planner's choice: {self.recommended} ({self.reason})",
        ]
        if self.overridden:
            lines.append(f"engine: {self.engine} (overridden with --engine)")
        else:
            lines.append(f"engine: {self.engine}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """The plan for run records (JSON-friendly)."""
        return {
            "engine": self.engine,
            "recommended": self.recommended,
            "reason": self.reason,
            "total_in_memory_bytes": self.total_in_memory_bytes,
            "memory_bytes": self.memory_bytes,
            "single_limit_bytes": self.single_limit_bytes,
            "thresholds": self.thresholds.model_dump(),
            "sources": [
                {
                    "name": s.name,
                    "format": s.config.format,
                    "location": s.location,
                    "files": len(s.files),
                    "version": s.version,
                    "bytes_on_disk": s.bytes_on_disk,
                    "rows": s.rows,
                    "in_memory_bytes": s.in_memory_bytes,
                    "estimate": s.estimate,
                }
                for s in self.sources
            ],
            "notes": list(self.notes),
        }


def choose_engine(
    total: int, thresholds: TierThresholds, memory: int
) -> tuple[EngineName, str, int]:
    """Pick the tier for ``total`` estimated in-memory bytes: ``(engine, reason, single_limit)``."""
    single_limit = int(
        min(thresholds.single_max_gb * GiB, thresholds.single_node_memory_fraction * memory)
    )
    dask_limit = int(thresholds.dask_max_gb * GiB)
    if total <= single_limit:
        return (
            "single",
            f"{_gb(total)} fits the single-node limit of {_gb(single_limit)}",
            single_limit,
        )
    if total <= dask_limit:
        return (
            "dask",
            f"{_gb(total)} is above the single-node limit of {_gb(single_limit)} "
            f"and within dask's {_gb(dask_limit)}",
            single_limit,
        )
    return "spark", f"{_gb(total)} is above dask's limit of {_gb(dask_limit)}", single_limit


def plan_job(
    job: JobConfig,
    data_dir: Path,
    thresholds: TierThresholds,
    *,
    engine: EngineName | None = None,
    memory: int | None = None,
    sources: tuple[ResolvedSource, ...] | None = None,
) -> TierPlan:
    """Resolve the job's sources and choose its engine (``engine`` overrides the choice)."""
    resolved = sources or tuple(resolve_source(n, s, data_dir) for n, s in job.sources.items())
    memory = memory or machine_memory()
    total = sum(s.in_memory_bytes for s in resolved)
    recommended, reason, single_limit = choose_engine(total, thresholds, memory)
    chosen = engine or recommended
    notes = []
    if job.sql is not None and chosen == "dask":
        notes.append(
            "the SQL step runs in DuckDB on the client (out of core), fed by Dask's "
            "validated partitions; the Spark tier runs SQL on the cluster"
        )
    return TierPlan(
        job=job.name,
        engine=chosen,
        reason=reason,
        sources=resolved,
        total_in_memory_bytes=total,
        thresholds=thresholds,
        memory_bytes=memory,
        single_limit_bytes=single_limit,
        recommended=recommended,
        notes=tuple(notes),
    )
