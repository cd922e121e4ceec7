"""The tier planner: the one place where the engine is chosen, and why.

It adds up the estimated in-memory size of a job's inputs (from file sizes, Parquet
footers and the Delta log; see :mod:`tierflow.jobs.sources`), then, for each tier,
predicts the job's time and its peak memory where that tier would run
(:mod:`tierflow.jobs.resources`: this machine, within its cgroup and settings, or the
Dask scheduler and Spark master the project names) from a calibration of that place
(:mod:`tierflow.jobs.calibration`). It picks the fastest tier whose memory holds the
job; when none does, the one with the most memory.

- **single** (Polars, in this process) holds a job when its predicted peak fits
  ``planner.memory_fraction`` of this machine's memory.
- **dask** and **spark** spill to disk: they hold a job whenever their workers can run
  at all (on this machine: when their processes fit its memory; a cluster's workers are
  already running), and a predicted peak above a worker's memory doubles the predicted
  time (spilling). On this machine they share its memory; a cluster brings its workers'.

Fixed thresholds in ``conf/tierflow.yaml`` (``tiers:``) replace the prediction with the
checklist's rule. The plan explains itself (``tierflow plan JOB``), and an explicit
``--engine`` wins, with the override recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tierflow.config.jobs import EngineName, JobConfig
from tierflow.config.project import GiB, TierThresholds
from tierflow.jobs.calibration import ENGINES, Calibration
from tierflow.jobs.resources import Place
from tierflow.jobs.sources import ResolvedSource, resolve_source

if TYPE_CHECKING:
    from collections.abc import Mapping

#: Spilling to disk is predicted to double a tier's time.
SPILL_FACTOR = 2.0


def _gb(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 100 else f"{n / 1024**2:.1f} MiB"


def _secs(s: float) -> str:
    return f"{s:.2f} s" if s < 100 else f"{s:,.0f} s"


@dataclass(frozen=True)
class Resources:
    """Where each tier would run, and how fast and big each tier is there."""

    machine: Place
    places: Mapping[EngineName, Place]
    calibrations: Mapping[EngineName, Calibration]
    memory_fraction: float = 0.5
    #: Tiers whose engine is already running (a session, a connected cluster): no startup.
    started: frozenset[EngineName] = frozenset()


@dataclass(frozen=True)
class TierEstimate:
    """One tier's prediction for one job."""

    engine: EngineName
    place: Place
    seconds: float
    peak: int  # bytes, per worker
    budget: int  # bytes one worker may use
    fits: bool
    spills: bool
    measured: bool  # from a calibration of this place, not the built-in costs

    @property
    def where(self) -> str:
        """The place, with its cores and workers."""
        workers = f", {self.place.workers} workers" if self.place.workers > 1 else ""
        return f"{self.place.label} ({self.place.cores} cores{workers})"

    def describe(self, width: int = 40) -> str:
        """One line of the plan's table (``width``: of the place column)."""
        if self.place.unreachable:
            return f"  {self.engine:<7} {self.place.label}: unreachable ({self.place.unreachable})"
        state = "yes" if self.fits and not self.spills else "spills" if self.fits else "no"
        return (
            f"  {self.engine:<7} {self.where:<{width}} {_secs(self.seconds):>10} "
            f"{_gb(self.peak):>11} {_gb(self.budget):>11}  {state}"
            + ("" if self.measured else "  (built-in costs)")
        )

    def as_dict(self) -> dict[str, Any]:
        """For run records and ``tierflow plan --json``."""
        return {
            "engine": self.engine, "where": self.place.label, "address": self.place.address,
            "cores": self.place.cores, "workers": self.place.workers,
            "memory_bytes": self.place.memory, "unreachable": self.place.unreachable,
            "predicted_seconds": round(self.seconds, 3), "predicted_peak_bytes": self.peak,
            "budget_bytes": self.budget, "fits": self.fits, "spills": self.spills,
            "calibrated": self.measured,
        }  # fmt: skip


