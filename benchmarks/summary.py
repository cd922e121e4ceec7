"""The summary of one results folder: every table, the targets met or missed, and plots.

``python -m benchmarks.summary [FOLDER]`` (the newest ``benchmarks/results/<date>`` by
default) reads each ``<name>.json`` the benchmarks wrote and writes ``summary.md`` (the
tables, then each target with the measured value and whether it is met) and one SVG bar
chart of ratios per benchmark (``<name>.svg``).
"""

from __future__ import annotations

import html
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT

ORDER = (
    "etl",
    "scale",
    "delta",
    "streaming",
    "features",
    "features-scale",
    "features-scale-training",
    "features-scale-materialize-online",
    "training",
)


@dataclass(frozen=True)
class Target:
    """A target from the benchmarks' brief, and how to read it off the results."""

    what: str
    goal: str
    measure: Callable[[dict[str, list[dict[str, Any]]]], tuple[float | None, bool | None]]


def _rows(results: dict[str, list[dict[str, Any]]], name: str) -> list[dict[str, Any]]:
    return results.get(name, [])


def _scale_of(row: dict[str, Any]) -> float:
    """The scale factor of a TPC-H row (``benchmark: "TPC-H SF10 q3"``)."""
    words = str(row.get("benchmark", "")).split()
    return float(words[1].removeprefix("SF")) if len(words) > 1 else 0.0


def _etl_ratio(
    tier: str, limit: float, name: str = "etl", max_scale: float = float("inf")
) -> Callable[..., tuple[float | None, bool | None]]:
    def measure(results: dict[str, list[dict[str, Any]]]) -> tuple[float | None, bool | None]:
        ratios = [r["ratio"] for r in _rows(results, name)
                  if r.get("tier") == tier and r.get("ratio") is not None
                  and _scale_of(r) <= max_scale]  # fmt: skip
        if not ratios:
            return None, None
        worst = max(ratios)
        return worst, worst <= limit

    return measure


def _planner(
    name: str = "etl", limit: float = 1.2
) -> Callable[..., tuple[float | None, bool | None]]:
    def measure(results: dict[str, list[dict[str, Any]]]) -> tuple[float | None, bool | None]:
        ratios = [
            r["ratio"] for r in _rows(results, name) if str(r.get("tier", "")).startswith("planner")
        ]
        return (max(ratios), max(ratios) <= limit) if ratios else (None, None)

    return measure


def _single_peak(results: dict[str, list[dict[str, Any]]]) -> tuple[float | None, bool | None]:
    """The single-node tier's largest peak memory at the largest scale, over this machine's RAM."""
    rows = [r for r in _rows(results, "scale") if r.get("tier") == "single"]
    if not rows:
        return None, None
    top = max(_scale_of(r) for r in rows)
    peak = max(r["tierflow_peak_gib"] for r in rows if _scale_of(r) == top)
    share = peak / _machine_gib()
    return share, share <= 0.5


def _machine_gib() -> float:
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def _row(name: str, test: Callable[[dict[str, Any]], bool], key: str = "time_ratio",
         check: Callable[[float], bool] = lambda _v: True) -> Callable[..., tuple[float | None, bool | None]]:  # fmt: skip
    """A target read off the first matching row: a column, or ``time_ratio`` (tierflow's
    time over the peer's), or ``speedup`` (the peer's time over tierflow's)."""

    def measure(results: dict[str, list[dict[str, Any]]]) -> tuple[float | None, bool | None]:
        for r in _rows(results, name):
            if not test(r):
                continue
            value = (time_ratio(r) if key == "time_ratio" else speedup(r) if key == "speedup"
                     else r.get(key))  # fmt: skip
            if value is not None:
                return float(value), check(float(value))
        return None, None

    return measure


