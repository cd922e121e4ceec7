"""The demo's report: one self-contained HTML page and the same content in Markdown.

Both are built from the same tables (a title, column headers, rows), so they say the
same thing; the HTML inlines the training curves (PNG, base64) and links the profile of
the silver flights table, which sits beside it in the run folder.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tierflow.demo.pipeline import Demo


@dataclass(frozen=True)
class Table:
    """A labelled table of the report."""

    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    note: str = ""


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def _tables(demo: Demo) -> list[Table]:
    tables = [
        Table(
            "Stages: where each ran and why",
            ("#", "stage", "tier", "why", "seconds", "reused"),
            tuple(
                (i + 1, s.title, s.tier, s.reason, round(s.seconds, 1), s.cached)
                for i, s in enumerate(demo.stages)
            ),
            "Batch tiers follow the planner (conf/demo.yaml thresholds); a reused stage had "
            "unchanged inputs, configuration and code since the last run.",
        )
    ]
    jobs = demo.results.get("jobs", [])
    if jobs:
        tables.append(Table(
            "Tables: rows in, quarantined and written",
            ("job", "engine", "rows in", "quarantined", "rows out", "output", "version"),
            tuple((j["job"], j["engine"], j["rows_in"], j["rows_quarantined"], j["rows_out"],
                   j["output"], j["version"]) for j in jobs),
            "Every job checks rows in = valid + quarantined; bad rows are in "
            "<data>/_quarantine/<job>/<source> with their reasons.",
        ))  # fmt: skip
        reasons = [(j["job"], rule, count) for j in jobs
                   for rule, count in sorted(j["quarantine_by_rule"].items())]  # fmt: skip
        tables.append(Table(
            "Quarantine reasons", ("job", "rule", "rows"), tuple(reasons) or (("-", "none", 0),)
        ))  # fmt: skip
    training = demo.results.get("training")
    if training:
        m, cmp = training["metrics"], training["comparison"]
        model, base = cmp["model"], cmp["baseline"]
        tables.append(Table(
            "Model against the baseline (test split: December)",
            ("metric", "model (MLP, Ray Train)", "baseline (route delay rate)"),
            (("ROC AUC", model["auc"], base["auc"]),
             ("log loss", model["logloss"], base["logloss"]),
             ("threshold (best F1 on valid)", model["threshold"], base["threshold"]),
             ("precision at threshold", model["precision"], base["precision"]),
             ("recall at threshold", model["recall"], base["recall"]),
             ("valid ROC AUC", model["valid_auc"], base["valid_auc"]),
             ("valid log loss", model["valid_logloss"], base["valid_logloss"])),
            f"Rows: train {cmp['rows']['train']:,}, valid {cmp['rows']['valid']:,}, test "
            f"{cmp['rows']['test']:,}; {cmp['test_delayed_share']:.1%} of test flights were "
            f"delayed. Training: {m['strategy']} on {m['workers']} workers, {m['steps']} "
            f"steps, {m['seconds']:.0f} s. Model beats baseline: "
            f"{'yes' if cmp['model_beats_baseline'] else 'NO'}.",
        ))  # fmt: skip
    streaming = demo.results.get("streaming")
    if streaming:
        fresh = streaming.get("freshness", {})
        sums = streaming.get("summaries", [])

        def total(key: str) -> int:
            return sum(int(x.get(key, 0)) for x in sums)

        tables.append(Table(
            "Streaming: December replayed through Kafka",
            ("measure", "value"),
            (*((f"events on {topic}", n) for topic, n in streaming["events"].items()),
             ("bulk phase: events, at full speed", streaming["bulk_events"]),
             ("bulk phase: first send to last event stored, s", round(streaming["bulk_seconds"], 1)),
             ("bulk phase: throughput, events/s", round(streaming["throughput"])),
             ("paced phase: events, at events/s per topic",
              f"{streaming['paced_events']:,} at {streaming['paced_rate']:,.0f}"),
             ("paced phase: freshness p50, ms", fresh.get("p50_ms")),
             ("paced phase: freshness p99, ms", fresh.get("p99_ms")),
             ("consumed / applied (both daemons)", f"{total('consumed'):,} / {total('applied'):,}"),
             ("poison / late / dead-lettered",
              f"{total('poison')} / {total('late')} / {total('dead_lettered')}"),
             ("replays skipped after the restart", total("skipped_replays")),
             ("daemon exit codes (SIGTERM)", ", ".join(map(str, streaming.get("exit_codes", []))))),
            "Two daemons one after the other: the first takes the bulk phase and is stopped "
            "with SIGTERM; the second resumes from the offsets in the store. Freshness: "
            "store-write time minus the Kafka record's timestamp.",
        ))  # fmt: skip
    parity = demo.results.get("parity")
    if parity:
        tables.append(Table(
            "Parity: online store against batch recomputation",
            ("view", "entities", "values compared", "differences", "extra in store",
             "partitions off the events' watermark", "result"),
            tuple((p["view"], p["entities"], p["values"], p["mismatches"], p["extra"],
                   sum(lag != 0 for lag in p.get("watermark_lag_us", {}).values()),
                   "OK" if p["ok"] else "FAIL") for p in parity),
            "Batch values at each partition's watermark, derived from the same events (not "
            "read from the store; the daemon's own must equal it); floats within a "
            "relative 1e-9.",
        ))  # fmt: skip
    serving = demo.results.get("serving")
    if serving:
        tables.append(Table(
            "Serving: predictions for upcoming flights",
            ("scheduled", "flight", "route", "p(delay)", "carrier delay 1h", "origin delay 1h",
             "actual arrival delay (min)"),
            tuple((a["scheduled"], a["flight"], a["route"], round(a["score"], 3),
                   a["carrier_delay_1h"], a["origin_delay_1h"], a["arr_delay"])
                  for a in serving["predictions"]),
            f"POST /v1/predict/{demo.config.model} of `tierflow serve --model`; flights after "
            f"the replay's end, so none of their own events were streamed. Threshold "
            f"{serving['threshold']:.3f}.",
        ))  # fmt: skip
    monitoring = demo.results.get("monitoring")
    if monitoring:
        psi = monitoring["drift"]["psi"]
        tables.append(Table(
            "Monitoring: the served features against batch, and drift",
            ("feature", "values compared", "differ from batch", "not in the store",
             "PSI of the evening against training"),
            tuple((n, f["compared"], f["mismatches"], f["not_served"],
                   round(psi[n], 3) if n in psi else "-")
                  for n, f in sorted(monitoring["consistency"]["by_feature"].items())),
            "`tierflow monitor consistency`: every row serving scored (the served log), each "
            "view's features computed again in batch at the window end the store served; "
            "`tierflow monitor drift --input served/<model>`: informational here (one "
            "December evening against January-September).",
        ))  # fmt: skip
    return tables


def curves_svg(history: list[dict[str, Any]], width: int = 720, height: int = 300) -> str:
    """Training and validation loss with labelled axes, as inline SVG.

    Training loss per step (raw, and a 50-step moving average), validation loss per epoch.
    """
    steps = [(h["step"], h["loss"]) for h in history if "loss" in h]
    valid = [(h["step"], h["valid_loss"]) for h in history if "valid_loss" in h]
    if not steps:
        return ""
    window = 50
    smooth = []
    total = 0.0
    for i, (_, loss) in enumerate(steps):
        total += loss
        if i >= window:
            total -= steps[i - window][1]
        smooth.append(total / min(i + 1, window))
    values = [v for _, v in steps] + [v for _, v in valid]
    low, high = min(values), max(values)
    high = high if high > low else low + 1.0
    left, right, top, bottom = 60, 20, 20, 40
    last = steps[-1][0]

    def x(step: float) -> float:
        return float(left + (width - left - right) * (step / last if last else 0.0))

    def y(value: float) -> float:
        return float(top + (height - top - bottom) * (1 - (value - low) / (high - low)))

    def path(points: list[tuple[float, float]], color: str, size: float) -> str:
        d = " ".join(f"{'M' if i == 0 else 'L'}{x(a):.1f},{y(b):.1f}"
                     for i, (a, b) in enumerate(points))  # fmt: skip
        return f"<path d='{d}' fill='none' stroke='{color}' stroke-width='{size}'/>"

    parts = [path(steps, "#9ecae1", 0.6),
             path([(a, v) for (a, _), v in zip(steps, smooth, strict=True)], "#1f77b4", 1.6)]  # fmt: skip
    parts += [f"<circle cx='{x(a):.1f}' cy='{y(b):.1f}' r='4' fill='#d62728'/>" for a, b in valid]
    for i in range(5):
        value = low + (high - low) * i / 4
        parts.append(f"<line x1='{left}' x2='{width - right}' y1='{y(value):.1f}' "
                     f"y2='{y(value):.1f}' stroke='#eee'/><text x='{left - 6}' "
                     f"y='{y(value) + 4:.1f}' text-anchor='end' font-size='11'>{value:.3f}</text>")  # fmt: skip
    for i in range(5):
        step = last * i / 4
        parts.append(f"<text x='{x(step):.1f}' y='{height - bottom + 16}' text-anchor='middle' "
                     f"font-size='11'>{step:,.0f}</text>")  # fmt: skip
    parts.append(f"<text x='{(left + width - right) / 2}' y='{height - 6}' text-anchor='middle' "
                 "font-size='12'>optimizer step</text>")  # fmt: skip
    parts.append(f"<text transform='translate(14,{(top + height - bottom) / 2}) rotate(-90)' "
                 "text-anchor='middle' font-size='12'>log loss</text>")  # fmt: skip
    legend = [("#9ecae1", "training loss, per step"), ("#1f77b4", "training loss, 50-step mean"),
              ("#d62728", "validation loss, per epoch")]  # fmt: skip
    for i, (color, label) in enumerate(legend):
        ly = top + 14 + 16 * i
        parts.append(f"<rect x='{width - right - 210}' y='{ly - 9}' width='12' height='10' "
                     f"fill='{color}'/><text x='{width - right - 192}' y='{ly}' "
                     f"font-size='11'>{label}</text>")  # fmt: skip
    axes = (f"<line x1='{left}' y1='{top}' x2='{left}' y2='{height - bottom}' stroke='#444'/>"
            f"<line x1='{left}' y1='{height - bottom}' x2='{width - right}' "
            f"y2='{height - bottom}' stroke='#444'/>")  # fmt: skip
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
            f"role='img' aria-label='training curves'>{axes}{''.join(parts)}</svg>")  # fmt: skip


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
        for row in table.rows
    )
    note = f"<p class='note'>{html.escape(table.note)}</p>" if table.note else ""
    return (f"<h2>{html.escape(table.title)}</h2><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>{note}")  # fmt: skip


def _md_table(table: Table) -> str:
    def cell(v: Any) -> str:
        return _fmt(v).replace("|", "\\|").replace("\n", " ")

    lines = [f"## {table.title}", "", "| " + " | ".join(table.headers) + " |",
             "|" + "---|" * len(table.headers)]  # fmt: skip
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.rows]
    if table.note:
        lines += ["", table.note]
    return "\n".join(lines)


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:72rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;
text-align:left;vertical-align:top}th{background:#f0f0f0}.note{color:#555;font-size:.9rem}
.ok{color:#1a7f37}.bad{color:#c0392b}img{max-width:100%;border:1px solid #ddd}
iframe{width:100%;height:32rem;border:1px solid #ddd}
"""


