"""`/metrics` of `tierflow serve`: per model and version, in a registry of each app's own."""

from __future__ import annotations

from tierflow.serving import ServingMetrics


def test_counts_rows_and_latency_per_model_and_version() -> None:
    metrics = ServingMetrics()
    metrics.observe("m", "1", 200, rows=3, seconds=0.004)
    metrics.observe("m", "1", 200, rows=2, seconds=0.2)
    metrics.observe("m", "2", 400, rows=0, seconds=0.0001)
    metrics.feature_requests.labels("200").inc()
    text = metrics.text().decode()
    assert 'tierflow_predict_requests_total{model="m",status="200",version="1"} 2.0' in text
    assert 'tierflow_predict_requests_total{model="m",status="400",version="2"} 1.0' in text
    assert 'tierflow_predict_rows_total{model="m",version="1"} 5.0' in text
    # Cumulative buckets: 4 ms falls in le=0.005, 200 ms in le=0.25.
    assert 'tierflow_predict_seconds_bucket{le="0.0025",model="m",version="1"} 0.0' in text
    assert 'tierflow_predict_seconds_bucket{le="0.005",model="m",version="1"} 1.0' in text
    assert 'tierflow_predict_seconds_bucket{le="0.25",model="m",version="1"} 2.0' in text
    assert 'tierflow_predict_seconds_count{model="m",version="1"} 2.0' in text
    assert 'tierflow_feature_requests_total{status="200"} 1.0' in text


def test_two_apps_in_one_process_count_apart() -> None:
    first, second = ServingMetrics(), ServingMetrics()
    first.observe("m", "1", 200, rows=1, seconds=0.01)
    assert 'tierflow_predict_requests_total{model="m",status="200",version="1"} 1.0' in (
        first.text().decode()
    )
    assert "tierflow_predict_requests_total{" not in second.text().decode()
