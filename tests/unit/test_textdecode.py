"""The shared text decoder: every bad row kept, with its reason and record number."""

from __future__ import annotations

import random
from datetime import date, datetime, timezone

import pyarrow as pa
import pytest

from tierflow.io.textdecode import DecodeError, decode_csv, decode_to_table

TYPES = {
    "id": "int64",
    "name": "string",
    "amount": "float64",
    "ts": "timestamp",
    "ok": "boolean",
    "d": "date",
}
UTC = timezone.utc


def rows_of(table: pa.Table) -> dict[int, dict]:
    return {r["_tf_record"]: r for r in table.to_pylist()}


def test_csv_values_and_reasons(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text(
        "id,name,amount,ts,ok,d,extra\n"
        "1,a,10.5,2024-01-01T10:00:00,true,2024-01-02,\n"
        '2,"multi\nline",x,2024-01-01 10:00:00.250,0,2024-13-01,\n'
        "3,c\n"
        "4,d,40,2024-01-01T10:00:00+02:00,yes,,boom\n"
        " , ,1e3,,,,\n"
    )
    rows = rows_of(decode_to_table([str(path)], "csv", TYPES))
    assert sorted(rows) == [1, 2, 3, 4, 5]
    assert rows[1] | {"_tf_file": None} == {
        "id": 1, "name": "a", "amount": 10.5, "ts": datetime(2024, 1, 1, 10, tzinfo=UTC),
        "ok": True, "d": date(2024, 1, 2), "_tf_file": None, "_tf_record": 1, "_tf_error": "",
        "_tf_bad_cols": "",
    }  # fmt: skip
    assert rows[1]["ts"].utcoffset().total_seconds() == 0
    assert rows[2]["name"] == "multi\nline"
    assert rows[2]["ts"] == datetime(2024, 1, 1, 10, 0, 0, 250000, tzinfo=UTC)
    assert (
        rows[2]["_tf_error"] == "type: amount='x' is not float64; type: d='2024-13-01' is not date"
    )
    assert rows[2]["_tf_bad_cols"] == ",amount,d,"
    assert rows[3]["_tf_error"] == "parse: expected 7 fields, got 2: 3,c"
    assert rows[3]["id"] is None
    assert rows[4]["ts"] == datetime(2024, 1, 1, 8, tzinfo=UTC)  # +02:00 converted to UTC
    assert rows[4]["_tf_error"] == "extra column: extra='boom'; type: ok='yes' is not boolean"
    assert rows[5]["id"] is None and rows[5]["name"] is None  # blanks are null
    assert rows[5]["amount"] == 1000.0
    assert rows[5]["_tf_error"] == ""


def test_csv_extra_column_policies(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("id,zzz\n1,\n2,x\n")
    kept = rows_of(decode_to_table([str(path)], "csv", {"id": "int64"}, extra_columns="drop"))
    assert [r["_tf_error"] for r in kept.values()] == ["", ""]
    flagged = rows_of(decode_to_table([str(path)], "csv", {"id": "int64"}))
    assert [r["_tf_error"] for r in flagged.values()] == ["", "extra column: zzz='x'"]
    with pytest.raises(DecodeError, match="zzz"):
        decode_to_table([str(path)], "csv", {"id": "int64"}, extra_columns="error")


def test_csv_missing_column_quarantines_the_file(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id\n1\n")
    (row,) = decode_to_table([str(path)], "csv", {"id": "int64", "name": "string"}).to_pylist()
    assert row["_tf_error"] == "schema: file lacks column(s) name"


def test_csv_record_numbers_across_blocks(tmp_path):
    rng = random.Random(3)
    lines, bad = ["id,name"], []
    for i in range(1, 20_001):
        if rng.random() < 0.01:
            lines.append(f"{i},x,y")
            bad.append(i)
        else:
            lines.append(f"{i},n{i}")
    path = tmp_path / "big.csv"
    path.write_text("\n".join(lines) + "\n")
    batches = list(decode_csv(str(path), {"id": "int64", "name": "string"}, block_size=4096))
    assert len(batches) > 10
    rows = pa.Table.from_batches(batches).to_pylist()
    good = [r for r in rows if not r["_tf_error"]]
    assert all(r["id"] == r["_tf_record"] for r in good)
    assert sorted(r["_tf_record"] for r in rows if r["_tf_error"]) == bad
    assert len(rows) == 20_000


def test_jsonl_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"id":1,"name":"a","amount":1.5,"ts":"2024-01-01T00:00:00Z","ok":true}\n'
        "\n"
        "not json\n"
        "[1,2]\n"
        '{"id":"2","name":5,"amount":"abc","zzz":1}\n'
        '{"id":99999999999999999999, "nested": null}\n'
    )
    rows = rows_of(decode_to_table([str(path)], "jsonl", TYPES))
    assert sorted(rows) == [1, 3, 4, 5, 6]  # line numbers; the blank line is skipped
    assert rows[1]["ts"] == datetime(2024, 1, 1, tzinfo=UTC) and rows[1]["ok"] is True
    assert rows[3]["_tf_error"].startswith("parse: invalid JSON")
    assert rows[4]["_tf_error"] == "parse: line is a JSON list, not an object"
    assert rows[5]["id"] == 2 and rows[5]["name"] == "5"
    assert rows[5]["_tf_error"] == "extra column: zzz='1'; type: amount='abc' is not float64"
    assert rows[6]["_tf_error"] == "type: id='99999999999999999999' is not int64"


@pytest.mark.parametrize(
    ("type_name", "text", "value"),
    [
        ("int32", "2147483647", 2147483647),
        ("int32", "2147483648", None),
        ("int64", "+7", 7),
        ("float64", ".5", 0.5),
        ("float64", "nan", None),
        ("boolean", "FALSE", False),
        ("date", "2024-02-29", date(2024, 2, 29)),
        ("date", "2023-02-29", None),
        ("timestamp", "2024-01-01", datetime(2024, 1, 1, tzinfo=UTC)),
        ("timestamp", "yesterday", None),
    ],
)
def test_value_parsing(tmp_path, type_name, text, value):
    path = tmp_path / "v.csv"
    path.write_text(f"v\n{text}\n")
    (row,) = decode_to_table([str(path)], "csv", {"v": type_name}).to_pylist()
    assert row["v"] == value
    assert (row["_tf_error"] == "") == (value is not None)


def test_floats_that_overflow_are_type_errors() -> None:
    from tierflow.io.textdecode import decode_json_messages

    batch = decode_json_messages(
        [b'{"x": "1e999"}', b'{"x": -1e400}', b'{"x": "3.5e38"}', b'{"x": 2.5}'],
        {"x": "float64", "y": "float32"},
        max_bytes=1000,
    )
    assert batch.column("x").to_pylist() == [None, None, 3.5e38, 2.5]
    errors = batch.column("_tf_error").to_pylist()
    assert errors[0] == "type: x='1e999' is not float64"
    assert errors[1] == "type: x='-inf' is not float64"
    assert errors[2:] == ["", ""]
    narrow = decode_json_messages([b'{"y": "3.5e38"}'], {"y": "float32"}, max_bytes=1000)
    assert narrow.column("y").to_pylist() == [None]
    assert narrow.column("_tf_error").to_pylist()[0] == "type: y='3.5e38' is not float32"
