"""Population stability: bins fitted on training, shares, and the index."""

from __future__ import annotations

import math

from tierflow.train.drift import (
    MISSING,
    OTHER,
    categorical_shares,
    numeric_bins,
    numeric_shares,
    psi,
)


def test_the_same_distribution_has_no_drift_and_a_shift_has_much() -> None:
    before = [float(i % 100) for i in range(10_000)]
    edges = numeric_bins(before)
    assert edges == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0]
    names, expected = numeric_shares(before, edges)
    assert names[0] == "<= 10" and names[-1] == MISSING and len(names) == 11
    assert math.isclose(sum(expected), 1.0)
    assert psi(expected, numeric_shares(before, edges)[1]) == 0.0
    shifted = numeric_shares([v + 50 for v in before], edges)[1]
    assert psi(expected, shifted) > 2.0


def test_missing_values_and_unseen_categories_have_bins_of_their_own() -> None:
    names, shares = categorical_shares(["x", "y", None, "z", "x"], ["x", "y"])
    assert names == ["x", "y", OTHER, MISSING]
    assert shares == [0.4, 0.2, 0.2, 0.2]
    _, numbers = numeric_shares([1.0, None, float("nan"), 3.0], [2.0])
    assert numbers == [0.25, 0.25, 0.5]


def test_ties_merge_bins_and_an_empty_bin_does_not_make_it_infinite() -> None:
    assert numeric_bins([1.0] * 50 + [2.0] * 50) == [1.0, 2.0]
    assert numeric_bins([None, float("nan")]) == []
    assert math.isfinite(psi([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]))