def write_report(demo: Demo, status: str, error: str, seconds: float) -> Path:
    """Write ``report.html``, ``report.md`` and ``report.json`` into the run folder."""
    tables = _tables(demo)
    opts = demo.options
    facts = (f"Run {demo.run_id}: scale {opts.scale}, online store {opts.online_store}, "
             f"{seconds / 60:.1f} min, status: {status}")  # fmt: skip
    curves = demo.run_dir / "curves.png"
    history_file = demo.run_dir / "history.json"
    history = json.loads(history_file.read_text()) if history_file.is_file() else []
    profile = demo.run_dir / "flights_profile.html"
    parts = [f"<h1>tierflow demo: NYC flights 2013</h1><p class='{'ok' if status == 'succeeded' else 'bad'}'>"
             f"{html.escape(facts)}</p>"]  # fmt: skip
    if error:
        parts.append(f"<pre class='bad'>{html.escape(error)}</pre>")
    md = ["# tierflow demo: NYC flights 2013", "", facts, ""]
    if error:
        md += ["```", error, "```", ""]
    for table in tables:
        parts.append(_html_table(table))
        md += [_md_table(table), ""]
        if table.title.startswith("Model against") and history:
            parts.append("<h3>Training curves</h3>" + curves_svg(history))
            if curves.is_file():
                data = base64.b64encode(curves.read_bytes()).decode()
                parts.append("<p class='note'>As drawn by <code>tierflow train</code> "
                             "(curves.png: loss per step in blue, validation loss per epoch in "
                             f"red):</p><img alt='training curves' src='data:image/png;base64,{data}'>")  # fmt: skip
            md += ["### Training curves", "", "![training curves](curves.png) (loss per step in "
                   "blue, validation loss per epoch in red; report.html has them with axes)", ""]  # fmt: skip
        if table.title.startswith("Quarantine") and profile.is_file():
            parts.append("<h2>Profile of silver flights</h2><p class='note'><a "
                         "href='flights_profile.html'>flights_profile.html</a> (per column: "
                         "missing, distinct, range, histogram, correlation with arr_delay)</p>"
                         "<iframe src='flights_profile.html' title='profile'></iframe>")  # fmt: skip
            md += ["## Profile of silver flights", "",
                   "[flights_profile.html](flights_profile.html)", ""]  # fmt: skip
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>tierflow demo "
            f"{demo.run_id}</title><style>{_STYLE}</style></head><body>{''.join(parts)}"
            "</body></html>")  # fmt: skip
    out = demo.run_dir / "report.html"
    out.write_text(page)
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    record = {"run_id": demo.run_id, "status": status, "error": error, "seconds": seconds,
              "options": {"scale": opts.scale, "online_store": opts.online_store},
              "stages": [s.__dict__ for s in demo.stages], "results": demo.results}  # fmt: skip
    (demo.run_dir / "report.json").write_text(json.dumps(record, indent=1, default=str))
    latest = demo.run_dir.parent / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(demo.run_dir.name)
    return out
