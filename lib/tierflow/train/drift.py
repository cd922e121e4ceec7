"""``tierflow monitor drift MODEL --input TABLE``: features and scores against training.

A table of rows the model scored (``tierflow predict``'s output, or any table holding the
model's features, with a ``score`` column or not) is compared with the training split
of the snapshot the model was trained on (its registry version names it): the population
stability index per feature and for the score,

    PSI = sum over bins of (share now - share in training) * ln(share now / share in training),

with the bins fitted on the training rows (deciles for numbers, each category seen in
training plus "other" for categories, and a bin for missing values). Over
``monitoring.psi_threshold`` (``conf/tierflow.yaml``, 0.25 by default: a common "major
shift" mark; 0.1-0.25 is usually read as moderate) a feature is flagged, the report says
so and the command exits 1, so that a scheduler can alert on it. The report is HTML with a
chart per feature (training against now), and JSON beside it.
"""

from __future__ import annotations

import html
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tierflow.train.predict import Predictor

#: Shares below this count as this, so that an empty bin does not make PSI infinite.
FLOOR = 1e-4
#: Training rows read at most (a sample, every n-th row, when there are more).
SAMPLE = 200_000
MISSING = "(missing)"
OTHER = "(other)"


@dataclass(frozen=True)
class Drift:
    """One feature's (or the score's) shift."""

    name: str
    psi: float
    bins: list[str]
    expected: list[float]  # training shares
    actual: list[float]  # shares now
    flagged: bool


def psi(expected: list[float], actual: list[float]) -> float:
    """The population stability index of two share vectors over the same bins."""
    total = 0.0
    for before, after in zip(expected, actual, strict=True):
        e, a = max(before, FLOOR), max(after, FLOOR)
        total += (a - e) * math.log(a / e)
    return total


