"""Who may write a Delta table at the same time as whom.

Delta's promise under concurrent writers rests on its log store creating each commit
file atomically, "if absent". delta-rs does: a hard link on local disk, a conditional PUT
(``If-None-Match``) on S3 and MinIO. Spark's Delta does not everywhere: its local log
store checks and renames under a lock that only its own JVM sees, and its S3 log store
is single-driver. Two writers can then both create version N, and one commit is lost.

tierflow therefore lets delta-rs writers (the single-node and Dask tiers) share a table
with each other, and gives a Spark writer the table to itself:

- **local disk**: a ``flock`` on ``<table>/_tierflow_writers.lock``: shared for delta-rs,
  exclusive for Spark, with a turnstile so that a Spark writer is not starved by a
  stream of delta-rs writes. A writer waits for its turn (up to ``wait_s``); a killed
  writer's lock is released by the kernel.
- **object stores**: there is no lock to wait on, so each writer leaves a marker object
  under ``<table>/_tierflow_writers/`` and then lists the others'. A Spark writer that
  finds any other live marker, or a delta-rs writer that finds a Spark writer's, takes
  its own marker back and refuses with :class:`ConcurrentWriteError` (retryable). With
  the store's read-after-write consistency, of two writers that start together the later
  one always sees the earlier, so a Spark writer never overlaps another writer. Markers
  are renewed while a write runs and ignored once ``lease_s`` old: a killed writer holds
  nothing for longer.

Files under ``_``-prefixed names are invisible to Delta and Parquet readers.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tierflow.config.jobs import is_uri
from tierflow.io.write_plan import ConcurrentWriteError

LOCK_FILE = "_tierflow_writers.lock"
TURNSTILE = "_tierflow_writers.turn"
MARKERS = "_tierflow_writers"
#: A marker older than this belongs to a writer that died (live writers renew theirs).
LEASE_S = 60.0
WAIT_S = 600.0


@contextmanager
def writer_slot(
    path: str, *, exclusive: bool, wait_s: float = WAIT_S, lease_s: float = LEASE_S
) -> Iterator[None]:
    """Hold the table's writer slot for the block: ``exclusive`` for a Spark writer.

    Raises:
        ConcurrentWriteError: no slot within ``wait_s`` (local), or another writer holds
            the table in a way this one cannot share (object store).
    """
    if is_uri(path):
        with _marker(path, exclusive=exclusive, lease_s=lease_s):
            yield
    else:
        with _flock(path, exclusive=exclusive, wait_s=wait_s):
            yield


def _take(handle: IO[str], kind: int, deadline: float, what: str) -> None:
    """``flock`` ``handle`` (``kind``), polling until ``deadline``."""
    import fcntl

    while True:
        try:
            fcntl.flock(handle, kind | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise ConcurrentWriteError(what) from None
            time.sleep(0.02)


@contextmanager
def _flock(path: str, *, exclusive: bool, wait_s: float) -> Iterator[None]:
    """A readers-writer lock from two ``flock``s, fair to the exclusive writer.

    Shared writers pass a turnstile on their way in; an exclusive writer holds the
    turnstile while it waits for the shared ones to leave and while it writes, so a
    steady stream of delta-rs writes cannot keep a Spark write out for ever.
    """
    import fcntl

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    holder = "other writers" if exclusive else "a Spark writer"
    what = (f"{path}: {holder} held the table for over {wait_s:g} s (a Spark write has the "
            "table to itself); nothing was written, run it again")  # fmt: skip
    with (folder / TURNSTILE).open("a") as turn, (folder / LOCK_FILE).open("a") as lock:
        _take(turn, fcntl.LOCK_EX, deadline, what)
        try:
            _take(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, deadline, what)
        finally:
            if not exclusive:
                fcntl.flock(turn, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            if exclusive:
                fcntl.flock(turn, fcntl.LOCK_UN)


@contextmanager
def _marker(path: str, *, exclusive: bool, lease_s: float) -> Iterator[None]:
    from tierflow.storage import arrow_location

    filesystem, base = arrow_location(path.rstrip("/") + f"/{MARKERS}")
    assert filesystem is not None
    kind = "spark" if exclusive else "rs"
    me = f"{base}/{kind}-{uuid.uuid4().hex}.json"

    def put() -> None:
        body = {"kind": kind, "host": socket.gethostname(), "pid": os.getpid(),
                "expires": time.time() + lease_s}  # fmt: skip
        with filesystem.open_output_stream(me) as out:
            out.write(json.dumps(body).encode())

    put()
    try:
        others = [m for m in _live_markers(filesystem, base) if m[0] != me]
        blocking = [m for m in others if exclusive or m[1] == "spark"]
        if blocking:
            who = ", ".join(f"{k} writer on {h} (pid {p})" for _, k, h, p in blocking)
            reason = (
                "Spark's S3 log store is single-driver: a Spark writer must have the table "
                "to itself"
            )
            raise ConcurrentWriteError(
                f"{path}: refused, the table is being written by {who}; {reason}. Nothing "
                "was written; run it again when that write is done"
            )
    except BaseException:
        filesystem.delete_file(me)
        raise
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease_s / 3):
            try:
                put()
            except OSError:  # the store is unreachable now; the next round tries again
                continue

    renewer = threading.Thread(target=renew, daemon=True, name="tierflow-writer-lease")
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        filesystem.delete_file(me)


def _live_markers(filesystem: object, base: str) -> list[tuple[str, str, str, int]]:
    """``(path, kind, host, pid)`` of every unexpired marker under ``base``."""
    import pyarrow.fs as pafs

    assert isinstance(filesystem, pafs.FileSystem)
    found = []
    now = time.time()
    selector = pafs.FileSelector(base, allow_not_found=True)
    for info in filesystem.get_file_info(selector):
        if info.type != pafs.FileType.File:
            continue
        try:
            with filesystem.open_input_stream(info.path) as stream:
                body = json.loads(stream.read())
        except (OSError, ValueError):  # taken back meanwhile, or half-written
            continue
        if float(body.get("expires", 0)) > now:
            found.append((info.path, str(body.get("kind")), str(body.get("host")),
                          int(body.get("pid", 0))))  # fmt: skip
    return found
