"""What ``tierflow serve`` answered, kept as a Delta table per model.

Each row a model scored through ``POST /v1/predict/<model>`` becomes one row of
``<data>/<serving.log_path>/<model>`` (``served/<model>`` by default): ``request_id``,
``served_at`` (UTC), ``model``, ``version``, ``score``, every feature of the model as it
was served (categories as strings, numbers as float64), each view's
``<view>__window_end_us`` (the end of the window the online values were for; null when
the store had nothing for the entity), the entity keys of the views it read (typed as
the views declare them) and the request row as JSON. ``tierflow monitor consistency``
recomputes the features in batch at those window ends; ``tierflow monitor drift`` reads
the table like any table of scored rows.

Rows are buffered and appended by a thread of their own every
``serving.log_flush_seconds`` (and when the server stops): a request never waits for a
write. A failed write is retried at the next flush; beyond :data:`MAX_BUFFERED` rows
waiting, the oldest are dropped and counted (``dropped``), so that a table that cannot be
written never grows the server's memory without bound.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tierflow.config.features import FeatureViewConfig
    from tierflow.train.predict import Predictor

log = logging.getLogger(__name__)
#: Rows waiting to be written at most; older ones are dropped beyond it.
MAX_BUFFERED = 200_000
WINDOW_END = "__window_end_us"


def schema(predictor: Predictor, views: Mapping[str, FeatureViewConfig]) -> Any:
    """The served log's Arrow schema for ``predictor``'s model."""
    import pyarrow as pa

    pre = predictor.preprocessor
    fields: dict[str, Any] = {
        "request_id": pa.string(), "served_at": pa.timestamp("us", tz="UTC"),
        "model": pa.string(), "version": pa.string(), "score": pa.float64(),
    }  # fmt: skip
    for name in predictor.config.features:
        if name in pre.categories:
            fields[name] = pa.string()
        elif name in pre.boolean:
            fields[name] = pa.bool_()
        else:
            fields[name] = pa.float64()
    for view_name in predictor.view_names:
        view = views[view_name]
        for key in view.entities:
            text = view.source.columns[key].type == "string"
            fields.setdefault(key, pa.string() if text else pa.int64())
        fields[f"{view_name}{WINDOW_END}"] = pa.int64()
    fields["request"] = pa.string()
    return pa.schema(list(fields.items()))


#: Columns the log fills itself; the others are the served row's.
_OWN = frozenset({"request_id", "served_at", "model", "version", "score", "request"})


class ServedLog:
    """Appends what the server answered to one Delta table per model (see the module doc)."""

    def __init__(
        self,
        root: str,
        views: Mapping[str, FeatureViewConfig],
        *,
        flush_seconds: float = 5.0,
    ) -> None:
        """``root``: the folder (or ``s3://`` prefix) holding a table per model."""
        self.root, self.views, self.flush_seconds = root.rstrip("/"), views, flush_seconds
        self._lock = threading.Lock()
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._schemas: dict[str, Any] = {}
        # Per model, the columns taken from the request's row and their kinds: built
        # with the schema, not at every request.
        self._kinds: dict[str, list[tuple[str, str]]] = {}
        self._stop = threading.Event()
        self.written = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="tierflow-served-log", daemon=True)
        self._thread.start()

    def path(self, model: str) -> str:
        """The table of ``model``."""
        return f"{self.root}/{model}"

    def add(
        self,
        predictor: Predictor,
        version: str,
        rows: Sequence[Mapping[str, Any]],
        features: Sequence[Mapping[str, Any]],
        scores: Sequence[float],
    ) -> None:
        """One request's rows, as served (cheap: buffered)."""
        request_id = uuid.uuid4().hex
        served_at = datetime.now(timezone.utc)
        name = predictor.name
        kinds = self._kinds.get(name)
        if kinds is None:
            self._schemas[name] = schema(predictor, self.views)
            kinds = [(f.name, _kind(f.type)) for f in self._schemas[name]
                     if f.name not in _OWN]  # fmt: skip
            self._kinds[name] = kinds
        out = []
        for row, served, score in zip(rows, features, scores, strict=True):
            record = {c: _coerce(served.get(c, row.get(c)), kind) for c, kind in kinds}
            record |= {"request_id": request_id, "served_at": served_at, "model": name,
                       "version": version, "score": score,
                       "request": json.dumps(row, default=str, sort_keys=True)}  # fmt: skip
            out.append(record)
        with self._lock:
            waiting = self._rows.setdefault(name, [])
            waiting.extend(out)
            if len(waiting) > MAX_BUFFERED:
                self.dropped += len(waiting) - MAX_BUFFERED
                del waiting[: len(waiting) - MAX_BUFFERED]

    def flush(self) -> None:
        """Write what is buffered now (each model's rows in one append)."""
        from deltalake import write_deltalake

        from tierflow.storage import storage_options

        with self._lock:
            batches, self._rows = self._rows, {}
        for name, rows in batches.items():
            if not rows:
                continue
            import pyarrow as pa

            target = self.path(name)
            try:
                table = pa.Table.from_pylist(rows, schema=self._schemas[name])
                write_deltalake(target, table, mode="append",
                                storage_options=storage_options(target) or None)  # fmt: skip
                self.written += len(rows)
            except Exception as exc:  # kept for the next flush, and said
                log.warning("served log: could not append %d row(s) to %s: %r; retrying at "
                            "the next flush", len(rows), target, exc)  # fmt: skip
                with self._lock:
                    self._rows[name] = rows + self._rows.get(name, [])

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self.flush()

    def close(self) -> None:
        """Stop the thread and write what is left."""
        self._stop.set()
        self._thread.join()
        self.flush()


def _kind(kind: Any) -> str:
    import pyarrow as pa

    if pa.types.is_string(kind):
        return "string"
    if pa.types.is_floating(kind):
        return "float"
    if pa.types.is_integer(kind):
        return "int"
    return "other"


def _coerce(value: Any, kind: str) -> Any:
    """A served value as its column's type (a category as text, a count as a float)."""
    if value is None:
        return None
    if kind == "string":
        return value if isinstance(value, str) else str(value)
    if kind == "float":
        return float(value)
    if kind == "int":
        return int(value)
    return value
