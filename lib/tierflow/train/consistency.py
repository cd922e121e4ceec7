"""``tierflow monitor consistency MODEL``: served features against batch, row by row.

The served log (:mod:`tierflow.train.served`) holds, for every row the model scored
online, each view's features as the online store gave them and the end of the window
they were for. Each view's features are computed again in batch, point in time, at
exactly those window ends (:func:`tierflow.features.batch.point_in_time` over the view's
current source table, on the tier the planner picks), and compared value by value: the
same number (within ``monitoring.mismatch_tolerance``, relative), both missing, or a
mismatch. Per view and feature the report gives the rows compared, the mismatches and
their share, the distribution of the differences (quantiles and a histogram of
``served - batch``) and the first mismatching rows; rows the store had nothing for (no
window end) are counted apart, not compared. A feature whose mismatch share is above
``monitoring.mismatch_threshold`` (0 by default: any mismatch) is flagged and the command
exits 1, so that a scheduler can alert on it. HTML and JSON reports in
``logs/monitor/<run>/``.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tierflow.train.served import WINDOW_END

if TYPE_CHECKING:
    from tierflow.config.features import FeatureViewConfig
    from tierflow.engines.base import Engine

#: Mismatching rows shown per feature.
EXAMPLES = 5


@dataclass
class FeatureCheck:
    """One feature's served values against batch."""

    view: str
    feature: str  # the column: <view>__<feature>
    compared: int = 0
    mismatches: int = 0
    not_served: int = 0  # rows the store had nothing for: not compared
    differences: list[float] = field(default_factory=list)  # served - batch, mismatches only
    examples: list[dict[str, Any]] = field(default_factory=list)
    flagged: bool = False

    @property
    def rate(self) -> float:
        """Mismatches over rows compared (0 when none were)."""
        return self.mismatches / self.compared if self.compared else 0.0


def same(served: Any, batch: Any, tolerance: float) -> bool:
    """Whether a served value is batch's: equal, both missing, or numbers within tolerance."""
    if served is None or batch is None:
        return served is None and batch is None
    if isinstance(served, int | float) and isinstance(batch, int | float):
        a, b = float(served), float(batch)
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(a - b) <= tolerance * max(abs(a), abs(b), 1.0)
    return bool(served == batch)