def numeric_bins(values: Sequence[float | None], count: int = 10) -> list[float]:
    """Inner edges of ``count`` quantile bins of the training values (ties merged)."""
    present = sorted(v for v in values if v is not None and not math.isnan(v))
    if not present:
        return []
    edges = [present[min(len(present) - 1, (len(present) * i) // count)] for i in range(1, count)]
    return sorted(set(edges))


def numeric_shares(
    values: Sequence[float | None], edges: list[float]
) -> tuple[list[str], list[float]]:
    """Shares of ``values`` in the bins ``(-inf, e1], (e1, e2], ..., (ek, inf)`` and missing."""
    import bisect

    counts = [0] * (len(edges) + 2)
    for v in values:
        if v is None or math.isnan(v):
            counts[-1] += 1
        else:
            counts[bisect.bisect_left(edges, v)] += 1
    names = [f"<= {edges[0]:.4g}"] if edges else ["all"]
    names += [f"({a:.4g}, {b:.4g}]" for a, b in itertools.pairwise(edges)]
    names += [f"> {edges[-1]:.4g}"] if edges else []
    names.append(MISSING)
    if not edges:
        counts = [counts[0], counts[-1]]
    n = max(1, len(values))
    return names, [c / n for c in counts]


def categorical_shares(values: list[Any], known: list[str]) -> tuple[list[str], list[float]]:
    """Shares of each training category, of others and of missing values."""
    index = {k: i for i, k in enumerate(known)}
    counts = [0] * (len(known) + 2)
    for v in values:
        if v is None:
            counts[-1] += 1
        else:
            counts[index.get(str(v), len(known))] += 1
    n = max(1, len(values))
    return [*known, OTHER, MISSING], [c / n for c in counts]


def compare(training: Any, now: Any, predictor: Predictor, *, threshold: float) -> list[Drift]:
    """Every feature's drift, then the score's.

    The score is computed for the training rows; for the rows now, it is their ``score``
    column if they have one, else computed too.
    """
    import pyarrow as pa

    categorical = set(predictor.config.categorical)
    out = []
    for name in predictor.config.features:
        before, after = training[name].to_pylist(), now[name].to_pylist()
        if name in categorical or pa.types.is_string(training[name].type):
            known = sorted({str(v) for v in before if v is not None})
            bins, expected = categorical_shares(before, known)
            _, actual = categorical_shares(after, known)
        else:
            before = [_number(v) for v in before]
            after = [_number(v) for v in after]
            edges = numeric_bins(before)
            bins, expected = numeric_shares(before, edges)
            _, actual = numeric_shares(after, edges)
        value = psi(expected, actual)
        out.append(Drift(name, value, bins, expected, actual, value > threshold))
    scores_before = predictor.predict_table(training)
    scores_now = (
        now["score"].to_pylist() if "score" in now.column_names else predictor.predict_table(now)
    )
    edges = numeric_bins(scores_before)
    bins, expected = numeric_shares(scores_before, edges)
    _, actual = numeric_shares(scores_now, edges)
    value = psi(expected, actual)
    out.append(Drift("score", value, bins, expected, actual, value > threshold))
    return out


def _number(value: Any) -> float | None:
    if value is None:
        return None
    return float(value)


def read_rows(path: str) -> Any:
    """A Delta table's latest version, or Parquet files, as one Arrow table."""
    import pyarrow.dataset as ds

    from tierflow.storage import arrow_location, delta_table, is_delta_table

    if is_delta_table(path):
        return delta_table(path).to_pyarrow_table()
    filesystem, where = arrow_location(path)
    return ds.dataset(where, format="parquet", filesystem=filesystem).to_table()


def training_rows(snapshot: tuple[str, int], predictor: Predictor) -> Any:
    """The training split's rows of the snapshot (a sample of at most :data:`SAMPLE`)."""
    import pyarrow.compute as pc

    from tierflow.storage import delta_table

    path, version = snapshot
    config = predictor.config
    split = [config.split_column] if config.split_column else []
    columns = list(dict.fromkeys([*config.features, *split]))
    table = delta_table(path, version=version).to_pyarrow_table(columns=columns)
    if config.split_column:
        table = table.filter(pc.equal(table[config.split_column], "train"))
    if table.num_rows > SAMPLE:
        step = -(-table.num_rows // SAMPLE)
        table = table.take(list(range(0, table.num_rows, step)))
    return table


def report(drifts: list[Drift], *, model: str, threshold: float, rows: tuple[int, int]) -> str:
    """The HTML report: a table of PSIs, then a chart per feature."""
    flagged = [d.name for d in drifts if d.flagged]
    verdict = (
        f"<p class=bad>Over the threshold ({threshold:g}): {html.escape(', '.join(flagged))}</p>"
        if flagged
        else f"<p class=ok>Every feature and the score within PSI {threshold:g}.</p>"
    )
    rows_html = "".join(
        f"<tr class={'bad' if d.flagged else 'ok'}><td>{html.escape(d.name)}</td>"
        f"<td>{d.psi:.4f}</td></tr>"
        for d in sorted(drifts, key=lambda d: -d.psi)
    )
    charts = "".join(_chart(d) for d in drifts)
    return f"""<!doctype html><meta charset=utf-8><title>drift: {html.escape(model)}</title>
<style>body{{font:14px sans-serif;margin:2em}}.bad{{color:#b00}}.ok{{color:#060}}
td{{padding:2px 10px}}svg{{margin:8px 0 20px}}</style>
<h1>Drift of {html.escape(model)} against its training split</h1>
<p>{rows[0]:,} training rows, {rows[1]:,} rows now. PSI = sum over bins of
(now - training) x ln(now / training).</p>{verdict}
<table><tr><th>feature</th><th>PSI</th></tr>{rows_html}</table>{charts}"""


def _chart(d: Drift) -> str:
    """Bars of the training shares (grey) and the shares now (blue) per bin, with axes."""
    width, height, left, bottom = 640, 220, 50, 60
    bins = len(d.bins)
    step = (width - left - 10) / max(1, bins)
    top = max([*d.expected, *d.actual, 1e-9])
    bars, labels = [], []
    for i, (e, a) in enumerate(zip(d.expected, d.actual, strict=True)):
        x = left + i * step
        for offset, share, colour in ((0.1, e, "#999"), (0.5, a, "#36c")):
            h = (height - bottom - 10) * share / top
            y = height - bottom - h
            bars.append(f'<rect x="{x + offset * step:.1f}" y="{y:.1f}" '
                        f'width="{0.38 * step:.1f}" height="{h:.1f}" '
                        f'fill="{colour}"/>')  # fmt: skip
        labels.append(f'<text x="{x + step / 2:.1f}" y="{height - bottom + 12}" font-size="9" '
                      f'text-anchor="end" transform="rotate(-35 {x + step / 2:.1f} '
                      f'{height - bottom + 12})">{html.escape(d.bins[i])}</text>')  # fmt: skip
    base = height - bottom
    axis = (f'<line x1="{left}" y1="{base}" x2="{width - 10}" y2="{base}" '
            f'stroke="#000"/><line x1="{left}" y1="10" x2="{left}" y2="{height - bottom}" '
            f'stroke="#000"/><text x="{left - 6}" y="16" font-size="10" text-anchor="end">'
            f'{top:.0%}</text><text x="12" y="{(height - bottom) / 2}" font-size="10" '
            f'transform="rotate(-90 12 {(height - bottom) / 2})">share of rows</text>')  # fmt: skip
    title = (f"<h3 class={'bad' if d.flagged else 'ok'}>{html.escape(d.name)}: PSI "
             f"{d.psi:.4f} (grey: training, blue: now)</h3>")  # fmt: skip
    body = axis + "".join(bars) + "".join(labels)
    return f'{title}<svg width="{width}" height="{height}">{body}</svg>'


def as_json(drifts: list[Drift], threshold: float) -> str:
    """The numbers of the report."""
    return json.dumps({
        "threshold": threshold,
        "flagged": [d.name for d in drifts if d.flagged],
        "features": {d.name: {"psi": d.psi, "bins": d.bins, "training": d.expected,
                              "now": d.actual} for d in drifts},
    }, indent=2)  # fmt: skip


def write_report(folder: Path, drifts: list[Drift], **details: Any) -> Path:
    """``drift.html`` and ``drift.json`` in ``folder``; the HTML's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "drift.json").write_text(as_json(drifts, details["threshold"]))
    out = folder / "drift.html"
    out.write_text(report(drifts, **details))
    return out