def estimate(engine: EngineName, total: int, resources: Resources) -> TierEstimate:
    """Predict ``engine``'s time and peak memory for ``total`` input bytes."""
    place = resources.places[engine]
    cost, measured = resources.calibrations[engine].cost(engine)
    if place.unreachable:
        return TierEstimate(engine, place, float("inf"), 0, 0, False, False, measured)
    seconds = cost.seconds(total, place.cores, started=engine in resources.started)
    peak = cost.peak(total, place.workers)
    if engine == "single":
        budget = int(resources.memory_fraction * place.memory)
        return TierEstimate(engine, place, seconds, peak, budget, peak <= budget, False, measured)
    budget = place.memory_per_worker
    # A cluster's workers are running: its manager has already given them their memory.
    # Here, the tier's own processes must first fit in this machine's; beyond that, the
    # workers spill to disk.
    fits = place.address is not None or cost.memory_base <= budget
    spills = fits and peak > budget
    return TierEstimate(
        engine, place, seconds * (SPILL_FACTOR if spills else 1.0), peak, budget, fits, spills,
        measured,
    )  # fmt: skip


def choose(total: int, resources: Resources) -> tuple[EngineName, str, tuple[TierEstimate, ...]]:
    """The fastest tier that holds ``total`` input bytes, with the reason and every estimate."""
    estimates = tuple(estimate(e, total, resources) for e in ENGINES)
    holding = [e for e in estimates if e.fits]
    if not holding:
        best = max(estimates, key=lambda e: (e.place.memory, -e.seconds))
        return best.engine, (
            f"no tier is predicted to hold {_gb(total)}; {best.engine} has the most memory "
            f"({_gb(best.place.memory)} at {best.place.label})"
        ), estimates  # fmt: skip
    # Ties (within 1%) go to the simpler tier: single, then dask, then spark.
    fastest = min(holding, key=lambda e: (round(e.seconds * 100) / 100, ENGINES.index(e.engine)))
    others = [f"{e.engine} {e.seconds / fastest.seconds:.1f}x" for e in holding if e is not fastest]
    excluded = [e.engine for e in estimates if not e.fits]
    reason = f"fastest predicted ({_secs(fastest.seconds)}) of the tiers that hold {_gb(total)}"
    if others:
        reason += f"; {', '.join(others)} slower"
    if excluded:
        reason += f"; {', '.join(excluded)} cannot hold it"
    return fastest.engine, reason, estimates


def choose_by_thresholds(
    total: int, thresholds: TierThresholds, memory: int
) -> tuple[EngineName, str, int]:
    """The checklist's rule with the user's thresholds: ``(engine, reason, single_limit)``."""
    single_limit = int(min(thresholds.single_gb * GiB, thresholds.single_fraction * memory))
    dask_limit = int(thresholds.dask_gb * GiB)
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


