"""The online feature HTTP endpoint (aiohttp), bound to loopback by default.

- ``POST /v1/features`` with ``{"views": [...], "entities": [{...}, ...]}`` returns
  ``{"features": [{...}, ...]}``, one object per entity row, in order.
- ``POST /v1/predict/<model>`` with ``{"rows": [{...}, ...]}`` (each row: the model's
  own facts and the entity keys of its views) returns ``{"predictions": [{"score": p,
  "features": {...}}, ...]}``: the online features are read for the row's keys, joined
  with its facts and run through the model (``tierflow serve --model NAME``).
- ``GET /v1/views`` lists the views and their features; ``GET /v1/models`` the models;
  ``GET /health`` answers ok.

Errors are JSON ``{"error": "..."}``: 400 for malformed JSON, a missing or mistyped key
or too many entities, 404 for an unknown view.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tierflow.config.features import FeatureViewConfig
from tierflow.features.online import FeatureRequestError, get_online_features
from tierflow.stores.base import OnlineStore

if TYPE_CHECKING:
    from tierflow.train.predict import Predictor


def make_app(
    store: OnlineStore,
    views: Mapping[str, FeatureViewConfig],
    *,
    max_entities: int = 1000,
    models: Mapping[str, Predictor] | None = None,
) -> Any:
    """The aiohttp application serving ``views`` from ``store`` (and ``models``)."""
    from aiohttp import web

    def error(status: int, message: str) -> Any:
        return web.json_response({"error": message}, status=status)

    async def features(request: Any) -> Any:
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
        from tierflow.train.predict import PredictionRequestError

        predictor = (models or {}).get(request.match_info["model"])
        if predictor is None:
            known = ", ".join(sorted(models or {})) or "none"
            return error(404, f"unknown model {request.match_info['model']!r}; known: {known}")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error(400, "the body is not valid JSON")
        rows = body.get("rows") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            return error(400, "the body must be a JSON object with `rows`, a list of objects")
        if len(rows) > max_entities:
            return error(400, f"{len(rows)} rows is above the limit of {max_entities}")
        try:
            predictor.check_rows(rows, predictor.entity_columns(views))
            features = (
                get_online_features(store, views, list(predictor.view_names), rows)
                if predictor.view_names
                else [dict(r) for r in rows]
            )
        except (FeatureRequestError, PredictionRequestError) as exc:
            return error(getattr(exc, "status", 400), str(exc))
        scores = predictor.predict(features)
        return web.json_response(
            {
                "model": predictor.name,
                "predictions": [
                    {"score": s, "features": {c: f.get(c) for c in predictor.config.features}}
                    for s, f in zip(scores, features, strict=True)
                ],
            }
        )

    async def list_models(_request: Any) -> Any:
        return web.json_response(
            {
                name: {"features": list(p.config.features), "task": p.config.task}
                for name, p in sorted((models or {}).items())
            }
        )

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
    app.router.add_post("/v1/features", features)
    app.router.add_post("/v1/predict/{model}", predict)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/views", list_views)
    app.router.add_get("/health", health)
    return app


def serve(
    store: OnlineStore,
    views: Mapping[str, FeatureViewConfig],
    *,
    host: str,
    port: int,
    max_entities: int,
    models: Mapping[str, Predictor] | None = None,
) -> None:
    """Serve until interrupted (SIGINT/SIGTERM stop it cleanly)."""
    from aiohttp import web

    web.run_app(
        make_app(store, views, max_entities=max_entities, models=models),
        host=host,
        port=port,
        print=lambda line: print(line, flush=True),  # noqa: T201 - the server's start line
        access_log=None,
    )
