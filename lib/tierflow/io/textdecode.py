"""Decode CSV and JSON-lines files into typed Arrow batches, keeping every bad row.

Every engine reads text sources through this one decoder (Polars in-process, Dask as
one task per file, Spark inside ``mapInArrow``), so a malformed line, a value of the
wrong type or an undeclared column is judged the same way on every tier. Nothing is
dropped: a row that cannot be decoded comes out with null values and a reason in
``_tf_error``, and validation sends it to quarantine.

Semantics, written down once:

- Empty strings (after trimming whitespace) are null, for every type; so are a CSV
  source's ``null_values`` tokens (``NA``...), matched exactly.
- Integers: optional sign and up to 18 digits. Floats: decimal or exponent notation,
  finite. Booleans: true/false/1/0, any case. Dates: ``YYYY-MM-DD``. Timestamps: ISO 8601
  (``T`` or space, optional fraction and offset); without an offset they are UTC; all are
  stored as UTC microseconds.
- CSV: the first line is the header; ``_tf_record`` is the 1-based data record number
  (header excluded; quoted newlines do not start a record). A record with the wrong
  number of fields is malformed.
- JSON lines: one object per line; ``_tf_record`` is the 1-based line number; blank lines
  are skipped. Scalars are read as their text (``1`` for an integer column is fine, so is
  ``"1"``); nested values are kept as JSON text for string columns.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs

META_FILE = "_tf_file"
META_RECORD = "_tf_record"
META_ERROR = "_tf_error"
META_BAD_COLS = "_tf_bad_cols"
META_COLUMNS = (META_FILE, META_RECORD, META_ERROR, META_BAD_COLS)

ExtraPolicy = Literal["quarantine", "drop", "error"]

_ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
_INT = r"^[+-]?[0-9]{1,18}$"
_FLOAT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_INT32 = (-(2**31), 2**31 - 1)
_SHOWN = 40  # characters of a bad value kept in its reason
_SURROGATE_ESCAPE = re.compile(r"\\[uU][dD][89a-fA-F]")
_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class CsvOptions:
    """How a CSV file is written: its delimiter and the tokens that mean "no value"."""

    delimiter: str = ","
    null_values: tuple[str, ...] = ()  # besides the empty string, e.g. ("NA", "NULL")


class DecodeError(ValueError):
    """A file cannot be decoded at all (not a row-level problem)."""


def arrow_type(name: str) -> pa.DataType:
    """The Arrow type of a contract type name."""
    return _ARROW_TYPES[name]


def output_schema(types: Mapping[str, str]) -> pa.Schema:
    """Schema of decoded batches: the declared columns, then the four ``_tf_`` columns."""
    fields = [pa.field(name, arrow_type(t)) for name, t in types.items()]
    fields += [
        pa.field(META_FILE, pa.string()),
        pa.field(META_RECORD, pa.int64()),
        pa.field(META_ERROR, pa.string()),
        pa.field(META_BAD_COLS, pa.string()),
    ]
    return pa.schema(fields)


# --- value coercion -------------------------------------------------------------------


def _blank_to_null(values: pa.Array) -> pa.Array:
    trimmed = pc.utf8_trim_whitespace(values)
    return pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)


def _parse_timestamps_slow(values: list[str | None]) -> list[datetime | None]:
    out: list[datetime | None] = []
    for text in values:
        if text is None:
            out.append(None)
            continue
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            out.append(None)
            continue
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        out.append(parsed.astimezone(timezone.utc))
    return out


def _strict_strptime(values: pa.Array, fmt: str, unit: str) -> pa.Array:
    """Parse like strptime, refusing what it would silently normalise (2023-02-29)."""
    parsed = pc.strptime(values, fmt, unit, error_is_null=True)
    same = pc.equal(pc.strftime(parsed, fmt), values)
    return pc.if_else(same, parsed, pa.scalar(None, parsed.type))


def _coerce(values: pa.Array, type_name: str) -> pa.Array:
    """Convert trimmed, blank-as-null strings; values that do not parse become null."""
    null = pa.scalar(None, pa.string())
    if type_name in ("int32", "int64", "float32", "float64"):
        # Arrow's casts reject an explicit plus sign.
        unsigned = pc.replace_substring_regex(values, r"^\+", "")
    if type_name in ("int32", "int64"):
        ok = pc.match_substring_regex(values, _INT)
        ints = pc.cast(pc.if_else(ok, unsigned, null), pa.int64())
        if type_name == "int32":
            in_range = pc.and_(pc.greater_equal(ints, _INT32[0]), pc.less_equal(ints, _INT32[1]))
            ints = pc.if_else(in_range, ints, pa.scalar(None, pa.int64()))
            return pc.cast(ints, pa.int32())
        return ints
    if type_name in ("float32", "float64"):
        ok = pc.match_substring_regex(values, _FLOAT)
        floats = pc.cast(pc.if_else(ok, unsigned, null), pa.float64())
        if type_name == "float32":
            # Overflow to infinity happens in the narrowing cast, so check after it.
            floats = pc.cast(floats, pa.float32())
        # "1e999" matches the pattern but overflows to infinity: not a finite float.
        finite = pc.is_finite(floats)
        return pc.if_else(finite, floats, pa.scalar(None, floats.type))
    if type_name == "boolean":
        lowered = pc.utf8_lower(values)
        truthy = pc.is_in(lowered, value_set=pa.array(["true", "1"]))
        falsy = pc.is_in(lowered, value_set=pa.array(["false", "0"]))
        return pc.if_else(truthy, True, pc.if_else(falsy, False, pa.scalar(None, pa.bool_())))
    if type_name == "date":
        ok = pc.match_substring_regex(values, r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
        parsed = _strict_strptime(pc.if_else(ok, values, null), "%Y-%m-%d", "s")
        return pc.cast(parsed, pa.date32())
    if type_name == "timestamp":
        # Whole seconds take the vectorised path (unit "s", so the round trip through
        # strftime has no fraction); the cast then gives microseconds.
        # A UTC designator ("Z", "+00:00": what most producers write) changes nothing.
        bare = pc.replace_substring_regex(values, r"(?:[Zz]|\+00:00)$", "")
        fast = _strict_strptime(bare, "%Y-%m-%dT%H:%M:%S", "s")
        fast = pc.coalesce(fast, _strict_strptime(bare, "%Y-%m-%d %H:%M:%S", "s"))
        fast = pc.cast(fast, pa.timestamp("us"))
        result = pc.assume_timezone(fast, "UTC")
        missing = pc.and_(pc.is_null(result), pc.is_valid(values))
        if pc.any(missing).as_py():
            # Fractions, offsets and other ISO 8601 forms: the rare rows take the slow path.
            slow = pa.array(
                _parse_timestamps_slow(pc.if_else(missing, values, null).to_pylist()),
                pa.timestamp("us", tz="UTC"),
            )
            result = pc.coalesce(result, slow)
        return result
    if type_name == "string":
        return values
    raise DecodeError(f"unknown column type {type_name!r}")


def _join(parts: Sequence[pa.Array], sep: str, length: int) -> pa.Array:
    """Join string arrays row by row, skipping nulls; "" where every part is null."""
    # pc.binary_join_element_wise(..., null_handling="skip") drops rows whose parts are
    # all null instead of keeping them, so the nulls are folded by hand.
    result: pa.Array = pa.nulls(length, pa.string())
    for part in parts:
        both = pc.binary_join_element_wise(result, part, sep)
        result = pc.if_else(pc.is_null(result), part, pc.if_else(pc.is_null(part), result, both))
    return pc.fill_null(result, "")


def typed_batch(
    raw: Mapping[str, pa.Array],
    types: Mapping[str, str],
    *,
    file: str,
    records: pa.Array,
    errors: pa.Array,
) -> pa.RecordBatch:
    """Turn string columns into the declared types, adding reasons for values that fail.

    Args:
        raw: String columns as read (a declared column missing from ``raw`` is null).
        types: Declared column types, in output order.
        file: Source file, for ``_tf_file``.
        records: Record numbers, for ``_tf_record``.
        errors: Reasons found while reading (malformed lines, extra columns), "" if none.
    """
    length = len(records)
    columns: list[pa.Array] = []
    reasons: list[pa.Array] = [
        pc.if_else(pc.equal(errors, ""), pa.scalar(None, pa.string()), errors)
    ]
    bad_cols: list[pa.Array] = []
    for name, type_name in types.items():
        source = raw.get(name)
        if source is None:
            columns.append(pa.nulls(length, arrow_type(type_name)))
            continue
        source = source.cast(pa.string())
        cleaned = _blank_to_null(source)
        if type_name == "string":
            # Strings keep their whitespace; only blank values become null.
            value = pc.if_else(pc.is_null(cleaned), pa.scalar(None, pa.string()), source)
        else:
            value = _coerce(cleaned, type_name)
        failed = pc.and_(pc.is_valid(cleaned), pc.is_null(value))
        if pc.any(failed).as_py():
            shown = pc.utf8_slice_codeunits(cleaned, 0, _SHOWN)
            reason = pc.binary_join_element_wise(
                f"type: {name}='", shown, f"' is not {type_name}", ""
            )
            reasons.append(pc.if_else(failed, reason, pa.scalar(None, pa.string())))
            bad_cols.append(pc.if_else(failed, name, pa.scalar(None, pa.string())))
        columns.append(value)
    bad = _join(bad_cols, ",", length)
    bad = pc.if_else(pc.equal(bad, ""), "", pc.binary_join_element_wise(",", bad, ",", ""))
    columns += [
        pa.array([file] * length, pa.string()),
        records.cast(pa.int64()),
        _join(reasons, "; ", length),
        bad,
    ]
    return pa.RecordBatch.from_arrays(columns, schema=output_schema(types))


# --- CSV --------------------------------------------------------------------------------


def _open(path: str) -> Any:
    from tierflow.storage import arrow_location

    filesystem, inner = arrow_location(path)
    return (filesystem or pafs.LocalFileSystem()).open_input_stream(inner)


def _csv_header(path: str, delimiter: str) -> list[str]:
    with _open(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        try:
            return next(csv.reader(text, delimiter=delimiter))
        except StopIteration:
            return []


def _extra_reasons(raw: Mapping[str, pa.Array], extras: Sequence[str]) -> list[pa.Array]:
    reasons = []
    for name in extras:
        values = _blank_to_null(raw[name].cast(pa.string()))
        present = pc.is_valid(values)
        shown = pc.utf8_slice_codeunits(values, 0, _SHOWN)
        text = pc.binary_join_element_wise(f"extra column: {name}='", shown, "'", "")
        reasons.append(pc.if_else(present, text, pa.scalar(None, pa.string())))
    return reasons


def _malformed_batch(
    rows: list[tuple[int, str]], types: Mapping[str, str], file: str
) -> pa.RecordBatch:
    records = pa.array([r for r, _ in rows], pa.int64())
    errors = pa.array([text for _, text in rows], pa.string())
    return typed_batch({}, types, file=file, records=records, errors=errors)


def decode_csv(
    path: str,
    types: Mapping[str, str],
    *,
    extra_columns: ExtraPolicy = "quarantine",
    options: CsvOptions = CsvOptions(),
    block_size: int = 1 << 22,
) -> Iterator[pa.RecordBatch]:
    """Yield typed batches of one CSV file; malformed records come as their own rows."""
    delimiter = options.delimiter
    header = _csv_header(path, delimiter)
    if not header:
        return
    extras = [c for c in header if c not in types]
    if extras and extra_columns == "error":
        raise DecodeError(f"{path}: columns not declared in the contract: {', '.join(extras)}")
    missing = [c for c in types if c not in header]
    schema_error = f"schema: file lacks column(s) {', '.join(missing)}" if missing else ""

    malformed: list[tuple[int, str]] = []

    def on_invalid(row: Any) -> str:
        # With use_threads=False the number is the record's position, header = 1.
        text = (row.text or "")[:200]
        malformed.append(
            (
                int(row.number) - 1,
                f"parse: expected {row.expected_columns} fields, got {row.actual_columns}: {text}",
            )
        )
        return "skip"

    reader = pacsv.open_csv(
        _open(path),
        read_options=pacsv.ReadOptions(use_threads=False, block_size=block_size),
        parse_options=pacsv.ParseOptions(
            delimiter=delimiter, newlines_in_values=True, invalid_row_handler=on_invalid
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in header},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    last = 0  # last record number handed out
    for batch in reader:
        if batch.num_rows == 0:
            continue
        # The invalid rows of this block were reported while it was parsed: valid rows
        # take the record numbers that are left, in order.
        taken = {r for r, _ in malformed}
        numbers: list[int] = []
        candidate = last
        while len(numbers) < batch.num_rows:
            candidate += 1
            if candidate not in taken:
                numbers.append(candidate)
        last = candidate
        raw = {name: batch.column(name) for name in header}
        if options.null_values:
            tokens = pa.array(options.null_values, pa.string())
            raw = {
                name: pc.if_else(pc.is_in(col, value_set=tokens), "", col)
                for name, col in raw.items()
            }
        length = batch.num_rows
        reasons = _extra_reasons(raw, extras) if extra_columns == "quarantine" else []
        if schema_error:
            reasons.append(pa.array([schema_error] * length, pa.string()))
        yield typed_batch(
            raw,
            types,
            file=path,
            records=pa.array(numbers, pa.int64()),
            errors=_join(reasons, "; ", length),
        )
        done = [m for m in malformed if m[0] <= last]
        if done:
            yield _malformed_batch(done, types, path)
            malformed = [m for m in malformed if m[0] > last]
    if malformed:
        yield _malformed_batch(malformed, types, path)


# --- JSON lines -------------------------------------------------------------------------


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _json_object(text: str, what: str) -> tuple[dict[str, Any], str]:
    """Parse one JSON object: the object and "", or {} and a ``parse:`` reason."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return {}, f"parse: invalid JSON ({exc.msg} at column {exc.colno})"
    except RecursionError:
        return {}, "parse: invalid JSON (nested too deeply)"
    if not isinstance(obj, dict):
        return {}, f"parse: {what} is a JSON {type(obj).__name__}, not an object"
    if _SURROGATE_ESCAPE.search(text):
        # "\ud800" alone decodes to no character: no column could hold it.
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return {}, "parse: invalid JSON (an escaped lone surrogate is no character)"
    return obj, ""


