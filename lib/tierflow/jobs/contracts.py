"""Validate rows against a source's contract, on any engine, with Narwhals expressions.

Each rule contributes a reason to the row's ``_tf_reason`` when it fails; a row is valid
when that text is empty. Reasons start with the rule's label (``not_null:``,
``range:``, ``allowed:``, ``unique:``, ``check <name>:``, and the decoder's ``parse:``,
``type:``, ``extra column:``, ``schema:``), so counts per rule fall out of the text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import narwhals as nw

from tierflow.config.jobs import ColumnContract, SourceConfig
from tierflow.errors import DataError
from tierflow.io.textdecode import META_BAD_COLS, META_ERROR, META_FILE, META_RECORD
from tierflow.jobs.expressions import to_expr

REASON = "_tf_reason"
_DUP = "_tf_dup_{}"

_NW_TYPES: dict[str, Any] = {
    "string": nw.String,
    "int32": nw.Int32,
    "int64": nw.Int64,
    "float32": nw.Float32,
    "float64": nw.Float64,
    "boolean": nw.Boolean,
    "date": nw.Date,
    "timestamp": nw.Datetime("us", "UTC"),
}


class ContractError(DataError):
    """The source does not have the columns its contract needs (a file-level problem)."""


def nw_type(name: str) -> Any:
    """The Narwhals dtype of a contract type name."""
    return _NW_TYPES[name]


def rule_labels(source: SourceConfig) -> list[str]:
    """Every reason label this source can produce, in a stable order."""
    labels = ["parse", "schema", "type", "extra column"]
    columns = source.columns or {}
    if any(not c.nullable for c in columns.values()):
        labels.append("not_null")
    if any(c.min is not None or c.max is not None for c in columns.values()):
        labels.append("range")
    if any(c.allowed is not None for c in columns.values()):
        labels.append("allowed")
    if any(c.unique for c in columns.values()) or source.unique_key:
        labels.append("unique")
    labels += [f"check {check.name}" for check in source.checks]
    return labels


def _when(condition: Any, reason: Any) -> Any:
    return nw.when(condition).then(reason)


def _column_reasons(name: str, contract: ColumnContract, has_bad_cols: bool) -> list[Any]:
    col = nw.col(name)
    reasons = []
    if not contract.nullable:
        is_null = col.is_null()
        if has_bad_cols:
            # A value that failed to parse is already reported as a type error.
            is_null = is_null & ~nw.col(META_BAD_COLS).str.contains(f",{name},", literal=True)
        reasons.append(_when(is_null, nw.lit(f"not_null: {name} is null")))
    if contract.min is not None or contract.max is not None:
        low = -float("inf") if contract.min is None else contract.min
        high = float("inf") if contract.max is None else contract.max
        out = nw.lit(False)
        if contract.min is not None:
            out = out | (col < contract.min)
        if contract.max is not None:
            out = out | (col > contract.max)
        reasons.append(_when(out, nw.lit(f"range: {name} outside [{low:g}, {high:g}]")))
    if contract.allowed is not None:
        allowed = list(contract.allowed)
        shown = ", ".join(str(v) for v in allowed)
        reasons.append(_when(~col.is_in(allowed), nw.lit(f"allowed: {name} not in [{shown}]")))
    return reasons


def _conform_columns(
    frame: nw.LazyFrame[Any], source: SourceConfig, name: str
) -> nw.LazyFrame[Any]:
    """Cast typed sources (Parquet, Delta) to the contract's types; fail on missing columns."""
    columns = source.columns or {}
    schema = frame.collect_schema()
    missing = [c for c in columns if c not in schema]
    if missing:
        raise ContractError(
            f"source {name!r} has no column(s) {', '.join(missing)} "
            f"(it has {', '.join(schema.names())})"
        )
    casts = [
        nw.col(c).cast(nw_type(contract.type)).alias(c)
        for c, contract in columns.items()
        if schema[c] != nw_type(contract.type)
    ]
    return frame.with_columns(*casts) if casts else frame


