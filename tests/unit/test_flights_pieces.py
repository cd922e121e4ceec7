"""Pure pieces of the flights pipeline and the demo: dates, NA tokens, operators, metrics."""

from __future__ import annotations

import random
from datetime import date
from pathlib import Path

import narwhals as nw
import polars as pl
import pyarrow as pa
import pytest
from jobs.transforms.flights import days_since_epoch, minutes_of_day

from tierflow.config.training import TrainingConfig
from tierflow.demo.evaluation import RouteBaseline, auc, best_f1_threshold, precision_recall
from tierflow.io.textdecode import CsvOptions, decode_to_table
from tierflow.jobs.expressions import to_expr
from tierflow.train.ingest import labelled_rows


def test_days_since_epoch_matches_the_calendar():
    rng = random.Random(3)
    days = [date(1970, 1, 1)] + [
        date.fromordinal(rng.randrange(719163, 767011)) for _ in range(2000)
    ]
    days += [date(2000, 2, 29), date(2100, 3, 1), date(2013, 12, 31), date(2016, 2, 29)]
    frame = nw.from_native(
        pl.DataFrame(
            {
                "y": [d.year for d in days],
                "m": [d.month for d in days],
                "d": [d.day for d in days],
            }
        ).lazy()
    )
    got = frame.select(days_since_epoch(nw.col("y"), nw.col("m"), nw.col("d")).alias("n")).collect()
    epoch = date(1970, 1, 1).toordinal()
    assert got["n"].to_list() == [d.toordinal() - epoch for d in days]


def test_minutes_of_day():
    frame = nw.from_native(pl.DataFrame({"t": [0, 1, 59, 100, 1435, 2359, 2400]}).lazy())
    got = frame.select(minutes_of_day(nw.col("t")).alias("m")).collect()["m"].to_list()
    assert got == [0, 1, 59, 60, 875, 1439, 1440]


def test_csv_null_tokens_are_null_for_every_type(tmp_path: Path):
    path = tmp_path / "f.csv"
    path.write_text("a,b,c\n1,NA,x\nNA,2.5,NA\n3,,NAN\n")
    types = {"a": "int64", "b": "float64", "c": "string"}
    table = decode_to_table([str(path)], "csv", types, csv=CsvOptions(null_values=("NA",)))
    assert table["a"].to_pylist() == [1, None, 3]
    assert table["b"].to_pylist() == [None, 2.5, None]
    assert table["c"].to_pylist() == ["x", None, "NAN"]  # exact matches only
    assert table["_tf_error"].to_pylist() == ["", "", ""]
    plain = decode_to_table([str(path)], "csv", types)
    assert plain["_tf_error"].to_pylist()[1].startswith("type: a='NA'")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a % 3", [2, 1, 0, None]),  # Python's modulo: the sign of the divisor
        ("a // 2", [-4, 2, 0, None]),  # floor division
        ("a % -3", [-1, -2, 0, None]),
    ],
)
def test_modulo_and_floor_division_follow_python(text, expected):
    frame = nw.from_native(pl.DataFrame({"a": [-7, 4, 0, None]}).lazy())
    got = frame.select(to_expr(text, ["a"]).alias("x")).collect()["x"].to_list()
    assert got == expected


def test_auc_equals_the_pairwise_definition_with_ties():
    rng = random.Random(5)
    scores = [rng.choice([0.1, 0.2, 0.3, 0.4, 0.5]) for _ in range(300)]
    labels = [1.0 if rng.random() < s + 0.2 else 0.0 for s in scores]
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    pairs = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    assert auc(scores, labels) == pytest.approx(pairs / (len(pos) * len(neg)), abs=1e-12)


def test_precision_recall_and_threshold():
    scores = [0.9, 0.8, 0.3, 0.2, 0.1]
    labels = [1, 0, 1, 0, 0]
    assert precision_recall(scores, labels, 0.5) == (0.5, 0.5)
    assert precision_recall(scores, labels, 0.25) == (2 / 3, 1.0)
    assert best_f1_threshold(scores, labels) <= 0.3


def test_route_baseline_shrinks_small_routes_towards_the_carrier():
    rows = [{"carrier": "AA", "origin": "JFK", "dest": "LAX", "y": i < 50} for i in range(100)]
    rows += [{"carrier": "AA", "origin": "JFK", "dest": "BOS", "y": True}]
    rows += [{"carrier": "UA", "origin": "EWR", "dest": "SFO", "y": False} for _ in range(99)]
    base = RouteBaseline.fit(rows, "y")
    assert base.overall == pytest.approx(51 / 200)
    aa = base.carrier["AA"]
    assert aa == pytest.approx((51 + 20 * base.overall) / (101 + 20))
    bos = base.route[("AA", "JFK", "BOS")]
    assert aa < bos < 1.0  # one delayed flight: pulled far towards the carrier's rate
    unknown = base.score(
        [
            {"carrier": "ZZ", "origin": "X", "dest": "Y"},
            {"carrier": "UA", "origin": "X", "dest": "Y"},
        ]
    )
    assert unknown == [base.overall, base.carrier["UA"]]


def _config(**changes):
    doc = {
        "name": "t",
        "snapshot": {"path": "s"},
        "features": ["x"],
        "label": "y",
        "model": {"name": "mlp"},
        **changes,
    }
    return TrainingConfig.model_validate(doc)


def test_split_column_decides_the_split():
    table = pa.table(
        {"x": [1.0, 2.0, 3.0, 4.0], "y": [0, 1, 0, 1], "split": ["train", "test", "train", "valid"]}
    )
    parts = labelled_rows(table, 0, _config(split_column="split"))
    assert {k: v["x"].to_pylist() for k, v in parts.items()} == {
        "train": [1.0, 3.0],
        "valid": [4.0],
        "test": [2.0],
    }
    bad = table.set_column(2, "split", pa.array(["train", "holdout", "train", "valid"]))
    with pytest.raises(ValueError, match="holdout"):
        labelled_rows(bad, 0, _config(split_column="split"))
    with pytest.raises(ValueError, match="also a feature"):
        _config(split_column="x")
