"""`tierflow monitor consistency`'s comparison and report, on values given here."""

from __future__ import annotations

import json
import math

from tierflow.train.consistency import FeatureCheck, as_json, quantiles, report, same
from tierflow.train.served import _coerce


def test_values_are_the_same_within_the_tolerance_and_when_both_are_missing() -> None:
    assert same(1.0, 1.0 + 1e-12, 1e-9) and same(0, 0.0, 1e-9) and same(None, None, 1e-9)
    assert same(math.nan, math.nan, 1e-9) and same("UA", "UA", 1e-9)
    assert not same(1.0, 1.001, 1e-9) and not same(None, 0.0, 1e-9) and not same(3, None, 1e-9)
    assert not same(math.nan, 1.0, 1e-9) and not same("UA", "AA", 1e-9)
    assert same(1e6, 1e6 + 1e-4, 1e-9)  # relative: 1e-10 of the value


def test_the_report_flags_the_feature_and_gives_the_differences() -> None:
    bad = FeatureCheck("v", "v__mean", compared=10, mismatches=4, not_served=2,
                       differences=[0.5, -0.25, 1.0, 2.0], flagged=True)  # fmt: skip
    good = FeatureCheck("v", "v__count", compared=10)
    assert bad.rate == 0.4 and good.rate == 0.0
    assert quantiles(bad.differences) == {"p50": 1.0, "p90": 2.0, "p99": 2.0, "max": 2.0}
    numbers = json.loads(as_json([bad, good], model="m", threshold=0.0, rows=12))
    assert numbers["flagged"] == ["v__mean"]
    assert numbers["features"]["v__mean"]["rate"] == 0.4
    assert numbers["features"]["v__count"]["abs_difference"] == {}
    page = report([bad, good], model="m", threshold=0.0, rows=12)
    assert "v__mean: 4 of 10 rows differ" in page and "<svg" in page and "served - batch" in page
    assert "Mismatch share over 0: v__mean" in page


def test_served_values_take_their_column_s_type() -> None:
    assert _coerce(3, "float") == 3.0 and isinstance(_coerce(3, "float"), float)
    assert _coerce(7, "string") == "7" and _coerce(None, "string") is None
    assert _coerce(5.0, "int") == 5 and _coerce(True, "other") is True


def test_the_vectorised_comparison_is_same_value_by_value() -> None:
    import pyarrow as pa

    from tierflow.train.consistency import mismatches

    pairs = [(1.0, 1.0 + 1e-12), (0.0, 0.0), (None, None), (math.nan, math.nan),
             (1.0, 1.001), (None, 0.0), (3.0, None), (math.nan, 1.0), (2.0, math.nan),
             (1e6, 1e6 + 1e-4), (-5.0, -5.0), (math.nan, None)]  # fmt: skip
    served = pa.chunked_array([pa.array([a for a, _ in pairs[:5]], pa.float64()),
                               pa.array([a for a, _ in pairs[5:]], pa.float64())])  # fmt: skip
    batch = pa.array([b for _, b in pairs], pa.float64())
    want = [not same(a, b, 1e-9) for a, b in pairs]
    assert mismatches(served, batch, 1e-9).to_pylist() == want
    # Integers against floats compare as numbers; strings by equality.
    counts = mismatches(pa.array([3, 4, None], pa.int64()), pa.array([3.0, 5.0, None]), 1e-9)
    assert counts.to_pylist() == [False, True, False]
    names = mismatches(pa.array(["UA", "AA", None, "DL"]), pa.array(["UA", "UA", None, None]), 0)
    assert names.to_pylist() == [False, True, False, True]
