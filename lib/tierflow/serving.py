"""The online feature HTTP endpoint (aiohttp), bound to loopback by default.

- ``POST /v1/features`` with ``{"views": [...], "entities": [{...}, ...]}`` returns
  ``{"features": [{...}, ...]}``, one object per entity row, in order.
- ``POST /v1/predict/<model>`` with ``{"rows": [{...}, ...]}`` (each row: the model's
  own facts and the entity keys of its views) returns ``{"predictions": [{"score": p,
  "features": {...}}, ...]}``: the online features are read for the row's keys, joined
  with its facts and run through the model (``tierflow serve --model NAME``).
- ``GET /v1/views`` lists the views and their features; ``GET /v1/models`` the models
  and their versions; ``GET /health`` answers ok; ``GET /metrics`` is Prometheus' text
  format: requests, rows and latency per model and version, and feature requests.

Two versions of a model can be live at once (:class:`Route`): a share of the requests
(drawn per request) goes to the canary, the rest to the main version; each answer names
the version that gave it.

Errors are JSON ``{"error": "..."}``: 400 for malformed JSON, a missing or mistyped key
or too many entities, 404 for an unknown view.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tierflow.config.features import FeatureViewConfig
from tierflow.features.online import FeatureRequestError, get_online_features
from tierflow.stores.base import OnlineStore

if TYPE_CHECKING:
    from tierflow.train.predict import Predictor
    from tierflow.train.served import ServedLog


@dataclass(frozen=True)
class Route:
    """A model name's live versions: the main one, and a canary taking ``share`` of requests."""

    main: Predictor
    main_version: str = "published"
    canary: Predictor | None = None
    canary_version: str | None = None
    share: float = 0.0

    def pick(self, draw: float) -> tuple[Predictor, str]:
        """The version for a request whose uniform draw in [0, 1) is ``draw``."""
        if self.canary is not None and draw < self.share:
            return self.canary, str(self.canary_version)
        return self.main, self.main_version


