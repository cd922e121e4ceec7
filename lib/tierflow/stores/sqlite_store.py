"""The embedded online store: one SQLite file, the default when no Redis is configured.

WAL mode, one row per (view, entity). A batch and its checkpoint commit in one
transaction; the upsert keeps the stored row when it belongs to a later window.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tierflow.stores.base import (
    OnlineRow,
    OnlineStore,
    PartitionCommit,
    PartitionState,
    StaleCommitError,
    StoredValue,
    StoreError,
    encode_values,
    entity_key,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS online_features (
    view TEXT NOT NULL,
    entity TEXT NOT NULL,
    window_end INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (view, entity)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stream_partitions (
    state TEXT PRIMARY KEY, next_offset INTEGER NOT NULL, meta TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stream_state (
    state TEXT NOT NULL, field TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (state, field)
) WITHOUT ROWID;
"""
_UPSERT = """
INSERT INTO online_features (view, entity, window_end, expires_at, payload)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (view, entity) DO UPDATE SET
    window_end = excluded.window_end,
    expires_at = excluded.expires_at,
    payload = excluded.payload
WHERE excluded.window_end >= online_features.window_end
"""
_MAX_VARS = 900  # below SQLite's default limit on host parameters


@contextmanager
def _as_store_error(what: str) -> Iterator[None]:
    """SQLite's own errors (a lock held too long, a full disk) as :class:`StoreError`."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"{what} failed: {exc}") from exc


def _now_us() -> int:
    return time.time_ns() // 1000


class SQLiteOnlineStore(OnlineStore):
    """An online store in a local SQLite file (safe to share between threads)."""

    kind = "sqlite"

    def __init__(self, path: Path, *, busy_timeout_s: float = 5.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        # Another process writing the same file makes a write wait up to busy_timeout_s,
        # then fail as a StoreError (the daemon retries those with backoff).
        self._db = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=busy_timeout_s
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def check(self) -> None:
        """A read of the file's schema."""
        with self._lock, _as_store_error(f"SQLite online store {self.path}"):
            self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()

    def write(
        self,
        view: str,
        rows: Sequence[OnlineRow],
        *,
        ttl_us: int,
        checkpoint: tuple[str, str] | None = None,
    ) -> int:
        """One transaction: the upserts and the checkpoint."""
        expires = _now_us() + ttl_us
        params = [
            (view, entity_key(r.entity), r.window_end_us, expires, encode_values(r.values))
            for r in rows
        ]
        with self._lock, _as_store_error(f"sqlite write of {len(rows)} rows for {view}"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                before = self._db.total_changes
                self._db.executemany(_UPSERT, params)
                applied = self._db.total_changes - before
                if checkpoint is not None:
                    self._db.execute(
                        "INSERT INTO checkpoints (name, value) VALUES (?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                        checkpoint,
                    )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT may have ended it already
                    self._db.execute("ROLLBACK")
                raise
        return applied

    def read(self, view: str, entities: Sequence[Sequence[Any]]) -> list[StoredValue | None]:
        """Live values of the entities, in order."""
        keys = [entity_key(e) for e in entities]
        found: dict[str, StoredValue] = {}
        now = _now_us()
        with self._lock, _as_store_error("sqlite read"):
            for start in range(0, len(keys), _MAX_VARS):
                chunk = keys[start : start + _MAX_VARS]
                marks = ",".join("?" * len(chunk))
                cursor = self._db.execute(
                    "SELECT entity, window_end, payload FROM online_features "  # noqa: S608
                    f"WHERE view = ? AND expires_at > ? AND entity IN ({marks})",
                    (view, now, *chunk),
                )
                for entity, window_end, payload in cursor:
                    found[entity] = StoredValue(json.loads(payload), int(window_end))
        return [found.get(k) for k in keys]

    def commit_partition(self, commit: PartitionCommit) -> int:
        """One transaction: offset check, rows, state and offset."""
        now = _now_us()
        params = [
            (view, entity_key(r.entity), r.window_end_us, now + ttl, encode_values(r.values))
            for view, r, ttl in commit.rows
        ]
        with self._lock, _as_store_error(f"sqlite commit of {commit.state}"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT next_offset FROM stream_partitions WHERE state = ?", (commit.state,)
                ).fetchone()
                stored = None if row is None else int(row[0])
                if stored != commit.expected_offset:
                    raise StaleCommitError(
                        f"{commit.state}: stored offset {stored} is not {commit.expected_offset}"
                    )
                before = self._db.total_changes
                self._db.executemany(_UPSERT, params)
                applied = self._db.total_changes - before
                self._db.executemany(
                    "INSERT INTO stream_state (state, field, value) VALUES (?, ?, ?) "
                    "ON CONFLICT (state, field) DO UPDATE SET value = excluded.value",
                    [(commit.state, k, v) for k, v in commit.put.items()],
                )
                self._db.executemany(
                    "DELETE FROM stream_state WHERE state = ? AND field = ?",
                    [(commit.state, k) for k in commit.delete],
                )
                self._db.execute(
                    "INSERT INTO stream_partitions (state, next_offset, meta) VALUES (?, ?, ?) "
                    "ON CONFLICT (state) DO UPDATE SET "
                    "next_offset = excluded.next_offset, meta = excluded.meta",
                    (commit.state, commit.offset, commit.meta),
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT may have ended it already
                    self._db.execute("ROLLBACK")
                raise
        return applied

    def load_partition(self, state: str) -> PartitionState:
        """The partition's offset, metadata and state fields."""
        with self._lock, _as_store_error(f"sqlite read of {state}"):
            row = self._db.execute(
                "SELECT next_offset, meta FROM stream_partitions WHERE state = ?", (state,)
            ).fetchone()
            fields = dict(
                self._db.execute(
                    "SELECT field, value FROM stream_state WHERE state = ?", (state,)
                ).fetchall()
            )
        if row is None:
            return PartitionState(None, None, fields)
        return PartitionState(int(row[0]), str(row[1]), fields)

    def get_checkpoint(self, name: str) -> str | None:
        """The checkpoint's value, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM checkpoints WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else str(row[0])

    def count(self, view: str) -> int:
        """Live entities of the view."""
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*) FROM online_features WHERE view = ? AND expires_at > ?",
                (view, _now_us()),
            ).fetchone()
        return int(row[0])

    def clear(self, view: str) -> None:
        """Delete the view's values."""
        with self._lock:
            self._db.execute("DELETE FROM online_features WHERE view = ?", (view,))

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
