from __future__ import annotations

import narwhals as nw
import polars as pl
import pytest

from tierflow.jobs.expressions import ExpressionError, referenced_columns, to_expr

COLS = {"a", "b", "s"}
FRAME = pl.DataFrame(
    {"a": [1, 2, None, 4], "b": [1.5, 0.0, 2.0, -1.0], "s": ["x", "yy", "z", None]}
)


def evaluate(source: str) -> list:
    frame = nw.from_native(FRAME)
    return frame.select(to_expr(source, COLS).alias("r"))["r"].to_list()


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("a > 1", [False, True, None, True]),
        ("a * 2 + b >= 4", [False, True, None, True]),
        ("1 < a < 4", [False, True, None, False]),
        ("s in ('x', 'z')", [True, False, True, None]),
        ("s not in ('x',)", [False, True, True, None]),
        ("a is None", [False, False, True, False]),
        ("a is not None and b > 0", [True, False, False, False]),
        ("not (b > 0) or a == 1", [True, True, None, True]),
        ("abs(b) == 1", [False, False, False, True]),
        ("len(s) == 2", [False, True, False, None]),
        ("startswith(s, 'y')", [False, True, False, None]),
        ("upper(s) == 'X'", [True, False, False, None]),
        ("-a < 0", [True, True, None, True]),
        ("a % 2 == 0", [False, True, None, True]),
    ],
)
def test_expressions_evaluate_with_sql_null_semantics(source, expected):
    assert evaluate(source) == expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("open('x')", "unsupported function"),
        ("a.real > 1", "unsupported syntax"),
        ("q > 1", "unknown column `q`"),
        ("a ** 2 > 1", "unsupported operator"),
        ("a in b", "needs a tuple of literals"),
        ("a is 1", "compares with None only"),
        ("a >", "invalid check expression"),
        ("[a for a in b]", "unsupported syntax"),
    ],
)
def test_everything_else_is_refused(source, message):
    with pytest.raises(ExpressionError, match=message):
        to_expr(source, COLS)


def test_referenced_columns():
    assert referenced_columns("len(s) > a and b is None") == {"s", "a", "b"}