def decode_json_messages(
    payloads: Sequence[bytes | None], types: Mapping[str, str], *, max_bytes: int
) -> pa.RecordBatch:
    """Decode message payloads (one JSON object each) into one typed batch, in order.

    The semantics are those of JSON lines, except that undeclared fields are ignored (a
    topic's events carry more than one view reads) and ``_tf_record`` is the message's
    position in ``payloads``. A payload that is empty, over ``max_bytes``, not UTF-8 or
    not a JSON object comes out with null values and a ``parse:`` reason.

    A batch of well-formed payloads whose values have their columns' JSON types is parsed
    by Arrow's JSON reader in one pass; anything else (one bad payload is enough) takes
    the message-by-message path. Both give the same batch (a unit test compares them).
    """
    fast = _json_messages_fast(payloads, types, max_bytes)
    if fast is not None:
        return fast
    return json_messages_one_by_one(payloads, types, max_bytes=max_bytes)


# The JSON type each column's values must have for the one-pass reader; their text is
# then judged by the same coercion as the message-by-message path's.
_JSON_TYPES = {
    "string": pa.string(),
    "timestamp": pa.string(),
    "date": pa.string(),
    "int32": pa.int64(),
    "int64": pa.int64(),
    "float32": pa.float64(),
    "float64": pa.float64(),
    "boolean": pa.bool_(),
}


