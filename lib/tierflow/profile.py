"""``tierflow profile``: an HTML report of a table's columns, computed on the fitting tier.

The exploratory checklist: types, share missing, cardinality, distributions (histograms
of numeric columns, top values of the others), outliers (beyond three standard
deviations of the mean) and correlation with a target column. Statistics are Narwhals
aggregations, so they run on whichever engine the planner picks for the table's size;
only the small aggregated results come back to draw the plots (inline SVG, no
dependencies, opens anywhere).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any

import narwhals as nw

from tierflow.io.textdecode import META_FILE, META_RECORD

BINS = 20
TOP = 10


@dataclass
class ColumnProfile:
    """Statistics of one column."""

    name: str
    dtype: str
    kind: str
    nulls: int
    n_unique: int
    minimum: Any = None
    maximum: Any = None
    mean: float | None = None
    std: float | None = None
    outliers: int | None = None
    histogram: list[tuple[float, float, int]] = field(default_factory=list)
    top_values: list[tuple[Any, int]] = field(default_factory=list)
    target_corr: float | None = None
    target_by_value: list[tuple[Any, float | None]] = field(default_factory=list)


@dataclass
class TableProfile:
    """Statistics of a whole table."""

    title: str
    rows: int
    columns: list[ColumnProfile]
    target: str | None
    engine: str
    plan: str = ""


def _kind(dtype: Any) -> str:
    if dtype == nw.Boolean:
        return "boolean"
    if dtype.is_numeric():
        return "numeric"
    if dtype.is_temporal():
        return "temporal"
    return "categorical"


def _scalar_row(frame: nw.LazyFrame[Any], exprs: list[Any]) -> dict[str, Any]:
    return dict(frame.select(*exprs).collect().rows(named=True)[0]) if exprs else {}


def profile_frame(  # noqa: PLR0912 - one pass per statistic family
    frame: nw.LazyFrame[Any], *, title: str, engine: str, target: str | None = None
) -> TableProfile:
    """Compute the profile of ``frame`` (all but tierflow's ``_tf_`` columns)."""
    schema = frame.collect_schema()
    names = [n for n in schema.names() if n not in (META_FILE, META_RECORD)]
    if target is not None and target not in names:
        raise ValueError(f"target column {target!r} is not in the table ({', '.join(names)})")
    kinds = {n: _kind(schema[n]) for n in names}
    numeric = [n for n in names if kinds[n] == "numeric"]
    as_number = {n: nw.col(n).cast(nw.Float64) for n in numeric}
    first: list[Any] = [nw.len().alias("__rows")]
    for n in names:
        first += [
            nw.col(n).null_count().alias(f"{n}__nulls"),
            nw.col(n).n_unique().alias(f"{n}__unique"),
        ]
        if kinds[n] in ("numeric", "temporal"):
            first += [nw.col(n).min().alias(f"{n}__min"), nw.col(n).max().alias(f"{n}__max")]
        if kinds[n] == "numeric":
            first += [
                as_number[n].mean().alias(f"{n}__mean"),
                as_number[n].std().alias(f"{n}__std"),
            ]
    stats = _scalar_row(frame, first)
    rows = int(stats["__rows"])
    columns = [_column(n, schema, kinds, stats) for n in names]
    by_name = {c.name: c for c in columns}

    second: list[Any] = []
    for n in numeric:
        c = by_name[n]
        if c.std and c.mean is not None:
            far = (as_number[n] - c.mean).abs() > 3 * c.std
            second.append(far.cast(nw.Int64).sum().alias(f"{n}__out"))
    target_numeric = target is not None and kinds[target] in ("numeric", "boolean")
    if target_numeric and target is not None:
        y = nw.col(target).cast(nw.Float64)
        paired = frame.filter(~nw.col(target).is_null())
        corr_exprs = []
        for n in numeric:
            if n == target:
                continue
            x = as_number[n]
            corr_exprs += [
                (x * y).mean().alias(f"{n}__xy"), x.mean().alias(f"{n}__x"),
                (x * x).mean().alias(f"{n}__xx"),
            ]  # fmt: skip
        corr_exprs += [y.mean().alias("__y"), (y * y).mean().alias("__yy")]
        moments = _scalar_row(paired, corr_exprs)
        for n in numeric:
            if n == target:
                continue
            by_name[n].target_corr = _pearson(moments, n)
    extra = _scalar_row(frame, second)
    for n in numeric:
        if f"{n}__out" in extra:
            by_name[n].outliers = int(extra[f"{n}__out"] or 0)

    _histograms(frame, [c for c in columns if c.kind == "numeric" and c.minimum is not None
                        and c.maximum is not None], as_number)  # fmt: skip
    for c in columns:
        if c.kind in ("categorical", "boolean"):
            by = target if target_numeric and c.name != target else None
            c.top_values, c.target_by_value = _top_values(frame, c.name, by)
    return TableProfile(title=title, rows=rows, columns=columns, target=target, engine=engine)


def _column(n: str, schema: Any, kinds: dict[str, str], stats: dict[str, Any]) -> ColumnProfile:
    return ColumnProfile(
        name=n,
        dtype=str(schema[n]),
        kind=kinds[n],
        nulls=int(stats[f"{n}__nulls"] or 0),
        n_unique=int(stats[f"{n}__unique"] or 0),
        minimum=stats.get(f"{n}__min"),
        maximum=stats.get(f"{n}__max"),
        mean=stats.get(f"{n}__mean"),
        std=stats.get(f"{n}__std"),
    )


def _pearson(moments: dict[str, Any], n: str) -> float | None:
    try:
        cov = moments[f"{n}__xy"] - moments[f"{n}__x"] * moments["__y"]
        var_x = moments[f"{n}__xx"] - moments[f"{n}__x"] ** 2
        var_y = moments["__yy"] - moments["__y"] ** 2
    except TypeError:
        return None
    if var_x <= 0 or var_y <= 0:
        return None
    return float(cov / math.sqrt(var_x * var_y))


def _histograms(frame: nw.LazyFrame[Any], columns: list[ColumnProfile], as_number: Any) -> None:
    """Every numeric column's histogram from one pass over the table.

    Each column's values, scaled to bucket widths, are unpivoted into (column, value)
    pairs, cut to bucket numbers and counted: one scan and one shuffle on Dask or Spark,
    where a pass per histogram rescanned the table once per numeric column.
    """
    if not columns:
        return
    edges: dict[str, tuple[float, float]] = {}
    scaled = []
    for i, c in enumerate(columns):
        low, high = float(c.minimum), float(c.maximum)
        width = (high - low) / BINS or 1.0
        edges[f"__b{i}"] = (low, width)
        scaled.append(((as_number[c.name] - low) / width).alias(f"__b{i}"))
    # Nulls are dropped before the cast to a bucket number (Dask cannot cast a null).
    bucket = nw.col("__x").cast(nw.Int64)
    counts = (
        frame.select(*scaled)
        .unpivot(on=list(edges), variable_name="__c", value_name="__x")
        .filter(~nw.col("__x").is_null())  # a null value is in no bucket
        .with_columns(nw.when(bucket >= BINS).then(nw.lit(BINS - 1)).otherwise(bucket).alias("__b"))
        .group_by("__c", "__b")
        .agg(nw.len().alias("__n"))
        .collect()
        .rows(named=True)
    )
    found = {(r["__c"], int(r["__b"])): int(r["__n"]) for r in counts}
    for key, c in zip(edges, columns, strict=True):
        low, width = edges[key]
        c.histogram = [(low + i * width, low + (i + 1) * width, found.get((key, i), 0))
                       for i in range(BINS)]  # fmt: skip


def _top_values(
    frame: nw.LazyFrame[Any], name: str, target: str | None
) -> tuple[list[tuple[Any, int]], list[tuple[Any, float | None]]]:
    """The most frequent values, and the target's mean for each of them, in one pass."""
    aggregations = [nw.len().alias("__n")]
    if target is not None:
        # Cast first, then an elementary mean: Dask takes only elementary aggregations.
        frame = frame.with_columns(nw.col(target).cast(nw.Float64).alias("__t"))
        aggregations.append(nw.col("__t").mean().alias("__m"))
    counts = frame.group_by(name).agg(*aggregations).collect().rows(named=True)
    ranked = sorted(counts, key=lambda r: (-int(r["__n"]), str(r[name])))[:TOP]
    top = [(r[name], int(r["__n"])) for r in ranked]
    means = [(r[name], r["__m"]) for r in ranked] if target is not None else []
    return top, means


# --- HTML -------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def svg_bars(bars: list[tuple[str, int]], *, width: int = 420, height: int = 120) -> str:
    """A bar chart as inline SVG: one bar per (label, count), labels in tooltips."""
    if not bars:
        return ""
    peak = max(n for _, n in bars) or 1
    step = width / len(bars)
    rects = []
    for i, (label, n) in enumerate(bars):
        h = 0 if n == 0 else max(1.0, (height - 16) * n / peak)
        rects.append(
            f'<rect x="{i * step + 1:.1f}" y="{height - 14 - h:.1f}" '
            f'width="{max(step - 2, 1):.1f}" height="{h:.1f}" fill="#4a78b5">'
            f"<title>{html.escape(label)}: {n:,}</title></rect>"
        )
    axis = (
        f'<text x="0" y="{height - 2}" font-size="10">{html.escape(bars[0][0])}</text>'
        f'<text x="{width}" y="{height - 2}" font-size="10" text-anchor="end">'
        f"{html.escape(bars[-1][0])}</text>"
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'class="plot">{"".join(rects)}{axis}</svg>'
    )


def render_html(profile: TableProfile) -> str:
    """The report as one self-contained HTML page."""
    rows = profile.rows or 1
    overview = "".join(
        f"<tr><td>{html.escape(c.name)}</td><td>{html.escape(c.dtype)}</td><td>{c.kind}</td>"
        f"<td>{100 * c.nulls / rows:.2f}%</td><td>{c.n_unique:,}</td>"
        f"<td>{_fmt(c.outliers)}</td><td>{_fmt(c.target_corr)}</td></tr>"
        for c in profile.columns
    )
    sections = []
    for c in profile.columns:
        stats = {
            "missing": f"{c.nulls:,} ({100 * c.nulls / rows:.2f}%)",
            "distinct": f"{c.n_unique:,}",
            "min": _fmt(c.minimum),
            "max": _fmt(c.maximum),
            "mean": _fmt(c.mean),
            "std": _fmt(c.std),
            "outliers (>3 sd)": _fmt(c.outliers),
        }
        if profile.target:
            stats[f"corr with {profile.target}"] = _fmt(c.target_corr)
        table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in stats.items() if v != "-")
        if c.histogram:
            plot = svg_bars([(f"{lo:.4g}..{hi:.4g}", n) for lo, hi, n in c.histogram])
            caption = "histogram"
        elif c.top_values:
            plot = svg_bars([(str(v), n) for v, n in c.top_values])
            caption = f"top {len(c.top_values)} values"
        else:
            plot, caption = "", ""
        values = ""
        if c.top_values:
            by_value = dict(c.target_by_value)
            head = (
                f"<th>mean {html.escape(profile.target)}</th>"
                if c.target_by_value and profile.target
                else ""
            )
            values = (
                "<table class='values'><tr><th>value</th><th>rows</th>"
                + head
                + "</tr>"
                + "".join(
                    f"<tr><td>{_fmt(v)}</td><td>{n:,}</td>"
                    + (f"<td>{_fmt(by_value.get(v))}</td>" if head else "")
                    + "</tr>"
                    for v, n in c.top_values
                )
                + "</table>"
            )
        sections.append(
            f"<section id='col-{html.escape(c.name)}'><h2>{html.escape(c.name)} "
            f"<small>{html.escape(c.dtype)}</small></h2><div class='row'><table>{table}</table>"
            f"<figure>{plot}<figcaption>{caption}</figcaption></figure></div>{values}</section>"
        )
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}.row{display:flex;gap:2em}"
        "section{border-top:2px solid #4a78b5;margin-top:1.5em}"
    )
    target = f", target <b>{html.escape(profile.target)}</b>" if profile.target else ""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Profile: "
        f"{html.escape(profile.title)}</title><style>{style}</style></head><body>"
        f"<h1>Profile: {html.escape(profile.title)}</h1>"
        f"<p>{profile.rows:,} rows, {len(profile.columns)} columns{target}; computed on "
        f"{html.escape(profile.engine)}.</p><pre>{html.escape(profile.plan)}</pre>"
        "<h2>Columns</h2><table><tr><th>column</th><th>type</th><th>kind</th><th>missing</th>"
        f"<th>distinct</th><th>outliers</th><th>corr with target</th></tr>{overview}</table>"
        + "".join(sections)
        + "</body></html>"
    )
