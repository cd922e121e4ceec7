"""One writer of the concurrent-writers test: batches into one Delta table through tierflow.

``python -m tests.concurrent_writer TABLE NAME MODE BATCHES ROWS ACKS`` writes BATCHES
batches of ROWS rows each with the single-node tier's writer (delta-rs), in MODE
``append`` or ``merge`` (an upsert on ``key``), and appends ``NAME BATCH VERSION`` to the
file ACKS after each write is committed (flushed and synced: an acknowledgement). A
conflict with another writer (:class:`ConcurrentWriteError`) is retried, as a user
would, and counted in a last line ``NAME conflicts N``. Every row's key is
``NAME:BATCH:ROW``, so the test can tell each batch's rows apart.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pyarrow as pa


def batch(name: str, number: int, rows: int) -> pa.Table:
    return pa.table({
        "key": [f"{name}:{number}:{r}" for r in range(rows)],
        "writer": [name] * rows,
        "batch": pa.array([number] * rows, pa.int64()),
        "value": pa.array([float(number * 1000 + r) for r in range(rows)], pa.float64()),
    })  # fmt: skip


def sink(mode: str, path: str):
    from tierflow.config.jobs import SinkConfig

    keys = ("key",) if mode == "merge" else ()
    return SinkConfig(format="delta", path=path, mode=mode, merge_keys=keys)


def acknowledge(acks: Path, line: str) -> None:
    with acks.open("a") as out:
        out.write(line + "\n")
        out.flush()
        os.fsync(out.fileno())


def main(argv: list[str]) -> int:
    from tierflow.engines.polars_engine import PolarsEngine
    from tierflow.io.write_plan import ConcurrentWriteError

    table, name, mode, batches, rows, acks = argv
    engine = PolarsEngine()
    conflicts = 0
    for number in range(int(batches)):
        frame = engine.from_arrow(batch(name, number, int(rows)))
        while True:
            try:
                result = engine.write(frame, sink(mode, table), table)
                break
            except ConcurrentWriteError:
                conflicts += 1
        acknowledge(Path(acks), f"{name} {number} {result.version}")
    acknowledge(Path(acks), f"{name} conflicts {conflicts}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