def _json_messages_fast(
    payloads: Sequence[bytes | None], types: Mapping[str, str], max_bytes: int
) -> pa.RecordBatch | None:
    """The batch in one pass of Arrow's JSON reader, or None where it cannot be trusted."""
    import pyarrow.json as pj

    count = len(payloads)
    if count == 0 or not all(p and p[:1] == b"{" for p in payloads):
        return None  # empty or not an object: the reasons come from the other path
    if max(len(p) for p in payloads) > max_bytes:  # type: ignore[arg-type]
        return None
    joined = b"\n".join(payloads)  # type: ignore[arg-type]
    # One line per payload: a payload with a line break of its own could shift every
    # later payload's values onto the wrong message.
    if joined.count(b"\n") != count - 1 or b"\r" in joined:
        return None
    try:
        joined.decode("utf-8")
    except UnicodeDecodeError:
        return None  # its reason ("parse: not UTF-8") comes from the other path
    schema = pa.schema([(n, _JSON_TYPES[t]) for n, t in types.items()])
    try:
        table = pj.read_json(
            io.BytesIO(joined),
            read_options=pj.ReadOptions(use_threads=False, block_size=len(joined) + 1),
            parse_options=pj.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
    except (pa.ArrowException, UnicodeDecodeError, ValueError):
        return None  # malformed somewhere, or a value of another JSON type
    if table.num_rows != count:
        return None  # a line held two objects: rows would not match messages
    try:
        table.validate(full=True)  # escapes that decode to no valid UTF-8, for one
    except pa.ArrowInvalid:
        return None
    return typed_batch(
        {n: table.column(n).combine_chunks() for n in types},
        types,
        file="",
        records=pa.array(range(count), pa.int64()),
        errors=pa.array([""] * count, pa.string()),
    )


def json_messages_one_by_one(
    payloads: Sequence[bytes | None], types: Mapping[str, str], *, max_bytes: int
) -> pa.RecordBatch:
    """:func:`decode_json_messages`, one ``json.loads`` per payload."""
    names = list(types)
    buffer: dict[str, list[str | None]] = {n: [] for n in names}
    errors: list[str] = []
    for payload in payloads:
        row: dict[str, Any] = {}
        if payload is None or len(payload) == 0:
            problem = "parse: empty message"
        elif len(payload) > max_bytes:
            problem = f"parse: message of {len(payload)} bytes is over the {max_bytes} limit"
        else:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError as exc:
                text, problem = "", f"parse: not UTF-8 (byte {exc.start})"
            else:
                row, problem = _json_object(text, "message")
        for name in names:
            buffer[name].append(_as_text(row.get(name)))
        errors.append(problem)
    return typed_batch(
        {n: pa.array(v, pa.string()) for n, v in buffer.items()},
        types,
        file="",
        records=pa.array(range(len(errors)), pa.int64()),
        errors=pa.array(errors, pa.string()),
    )


def decode_jsonl(
    path: str,
    types: Mapping[str, str],
    *,
    extra_columns: ExtraPolicy = "quarantine",
    batch_rows: int = _BATCH_ROWS,
) -> Iterator[pa.RecordBatch]:
    """Yield typed batches of one JSON-lines file; bad lines come as rows with a reason."""
    names = list(types)
    with _open(path) as raw:
        lines = io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
        buffer: dict[str, list[str | None]] = {n: [] for n in names}
        records: list[int] = []
        errors: list[str] = []

        def flush() -> pa.RecordBatch:
            batch = typed_batch(
                {n: pa.array(v, pa.string()) for n, v in buffer.items()},
                types,
                file=path,
                records=pa.array(records, pa.int64()),
                errors=pa.array(errors, pa.string()),
            )
            for values in buffer.values():
                values.clear()
            records.clear()
            errors.clear()
            return batch

        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            row, problem = _json_object(line, "line")
            extras = [k for k in row if k not in types and row[k] is not None]
            if extras:
                if extra_columns == "error":
                    raise DecodeError(f"{path}:{number}: undeclared column(s) {', '.join(extras)}")
                if extra_columns == "quarantine":
                    shown = "; ".join(
                        f"extra column: {k}='{(_as_text(row[k]) or '')[:_SHOWN]}'" for k in extras
                    )
                    problem = f"{problem}; {shown}" if problem else shown
            for name in names:
                buffer[name].append(_as_text(row.get(name)))
            records.append(number)
            errors.append(problem)
            if len(records) >= batch_rows:
                yield flush()
        if records:
            yield flush()


def decode_file(
    path: str,
    fmt: str,
    types: Mapping[str, str],
    *,
    extra_columns: ExtraPolicy = "quarantine",
    csv: CsvOptions = CsvOptions(),
) -> Iterator[pa.RecordBatch]:
    """Decode one CSV or JSON-lines file (see the module docstring for the rules)."""
    if fmt == "csv":
        return decode_csv(path, types, extra_columns=extra_columns, options=csv)
    if fmt == "jsonl":
        return decode_jsonl(path, types, extra_columns=extra_columns)
    raise DecodeError(f"not a text format: {fmt!r}")


def decode_to_table(
    paths: Sequence[str],
    fmt: str,
    types: Mapping[str, str],
    *,
    extra_columns: ExtraPolicy = "quarantine",
    csv: CsvOptions = CsvOptions(),
) -> pa.Table:
    """Decode several files into one table (in file order)."""
    batches = [
        batch
        for path in paths
        for batch in decode_file(path, fmt, types, extra_columns=extra_columns, csv=csv)
    ]
    return pa.Table.from_batches(batches, schema=output_schema(types))