def mismatches(served: Any, batch: Any, tolerance: float) -> Any:
    """Where :func:`same` is false, for two Arrow columns at once (a boolean array).

    Vectorised: a served log of millions of rows is compared in Arrow's kernels, not
    value by value in Python.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    a, b = pa.chunked_array(served).combine_chunks(), pa.chunked_array(batch).combine_chunks()
    one_missing = pc.xor(pc.is_null(a), pc.is_null(b))
    if _numeric(a.type) and _numeric(b.type):
        a, b = pc.cast(a, pa.float64()), pc.cast(b, pa.float64())
        nan_a, nan_b = pc.is_nan(a), pc.is_nan(b)
        scale = pc.max_element_wise(pc.abs(a), pc.abs(b), pa.scalar(1.0))
        near = pc.less_equal(pc.abs(pc.subtract(a, b)), pc.multiply(scale, tolerance))
        # Both NaN is the same; one NaN is not, whatever the other number is.
        differ = pc.if_else(pc.or_(nan_a, nan_b), pc.xor(nan_a, nan_b), pc.invert(near))
    else:
        differ = pc.not_equal(a, b)
    # Null where either is missing: both missing is the same, one missing is not.
    return pc.if_else(one_missing, True, pc.fill_null(differ, False))


def _numeric(kind: Any) -> bool:
    import pyarrow.types as t

    return bool(t.is_integer(kind) or t.is_floating(kind))


def check(
    log: Any,
    views: Mapping[str, FeatureViewConfig],
    events: Mapping[str, Any],
    engine: Engine,
    *,
    tolerance: float,
    threshold: float,
) -> list[FeatureCheck]:
    """Compare the served log's view features with batch at the same window ends.

    Args:
        log: The served log (an Arrow table).
        views: The project's views (the log names the ones the model read).
        events: Each of those views' source rows (an engine frame), by view name.
        engine: Where the batch computation runs.
        tolerance: Relative tolerance of numbers.
        threshold: Mismatch share above which a feature is flagged.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from tierflow.features.batch import point_in_time

    checks: list[FeatureCheck] = []
    names = log.column_names
    for view_name in sorted(c[: -len(WINDOW_END)] for c in names if c.endswith(WINDOW_END)):
        view = views[view_name]
        served = [view.column_name(f) for f in view.features if view.column_name(f) in names]
        ends = log[f"{view_name}{WINDOW_END}"]
        found = pc.is_valid(ends)
        rows = log.filter(found)
        not_served = log.num_rows - rows.num_rows
        frame = pa.table({
            "_tf_row": pa.array(range(rows.num_rows), pa.int64()),
            **{e: rows[e] for e in view.entities},
            "_tf_at": pc.cast(rows[f"{view_name}{WINDOW_END}"], pa.timestamp("us", tz="UTC")),
            **{f"_tf_served__{c}": rows[c] for c in served},
        })  # fmt: skip
        joined = point_in_time(engine.from_arrow(frame), "_tf_at",
                               [(view, {e: e for e in view.entities}, events[view_name])],
                               engine)  # fmt: skip
        batch = engine.collect_arrow(joined).sort_by("_tf_row")
        for column in served:
            item = FeatureCheck(view_name, column, compared=batch.num_rows, not_served=not_served)
            got, want = batch[f"_tf_served__{column}"], batch[column]
            differ = mismatches(got, want, tolerance)
            item.mismatches = pc.sum(differ).as_py() or 0
            if item.mismatches:
                wrong = batch.filter(differ)
                if _numeric(got.type) and _numeric(want.type):
                    delta = pc.subtract(pc.cast(wrong[f"_tf_served__{column}"], pa.float64()),
                                        pc.cast(wrong[column], pa.float64()))  # fmt: skip
                    item.differences = [
                        d for d in pc.drop_null(delta).to_pylist() if not math.isnan(d)
                    ]
                shown = wrong.slice(0, EXAMPLES)
                for i in range(shown.num_rows):
                    example = {e: shown[e][i].as_py() for e in view.entities}
                    example |= {"window_end": str(shown["_tf_at"][i].as_py()),
                                "served": shown[f"_tf_served__{column}"][i].as_py(),
                                "batch": shown[column][i].as_py()}  # fmt: skip
                    item.examples.append(example)
            item.flagged = item.rate > threshold
            checks.append(item)
    return checks