def _stream(
    row: dict[str, Any], metric: str, benchmark: str, runner: str, peer: str | None = None
) -> bool:
    """A streaming row of ``metric`` for ``runner`` (against ``peer``)."""
    return (row.get("metric") == metric and benchmark in str(row.get("benchmark"))
            and row.get("tierflow_runner", "tierflow (Redis)") == runner
            and (peer is None or row.get("peer_name") == peer))  # fmt: skip


def _times(row: dict[str, Any]) -> tuple[float, float] | None:
    """(tierflow, peer) for a row, as quantities where lower is better (rates turned round).

    Read from the values, not the row's own ``ratio`` (benchmarks differ in which way round
    they print it). For a rate the pair is (peer's rate, tierflow's rate): their quotient
    is the same time ratio without inverting a float.
    """
    if "tierflow_s" in row:
        ours, theirs = row.get("tierflow_s"), row.get("native_s")
    else:
        ours, theirs = row.get("tierflow"), row.get("peer")
        if str(row.get("metric", "")).endswith("/s"):  # a rate: rows/s, events/s
            ours, theirs = theirs, ours
    return (float(ours), float(theirs)) if ours and theirs else None


def time_ratio(row: dict[str, Any]) -> float | None:
    """tierflow's time over the peer's, whatever the row's unit."""
    pair = _times(row)
    return pair[0] / pair[1] if pair else None


def speedup(row: dict[str, Any]) -> float | None:
    """The peer's time over tierflow's (a throughput ratio)."""
    pair = _times(row)
    return pair[1] / pair[0] if pair else None


