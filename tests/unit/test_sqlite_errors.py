"""SQLite's own failures reach the daemon as StoreError, which it retries with backoff.

SQLite is a library and a file, so this runs the real thing: a second connection holds
the write lock, as a second process writing the same file would.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tierflow.stores.base import OnlineRow, PartitionCommit, StoreError
from tierflow.stores.sqlite_store import SQLiteOnlineStore


def commit(expected: int | None, offset: int) -> PartitionCommit:
    row = OnlineRow(("UA",), {"n": 1}, 3_600_000_000)
    return PartitionCommit(
        state="g/t/0",
        expected_offset=expected,
        offset=offset,
        meta="{}",
        rows=[("v", row, 86_400_000_000)],
        put={'v\x1f["UA"]': "{}"},
        delete=[],
    )


def test_a_held_lock_is_a_store_error_and_nothing_is_half_written(tmp_path: Path) -> None:
    path = tmp_path / "online.db"
    store = SQLiteOnlineStore(path, busy_timeout_s=0.05)
    assert store.commit_partition(commit(None, 10)) == 1
    other = sqlite3.connect(str(path), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        with pytest.raises(StoreError, match="sqlite commit of g/t/0 failed: database is locked"):
            store.commit_partition(commit(10, 20))
        with pytest.raises(StoreError, match="sqlite write of 1 rows for v failed"):
            store.write("v", [OnlineRow(("AA",), {"n": 2}, 0)], ttl_us=1)
    finally:
        other.execute("ROLLBACK")
        other.close()
    # Once the lock is gone the same commit goes through, and nothing of the failed
    # attempts was kept: the stored offset is still the first commit's.
    assert store.load_partition("g/t/0").offset == 10
    assert store.read("v", [("AA",)]) == [None]
    store.commit_partition(commit(10, 20))
    assert store.load_partition("g/t/0").offset == 20
    stored = store.read("v", [("UA",)])[0]
    assert stored is not None
    assert stored.values == {"n": 1}
    store.close()