def quantiles(values: list[float]) -> dict[str, float]:
    """p50, p90, p99 and max of the absolute differences (empty when none)."""
    if not values:
        return {}
    ordered = sorted(abs(v) for v in values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": ordered[-1]}


def as_json(checks: list[FeatureCheck], **details: Any) -> str:
    """The numbers of the report."""
    return json.dumps({
        **details,
        "flagged": [c.feature for c in checks if c.flagged],
        "features": {c.feature: {"view": c.view, "compared": c.compared,
                                 "mismatches": c.mismatches, "rate": c.rate,
                                 "not_served": c.not_served,
                                 "abs_difference": quantiles(c.differences),
                                 "examples": c.examples} for c in checks},
    }, indent=2, default=str)  # fmt: skip


def report(checks: list[FeatureCheck], *, model: str, threshold: float, rows: int) -> str:
    """The HTML report: a table per view, then a histogram per mismatching feature."""
    flagged = [c.feature for c in checks if c.flagged]
    verdict = (
        f"<p class=bad>Mismatch share over {threshold:g}: {html.escape(', '.join(flagged))}</p>"
        if flagged
        else f"<p class=ok>Every feature's mismatch share within {threshold:g}.</p>"
    )
    body = []
    for view in sorted({c.view for c in checks}):
        mine = [c for c in checks if c.view == view]
        lines = "".join(
            f"<tr class={'bad' if c.flagged else 'ok'}><td>{html.escape(c.feature)}</td>"
            f"<td>{c.compared:,}</td><td>{c.mismatches:,}</td><td>{c.rate:.2%}</td>"
            f"<td>{quantiles(c.differences).get('p50', 0):.4g}</td>"
            f"<td>{quantiles(c.differences).get('max', 0):.4g}</td></tr>"
            for c in mine
        )
        body.append(f"<h2>{html.escape(view)}</h2><p>{mine[0].not_served:,} served rows had "
                    "nothing stored for the entity (not compared).</p><table><tr><th>feature"
                    "</th><th>compared</th><th>mismatches</th><th>share</th><th>|diff| p50"
                    f"</th><th>|diff| max</th></tr>{lines}</table>")  # fmt: skip
    charts = "".join(_histogram(c) for c in checks if c.differences)
    return f"""<!doctype html><meta charset=utf-8><title>consistency: {html.escape(model)}</title>
<style>body{{font:14px sans-serif;margin:2em}}.bad{{color:#b00}}.ok{{color:#060}}
td{{padding:2px 10px}}svg{{margin:8px 0 20px}}</style>
<h1>Online/offline consistency of {html.escape(model)}</h1>
<p>{rows:,} served rows; each view's features computed again in batch at the window end
the online store served them for.</p>{verdict}{"".join(body)}{charts}"""


def _histogram(c: FeatureCheck, bins: int = 20) -> str:
    """Counts of ``served - batch`` over the mismatching rows, with axes and labels."""
    width, height, left, bottom = 640, 220, 50, 50
    low, high = min(c.differences), max(c.differences)
    span = (high - low) or 1.0
    counts = [0] * bins
    for d in c.differences:
        counts[min(bins - 1, int((d - low) / span * bins))] += 1
    top = max(counts)
    step = (width - left - 10) / bins
    bars = []
    for i, n in enumerate(counts):
        h = (height - bottom - 10) * n / top
        bars.append(f'<rect x="{left + i * step + 1:.1f}" y="{height - bottom - h:.1f}" '
                    f'width="{step - 2:.1f}" height="{h:.1f}" fill="#c33"/>')  # fmt: skip
    base = height - bottom
    axes = (f'<line x1="{left}" y1="{base}" x2="{width - 10}" y2="{base}" stroke="#000"/>'
            f'<line x1="{left}" y1="10" x2="{left}" y2="{base}" stroke="#000"/>'
            f'<text x="{left - 6}" y="16" font-size="10" text-anchor="end">{top}</text>'
            f'<text x="{left}" y="{base + 14}" font-size="10">{low:.4g}</text>'
            f'<text x="{width - 10}" y="{base + 14}" font-size="10" text-anchor="end">'
            f'{high:.4g}</text><text x="{(width + left) / 2}" y="{base + 34}" font-size="11" '
            f'text-anchor="middle">served - batch</text><text x="12" y="{base / 2}" '
            f'font-size="10" transform="rotate(-90 12 {base / 2})">rows</text>')  # fmt: skip
    title = (f"<h3 class=bad>{html.escape(c.feature)}: {c.mismatches:,} of {c.compared:,} "
             "rows differ</h3>")  # fmt: skip
    return f'{title}<svg width="{width}" height="{height}">{axes}{"".join(bars)}</svg>'


def write_report(folder: Path, checks: list[FeatureCheck], **details: Any) -> Path:
    """``consistency.html`` and ``consistency.json`` in ``folder``; the HTML's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "consistency.json").write_text(as_json(checks, **details))
    out = folder / "consistency.html"
    out.write_text(report(checks, **details))
    return out