def validate(frame: nw.LazyFrame[Any], name: str, source: SourceConfig) -> nw.LazyFrame[Any]:
    """Add ``_tf_reason`` ("" for valid rows) for every rule of the source's contract.

    The frame keeps its data columns and ``_tf_file``/``_tf_record``; decoder columns are
    folded into the reason and dropped. Without a contract every row is valid.
    """
    schema = frame.collect_schema()
    text = META_ERROR in schema.names()
    columns = source.columns or {}
    if not text and columns:
        frame = _conform_columns(frame, source, name)
    reasons: list[Any] = []
    extras: list[str] = []
    if text:
        reasons.append(_when(nw.col(META_ERROR) != "", nw.col(META_ERROR)))
    elif columns:
        extras = [
            c for c in schema.names() if c not in columns and c not in (META_FILE, META_RECORD)
        ]
        if extras and source.extra_columns == "error":
            raise ContractError(f"source {name!r} has undeclared column(s) {', '.join(extras)}")
        if source.extra_columns == "quarantine":
            reasons += [_when(~nw.col(c).is_null(), nw.lit(f"extra column: {c}")) for c in extras]
    for column, contract in columns.items():
        reasons += _column_reasons(column, contract, has_bad_cols=text)
    for check in source.checks:
        expr = to_expr(check.expr, set(columns))
        reasons.append(_when(~expr, nw.lit(f"check {check.name}: {check.expr}")))
    frame, unique_reasons = _uniqueness(frame, source)
    reasons += unique_reasons
    if reasons:
        reason = nw.concat_str(reasons, separator="; ", ignore_nulls=True).fill_null("")
        if text:
            # A line that could not be parsed has no values to judge: its parse (or
            # schema) reason is the whole story.
            unreadable = nw.col(META_ERROR).str.starts_with("parse:")
            reason = nw.when(unreadable).then(nw.col(META_ERROR)).otherwise(reason)
        frame = frame.with_columns(reason.alias(REASON))
    else:
        frame = frame.with_columns(nw.lit("").alias(REASON))
    # Undeclared columns go only now: their reasons above were computed from them.
    drop = [c for c in (META_ERROR, META_BAD_COLS, *extras) if c in frame.collect_schema().names()]
    drop += [c for c in frame.collect_schema().names() if c.startswith("_tf_dup_")]
    frame = frame.drop(*drop) if drop else frame
    # Decoder reasons and rule reasons are joined by "; "; an all-null fold leaves "".
    return frame


def _uniqueness(
    frame: nw.LazyFrame[Any], source: SourceConfig
) -> tuple[nw.LazyFrame[Any], list[Any]]:
    keys: list[tuple[str, ...]] = [(c,) for c, k in (source.columns or {}).items() if k.unique]
    if source.unique_key:
        keys.append(tuple(source.unique_key))
    reasons = []
    for i, key in enumerate(keys):
        counter = _DUP.format(i)
        counts = (
            frame.filter(*[~nw.col(k).is_null() for k in key])
            .group_by(*key)
            .agg(nw.len().alias(counter))
            .filter(nw.col(counter) > 1)
        )
        frame = frame.join(counts, on=list(key), how="left")
        label = ", ".join(key)
        reasons.append(
            _when(~nw.col(counter).is_null(), nw.lit(f"unique: ({label}) appears more than once"))
        )
    return frame, reasons


def rule_counts(frame: nw.LazyFrame[Any], labels: Sequence[str]) -> Mapping[str, int]:
    """Rows failing each rule (a row failing two rules counts under both)."""
    exprs = [
        nw.col(REASON).str.contains(f"{label}:", literal=True).cast(nw.Int64).sum().alias(label)
        for label in labels
    ]
    row = frame.select(*exprs).collect().rows(named=True)[0]
    return {label: int(row[label] or 0) for label in labels if row[label]}