#: Latency buckets of ``/metrics``, seconds.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServingMetrics:
    """Requests, rows and latency per (model, version).

    In a registry of the app's own: two apps in one process count apart.
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "tierflow_predict_requests", "Prediction requests, by model, version and status.",
            ["model", "version", "status"], registry=r,
        )  # fmt: skip
        self.rows = Counter(
            "tierflow_predict_rows", "Rows scored, by model and version.",
            ["model", "version"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "tierflow_predict_seconds", "Time to answer a prediction request.",
            ["model", "version"], buckets=BUCKETS, registry=r,
        )  # fmt: skip
        self.feature_requests = Counter(
            "tierflow_feature_requests", "Feature requests, by status.", ["status"], registry=r
        )

    def observe(self, model: str, version: str, status: int, rows: int, seconds: float) -> None:
        """One prediction request."""
        self.requests.labels(model, version, str(status)).inc()
        self.rows.labels(model, version).inc(rows)
        self.latency.labels(model, version).observe(seconds)

    def text(self) -> bytes:
        """The exposition, in Prometheus' text format."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def make_app(  # noqa: PLR0915 - a handler per route, sharing the metrics and routes
    store: OnlineStore,
    views: Mapping[str, FeatureViewConfig],
    *,
    max_entities: int = 1000,
    models: Mapping[str, Predictor | Route] | None = None,
    draw: Any = random.random,
    served_log: ServedLog | None = None,
) -> Any:
    """The aiohttp application serving ``views`` from ``store`` (and ``models``).

    ``draw`` gives each prediction request its uniform number in [0, 1) for the canary
    split (tests pass their own). ``served_log`` keeps every scored row with its features
    (:mod:`tierflow.train.served`); it is closed (flushed) when the app stops.
    """
    from aiohttp import web

    from tierflow.train.predict import PredictionRequestError

    routes = {name: m if isinstance(m, Route) else Route(m) for name, m in (models or {}).items()}
    metrics = ServingMetrics()

    def error(status: int, message: str) -> Any:
        return web.json_response({"error": message}, status=status)

    async def features(request: Any) -> Any:
        answer = await _features(request)
        key = str(answer.status)
        metrics.feature_requests.labels(key).inc()
        return answer

    async def _features(request: Any) -> Any:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error(400, "the body is not valid JSON")
        if not isinstance(body, dict):
            return error(400, "the body must be a JSON object with `views` and `entities`")
        names, rows = body.get("views"), body.get("entities")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return error(400, "`views` must be a list of view names")
        if not isinstance(rows, list):
            return error(400, "`entities` must be a list of objects")
        if len(rows) > max_entities:
            return error(400, f"{len(rows)} entities is above the limit of {max_entities}")
        try:
            result = get_online_features(store, views, names, rows)
        except FeatureRequestError as exc:
            return error(exc.status, str(exc))
        return web.json_response({"features": result})

    async def predict(request: Any) -> Any:
        route = routes.get(request.match_info["model"])
        if route is None:
            known = ", ".join(sorted(routes)) or "none"
            return error(404, f"unknown model {request.match_info['model']!r}; known: {known}")
        predictor, version = route.pick(draw())
        began = time.perf_counter()
        answer, rows = await _score(request, predictor, version)
        metrics.observe(predictor.name, version, answer.status, rows, time.perf_counter() - began)
        return answer

    async def _score(request: Any, predictor: Predictor, version: str) -> tuple[Any, int]:
        """The answer and the number of rows scored."""
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error(400, "the body is not valid JSON"), 0
        rows = body.get("rows") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            return error(400, "the body must be a JSON object with `rows`, a list of objects"), 0
        if len(rows) > max_entities:
            return error(400, f"{len(rows)} rows is above the limit of {max_entities}"), 0
        try:
            predictor.check_rows(rows, predictor.entity_columns(views))
            features = (
                get_online_features(store, views, list(predictor.view_names), rows)
                if predictor.view_names
                else [dict(r) for r in rows]
            )
        except (FeatureRequestError, PredictionRequestError) as exc:
            return error(getattr(exc, "status", 400), str(exc)), 0
        scores = predictor.predict(features)
        if served_log is not None:
            served_log.add(predictor, version, rows, features, scores)
        answer = web.json_response(
            {
                "model": predictor.name,
                "version": version,
                "predictions": [
                    {"score": s, "features": {c: f.get(c) for c in predictor.config.features}}
                    for s, f in zip(scores, features, strict=True)
                ],
            }
        )
        return answer, len(rows)

    async def list_models(_request: Any) -> Any:
        return web.json_response(
            {
                name: {
                    "features": list(r.main.config.features),
                    "task": r.main.config.task,
                    "version": r.main_version,
                    "canary": None
                    if r.canary is None
                    else {"version": r.canary_version, "share": r.share},
                }
                for name, r in sorted(routes.items())
            }
        )

    async def prometheus(_request: Any) -> Any:
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        return web.Response(body=metrics.text(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def list_views(_request: Any) -> Any:
        return web.json_response(
            {
                name: {
                    "entities": list(v.entities),
                    "features": [v.column_name(f) for f in v.features],
                    "step": v.step,
                    "ttl": v.ttl,
                }
                for name, v in sorted(views.items())
            }
        )

    async def health(_request: Any) -> Any:
        return web.json_response({"status": "ok", "store": store.kind, "views": len(views)})

    app = web.Application(client_max_size=4 * 1024 * 1024)
    if served_log is not None:

        async def close_log(_app: Any) -> None:
            served_log.close()

        app.on_cleanup.append(close_log)
    app.router.add_post("/v1/features", features)
    app.router.add_post("/v1/predict/{model}", predict)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/views", list_views)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", prometheus)
    return app


def serve(
    store: OnlineStore,
    views: Mapping[str, FeatureViewConfig],
    *,
    host: str,
    port: int,
    max_entities: int,
    models: Mapping[str, Predictor | Route] | None = None,
    served_log: ServedLog | None = None,
) -> None:
    """Serve until interrupted (SIGINT/SIGTERM stop it cleanly, the served log flushed)."""
    from aiohttp import web

    web.run_app(
        make_app(store, views, max_entities=max_entities, models=models, served_log=served_log),
        host=host,
        port=port,
        print=lambda line: print(line, flush=True),  # noqa: T201 - the server's start line
        access_log=None,
    )