@dataclass(frozen=True)
class TierPlan:
    """The chosen engine, with everything that went into the choice."""

    job: str
    engine: EngineName
    reason: str
    sources: tuple[ResolvedSource, ...]
    total_in_memory_bytes: int
    thresholds: TierThresholds
    resources: Resources
    recommended: EngineName
    rule: Literal["measured", "thresholds"]
    estimates: tuple[TierEstimate, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def overridden(self) -> bool:
        """True when ``--engine`` replaced the planner's own choice."""
        return self.engine != self.recommended

    @property
    def memory_bytes(self) -> int:
        """This machine's memory as the planner sees it."""
        return self.resources.machine.memory

    @property
    def place(self) -> Place:
        """Where the chosen engine runs."""
        return self.resources.places[self.engine]

    @property
    def memory_budget(self) -> int:
        """What the single-node tier may use at its peak."""
        return int(self.resources.memory_fraction * self.resources.machine.memory)

    def explain(self) -> str:
        """A human-readable account of inputs, estimates, predictions and the decision."""
        lines = [f"job {self.job}", "inputs:"]
        for s in self.sources:
            rows = f"{s.rows:,}" if s.rows is not None else "?"
            files = f"{len(s.files)} file(s)"
            lines.append(
                f"  {s.name:<14} {s.config.format:<8} {s.label}\n"
                f"  {'':<14} {files}, {_gb(s.bytes_on_disk)} on disk, ~{rows} rows, "
                f"~{_gb(s.in_memory_bytes)} in memory ({s.estimate})"
            )
        m = self.resources.machine
        lines += [
            f"estimated in-memory input: {_gb(self.total_in_memory_bytes)}",
            f"this machine: {m.cores} cores, {_gb(m.memory)} ({m.source}); a single-node "
            f"job may use {self.resources.memory_fraction:g} of it",
        ]
        if self.rule == "thresholds":
            t = self.thresholds
            limit = int(min(t.single_gb * GiB, t.single_fraction * m.memory))
            lines += [
                "thresholds (conf/tierflow.yaml `tiers:`; they replace the measured planner):",
                f"  single-node up to min({t.single_gb:g} GiB, {t.single_fraction:g} x "
                f"{_gb(m.memory)}) = {_gb(limit)}",
                f"  dask up to {t.dask_gb:g} GiB; spark beyond",
            ]
        else:
            sources = sorted({c.source for c in self.resources.calibrations.values()})
            width = max(len(e.where) for e in self.estimates)
            lines += [
                f"calibration: {'; '.join(sources)}",
                f"  {'tier':<7} {'where':<{width}} {'time':>10} {'peak/worker':>11} "
                f"{'memory/wkr':>11}  holds",
                *(e.describe(width) for e in self.estimates),
            ]
        lines.append(f"planner's choice: {self.recommended} ({self.reason})")
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
            "rule": self.rule,
            "where": self.place.label,
            "address": self.place.address,
            "total_in_memory_bytes": self.total_in_memory_bytes,
            "memory_bytes": self.memory_bytes,
            "cores": self.resources.machine.cores,
            "thresholds": self.thresholds.model_dump(),
            "estimates": [e.as_dict() for e in self.estimates],
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


def plan_inputs(
    name: str,
    sources: tuple[ResolvedSource, ...],
    thresholds: TierThresholds,
    resources: Resources,
    *,
    engine: EngineName | None = None,
    notes: tuple[str, ...] = (),
) -> TierPlan:
    """Choose the tier for resolved inputs (``engine`` overrides the choice)."""
    total = sum(s.in_memory_bytes for s in sources)
    estimates = tuple(estimate(e, total, resources) for e in ENGINES)
    if thresholds.fixed:
        recommended, reason, _ = choose_by_thresholds(total, thresholds, resources.machine.memory)
        rule: Literal["measured", "thresholds"] = "thresholds"
    else:
        recommended, reason, estimates = choose(total, resources)
        rule = "measured"
    return TierPlan(
        job=name, engine=engine or recommended, reason=reason, sources=sources,
        total_in_memory_bytes=total, thresholds=thresholds, resources=resources,
        recommended=recommended, rule=rule, estimates=estimates, notes=notes,
    )  # fmt: skip


def plan_job(
    job: JobConfig,
    data_dir: Path,
    thresholds: TierThresholds,
    resources: Resources,
    *,
    engine: EngineName | None = None,
    sources: tuple[ResolvedSource, ...] | None = None,
) -> TierPlan:
    """Resolve the job's sources and choose its engine (``engine`` overrides the choice)."""
    resolved = sources or tuple(resolve_source(n, s, data_dir) for n, s in job.sources.items())
    notes: tuple[str, ...] = ()
    if job.sql is not None:
        notes = (
            "SQL steps run in DuckDB on the single-node tier (out of core) and on the Dask "
            "tier's client (fed by the workers' validated partitions), in Spark SQL on Spark",
        )
    return plan_inputs(job.name, resolved, thresholds, resources, engine=engine, notes=notes)