def _scale_rows(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of the features-at-scale runs (all stages in one file, or a file per stage)."""
    return [r for name, rows in results.items() if name.startswith("features-scale") for r in rows]


def _features_scale(
    test: Callable[[dict[str, Any]], bool],
    value: Callable[[dict[str, Any]], float | None],
    check: Callable[[float], bool],
    worst: Callable[[list[float]], float] = max,
) -> Callable[..., tuple[float | None, bool | None]]:
    """A features-at-scale target: the worst value over the matching rows."""

    def measure(results: dict[str, list[dict[str, Any]]]) -> tuple[float | None, bool | None]:
        values = [v for r in _scale_rows(results) if test(r) and (v := value(r)) is not None]
        if not values:
            return None, None
        found = worst(values)
        return found, check(found)

    return measure


def _peak_row(r: dict[str, Any]) -> bool:
    return str(r.get("benchmark", "")).startswith("materialize") and r.get("metric") == "peak GiB"


TARGETS = (
    Target("ETL, single-node tier: tierflow / Polars by hand (worst case)", "<= 1.05",
           _etl_ratio("single", 1.05)),
    Target("ETL, Dask tier: tierflow / Dask by hand (worst case)", "<= 1.1", _etl_ratio("dask", 1.1)),
    Target("ETL, Spark tier: tierflow / PySpark by hand (worst case)", "<= 1.1",
           _etl_ratio("spark", 1.1)),
    Target("ETL: planner's pick / fastest tier (worst case)", "<= 1.2", _planner()),
    Target("TPC-H SF 1-10, single-node tier / Polars by hand (worst)", "<= 1.05",
           _etl_ratio("single", 1.05, "scale", 10)),
    Target("TPC-H SF 1-10, Dask tier / Dask by hand (worst)", "<= 1.1",
           _etl_ratio("dask", 1.1, "scale", 10)),
    Target("TPC-H SF 1-10, Spark tier / PySpark by hand (worst)", "<= 1.1",
           _etl_ratio("spark", 1.1, "scale", 10)),
    Target("TPC-H SF 1-30: planner's pick / fastest tier (worst)", "<= 1.2", _planner("scale")),
    Target("TPC-H at the largest scale: single-node tier's peak memory / RAM", "<= 0.5",
           _single_peak),
    Target("Delta write throughput: tierflow / pyarrow.parquet", ">= 0.9",
           _row("delta", lambda r: "pyarrow" in r.get("peer_name", ""), "speedup",
                lambda v: v >= 0.9)),
    Target("Streaming throughput: tierflow (Redis) / naive loop", ">= 2",
           _row("streaming", lambda r: _stream(r, "events/s", "pre-filled", "tierflow (Redis)",
                                               "naive loop"), "speedup", lambda v: v >= 2)),
    Target("Streaming throughput: tierflow (Redis) / bare kafka-python loop", ">= 0.8",
           _row("streaming", lambda r: _stream(r, "events/s", "pre-filled", "tierflow (Redis)",
                                               "bare loop"), "speedup", lambda v: v >= 0.8)),
    Target("Streaming freshness p99 at 2,000 events/s, Redis, ms", "<= 50",
           _row("streaming", lambda r: _stream(r, "freshness p99 ms", "fixed input rate",
                                               "tierflow (Redis)"), "tierflow", lambda v: v <= 50)),
    Target("Streaming freshness p99 at 2,000 events/s, SQLite, ms", "<= 50",
           _row("streaming", lambda r: _stream(r, "freshness p99 ms", "fixed input rate",
                                               "tierflow (SQLite)"), "tierflow", lambda v: v <= 50)),
    Target("Online read p99, 1 entity, ms", "<= 1",
           _row("features", lambda r: r["benchmark"].endswith(" 1 entities") and r["metric"] == "p99 ms",
                "tierflow", lambda v: v <= 1)),
    Target("Online read p99, 100 entities, ms", "<= 5",
           _row("features", lambda r: r["benchmark"].endswith("100 entities") and r["metric"] == "p99 ms",
                "tierflow", lambda v: v <= 5)),
    Target("Features at scale: the planner's tier / the fastest training-set build of all", "<= 1.2",
           _features_scale(lambda r: str(r.get("tierflow_runner", "")).startswith("planner"),
                           time_ratio, lambda v: v <= 1.2)),
    Target("Materialization: peak memory, largest run, GiB", "<= 2",
           _features_scale(_peak_row, lambda r: r.get("tierflow"), lambda v: v <= 2)),
    Target("Materialization: peak at 10x the events / peak at 1x (flat)", "<= 1.2",
           _features_scale(lambda r: _peak_row(r) and r.get("peer") is not None,
                           lambda r: r["tierflow"] / r["peer"], lambda v: v <= 1.2)),
    Target("Materialization: Redis load rate / pipelined redis-py", ">= 0.8",
           _features_scale(lambda r: str(r.get("benchmark", "")).startswith("load "), speedup,
                           lambda v: v >= 0.8, min)),
    Target("Materialization killed and resumed: rows differing from one run", "0",
           _features_scale(lambda r: str(r.get("benchmark", "")).startswith("SIGKILL"),
                           lambda r: r.get("tierflow"), lambda v: v == 0)),
    Target("Online read p99 with 10 M entities, 1 entity, ms", "<= 1",
           _features_scale(lambda r: "read, 1 entities" in r["benchmark"] and r["metric"] == "p99 ms",
                           lambda r: r.get("tierflow"), lambda v: v <= 1)),
    Target("Online read p99 with 10 M entities, 100 entities, ms", "<= 5",
           _features_scale(lambda r: "read, 100 entities" in r["benchmark"] and r["metric"] == "p99 ms",
                           lambda r: r.get("tierflow"), lambda v: v <= 5)),
    Target("Online read p99 with 10 M entities / raw redis-py (worst of 1, 100)", "<= 1.3",
           _features_scale(lambda r: "online read" in r["benchmark"] and r["metric"] == "p99 ms",
                           time_ratio, lambda v: v <= 1.3)),
    Target("Ray Train DDP step / torchrun", "<= 1.05",
           _row("training", lambda r: r["metric"] == "ms/step", "time_ratio", lambda v: v <= 1.05)),
    Target("Training at 50 M rows: largest process's peak / the snapshot in memory", "<= 0.25",
           _row("training", lambda r: r["metric"] == "largest process peak / snapshot in memory",
                "tierflow", lambda v: v <= 0.25)),
    Target("Training ingest to the workers / pyarrow's read of the same files", ">= 0.5",
           _row("training", lambda r: str(r.get("benchmark", "")).startswith("stream the snapshot"), "speedup",
                lambda v: v >= 0.5)),
)  # fmt: skip


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return "-" if value is None else str(value)


def bars_svg(title: str, bars: list[tuple[str, float]], width: int = 760) -> str:
    """Horizontal bars of ratios (tierflow / peer), a line at 1.0."""
    if not bars:
        return ""
    label_w, row_h, top = 360, 22, 34
    height = top + row_h * len(bars) + 30
    top_value = max(2.0, max(v for _, v in bars) * 1.1)

    def x(v: float) -> float:
        return label_w + (width - label_w - 60) * v / top_value

    parts = [f"<text x='10' y='20' font-size='14' font-weight='bold'>{html.escape(title)}</text>"]
    for i, (label, value) in enumerate(bars):
        y = top + i * row_h
        color = "#2ca02c" if value <= 1.0 else "#d62728"
        parts.append(f"<text x='{label_w - 8}' y='{y + 14}' font-size='11' text-anchor='end'>"
                     f"{html.escape(label[:58])}</text><rect x='{label_w}' y='{y + 3}' "
                     f"width='{x(value) - label_w:.1f}' height='{row_h - 6}' fill='{color}'/>"
                     f"<text x='{x(value) + 4:.1f}' y='{y + 14}' font-size='11'>{value:.2f}</text>")  # fmt: skip
    one = x(1.0)
    bottom = top + row_h * len(bars)
    parts.append(f"<line x1='{one:.1f}' x2='{one:.1f}' y1='{top}' y2='{bottom}' stroke='#333' "
                 f"stroke-dasharray='4 3'/><text x='{one:.1f}' y='{bottom + 16}' font-size='11' "
                 "text-anchor='middle'>1.0 = as fast as the peer (time ratio; lower is better)</text>")  # fmt: skip
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>"
            f"<rect width='100%' height='100%' fill='white'/>{''.join(parts)}</svg>")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    base = ROOT / "benchmarks" / "results"
    # The newest dated folder (``partial/`` holds a stopped run's measurements, not results).
    dated = (p for p in base.iterdir() if p.is_dir() and p.name[:1].isdigit())
    folder = Path(args[0]) if args else max(dated)
    loaded = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    results = {name: data["rows"] for name, data in loaded.items()}
    machine = next((data["machine"] for data in loaded.values() if "machine" in data), {})
    lines = [f"# Benchmarks, {folder.name}", "",
             f"Machine: {machine.get('cpus')} CPUs ({machine.get('cpu')}), "
             f"{machine.get('memory_gib')} GiB, Python {machine.get('python')}. Medians of "
             "several rounds; ratio = tierflow / peer (in time, or in the metric's unit "
             "where the metric is a rate).", ""]  # fmt: skip
    for name in sorted(results, key=lambda n: ORDER.index(n) if n in ORDER else 99):
        lines.append((folder / f"{name}.md").read_text().strip())
        lines.append("")
        bars = []
        for r in results[name]:
            value = time_ratio(r)
            if value is not None:
                label = " ".join(str(r.get(k)) for k in ("benchmark", "tier", "metric", "native",
                                                          "peer_name") if r.get(k) not in (None, "-"))  # fmt: skip
                bars.append((label, value))
        svg = bars_svg(f"{name}: tierflow time / peer time", bars)
        if svg:
            (folder / f"{name}.svg").write_text(svg)
            lines += [f"![{name}]({name}.svg)", ""]
    lines += ["## Targets", "", "| target | goal | measured | met |", "|---|---|---|---|"]
    for target in TARGETS:
        value, met = target.measure(results)
        verdict = "-" if met is None else "yes" if met else "**no**"
        lines.append(f"| {target.what} | {target.goal} | {_fmt(value)} | {verdict} |")
    (folder / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nsummary in {folder / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
