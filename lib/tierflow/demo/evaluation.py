"""The trained model against a non-ML baseline, on the snapshot's time-based splits.

The baseline is what an analyst would do without a model: each route's historical
share of delayed arrivals (carrier, origin, destination) on the training months,
shrunk towards the carrier's share when the route has few flights, and the carrier's
towards the overall share. Both are scored with ROC AUC, log loss, and precision and
recall at a threshold chosen on the validation split (the one with the best F1), so
neither gets to tune on the test split.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SHRINK = 20.0  # pseudo-flights of the wider rate added to each group's own


def auc(scores: Sequence[float], labels: Sequence[float]) -> float:
    """ROC AUC by ranks (ties share their mean rank)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64) > 0.5
    positives, negatives = int(y.sum()), int((~y).sum())
    if not positives or not negatives:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_scores = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def logloss(scores: Sequence[float], labels: Sequence[float]) -> float:
    """Mean binary cross-entropy (scores clipped to [1e-7, 1 - 1e-7])."""
    p = np.clip(np.asarray(scores, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def precision_recall(
    scores: Sequence[float], labels: Sequence[float], threshold: float
) -> tuple[float, float]:
    """Precision and recall of ``score >= threshold``."""
    predicted = np.asarray(scores, dtype=np.float64) >= threshold
    y = np.asarray(labels, dtype=np.float64) > 0.5
    hits = int((predicted & y).sum())
    precision = hits / int(predicted.sum()) if predicted.any() else 0.0
    recall = hits / int(y.sum()) if y.any() else 0.0
    return precision, recall


def best_f1_threshold(scores: Sequence[float], labels: Sequence[float]) -> float:
    """The threshold (among 99 quantiles of the scores) with the best F1."""
    s = np.asarray(scores, dtype=np.float64)
    best, chosen = -1.0, 0.5
    for t in np.unique(np.quantile(s, np.linspace(0.01, 0.99, 99))):
        p, r = precision_recall(s.tolist(), labels, float(t))
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        if f1 > best:
            best, chosen = f1, float(t)
    return chosen


@dataclass(frozen=True)
class RouteBaseline:
    """Historical delay rates per route, carrier and overall, fitted on the training split."""

    overall: float
    carrier: dict[str, float]
    route: dict[tuple[str, str, str], float]

    @classmethod
    def fit(cls, rows: Sequence[Mapping[str, Any]], label: str) -> RouteBaseline:
        """Shrunk rates from training rows with ``carrier``, ``origin``, ``dest``."""
        total = len(rows)
        overall = sum(1.0 for r in rows if r[label]) / total if total else 0.0
        by_carrier: dict[str, list[float]] = {}
        by_route: dict[tuple[str, str, str], list[float]] = {}
        for r in rows:
            hit = 1.0 if r[label] else 0.0
            counts = by_carrier.setdefault(r["carrier"], [0.0, 0.0])
            counts[0] += hit
            counts[1] += 1.0
            counts = by_route.setdefault((r["carrier"], r["origin"], r["dest"]), [0.0, 0.0])
            counts[0] += hit
            counts[1] += 1.0
        carrier = {k: (h + SHRINK * overall) / (n + SHRINK) for k, (h, n) in by_carrier.items()}
        route = {k: (h + SHRINK * carrier[k[0]]) / (n + SHRINK) for k, (h, n) in by_route.items()}
        return cls(overall, carrier, route)

    def score(self, rows: Sequence[Mapping[str, Any]]) -> list[float]:
        """Each row's route rate, else its carrier's, else the overall rate."""
        out = []
        for r in rows:
            key = (r["carrier"], r["origin"], r["dest"])
            out.append(self.route.get(key, self.carrier.get(r["carrier"], self.overall)))
        return out


def scores_report(
    valid: tuple[Sequence[float], Sequence[float]], test: tuple[Sequence[float], Sequence[float]]
) -> dict[str, float]:
    """AUC, log loss, precision and recall on test at the best-F1 threshold on valid."""
    threshold = best_f1_threshold(*valid)
    precision, recall = precision_recall(*test, threshold)
    return {
        "auc": auc(*test),
        "logloss": logloss(*test),
        "threshold": threshold,
        "precision": precision,
        "recall": recall,
        "valid_auc": auc(*valid),
        "valid_logloss": logloss(*valid),
    }


def evaluate(snapshot: str, version: int, predictor: Any) -> dict[str, Any]:
    """The model (a :class:`~tierflow.train.predict.Predictor`) and the baseline, side by side.

    Reads the snapshot at ``version``, splits it by its split column, and scores the
    valid and test rows with both.
    """
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    config = predictor.config
    split = config.split_column or "split"
    wanted = list(dict.fromkeys([*config.features, config.label, split,
                                 "carrier", "origin", "dest"]))  # fmt: skip
    table = DeltaTable(snapshot, version=version).to_pyarrow_table(columns=wanted)
    table = table.filter(pc.is_valid(table[config.label]))
    parts = {
        name: table.filter(pc.equal(table[split], name)) for name in ("train", "valid", "test")
    }
    baseline = RouteBaseline.fit(
        parts["train"].select(["carrier", "origin", "dest", config.label]).to_pylist(),
        config.label,
    )
    model_scores, base_scores, labels = {}, {}, {}
    for name in ("valid", "test"):
        part = parts[name]
        labels[name] = [1.0 if v else 0.0 for v in part[config.label].to_pylist()]
        model_scores[name] = predictor.predict_table(part)
        base_scores[name] = baseline.score(part.select(["carrier", "origin", "dest"]).to_pylist())
    model = scores_report(
        (model_scores["valid"], labels["valid"]), (model_scores["test"], labels["test"])
    )
    base = scores_report(
        (base_scores["valid"], labels["valid"]), (base_scores["test"], labels["test"])
    )
    test_rate = sum(labels["test"]) / len(labels["test"]) if labels["test"] else math.nan
    return {
        "rows": {name: part.num_rows for name, part in parts.items()},
        "test_delayed_share": test_rate,
        "model": model,
        "baseline": base,
        "model_beats_baseline": model["auc"] > base["auc"] and model["logloss"] < base["logloss"],
    }
