"""Delta writes: tierflow's Delta sink against pyarrow's Parquet writer; MERGE against overwrite.

- **Write**: the same Arrow table (``ROWS`` rows: integers, floats, strings, timestamps)
  through tierflow's Delta sink on the single-node tier (``Engine.write``, overwrite:
  the Delta log, schema checks and all) against ``pyarrow.parquet.write_table`` of the
  same table to one file (no table format at all), and against ``deltalake``'s own
  ``write_deltalake`` for reference. Rows per second; ratio tierflow / pyarrow in time.
- **MERGE 1%**: tierflow's ``merge`` sink upserting 1% of the rows (half updates, half
  new keys) into the table, against overwriting the whole table with the same engine.

Medians of ``ROUNDS`` rounds, alternating. Every written table is read back and checked.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import ROOT, Results, median

ROUNDS = 5
ROWS = 2_000_000


def make_table(rows: int, seed: int = 0) -> Any:
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    start = np.datetime64("2024-01-01T00:00:00", "us")
    return pa.table({
        "id": np.arange(rows, dtype=np.int64),
        "customer": rng.integers(0, 100_000, rows),
        "amount": rng.normal(100, 30, rows),
        "quantity": rng.integers(1, 10, rows).astype(np.int32),
        "country": pa.array(rng.choice(["DE", "FR", "NL", "PL", "SE"], rows)),
        "sku": pa.array([f"sku-{i % 5000:05d}" for i in range(rows)]),
        "at": pa.array(start + rng.integers(0, 86_400_000_000 * 30, rows).astype("timedelta64[us]"),
                       pa.timestamp("us", tz="UTC")),
    })  # fmt: skip


def main() -> int:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from deltalake import DeltaTable, write_deltalake

    from tierflow.config.jobs import SinkConfig
    from tierflow.engines.polars_engine import PolarsEngine

    results = Results("delta")
    engine = PolarsEngine()
    table = make_table(ROWS)
    changes_n = ROWS // 100
    updates = table.slice(0, changes_n // 2).set_column(
        2, "amount", pa.array(np.full(changes_n // 2, -1.0))
    )
    new_rows = make_table(changes_n - changes_n // 2, seed=1)
    new_rows = new_rows.set_column(0, "id", pa.array(np.arange(ROWS, ROWS + new_rows.num_rows)))
    changes = pa.concat_tables([updates, new_rows])
    times: dict[str, list[float]] = {k: [] for k in ("tierflow", "pyarrow", "deltalake",
                                                     "merge", "overwrite")}  # fmt: skip
    with tempfile.TemporaryDirectory(dir=ROOT / ".local") as tmp:
        work = Path(tmp)
        for round_ in range(ROUNDS):
            for target in work.iterdir():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            began = time.perf_counter()
            engine.write(engine.from_arrow(table),
                         SinkConfig(format="delta", path="t", mode="overwrite"), str(work / "tf"))  # fmt: skip
            times["tierflow"].append(time.perf_counter() - began)
            began = time.perf_counter()
            pq.write_table(table, work / "plain.parquet")
            times["pyarrow"].append(time.perf_counter() - began)
            began = time.perf_counter()
            write_deltalake(str(work / "dl"), table, mode="overwrite")
            times["deltalake"].append(time.perf_counter() - began)
            assert DeltaTable(str(work / "tf")).to_pyarrow_table().num_rows == ROWS
            assert pq.read_metadata(work / "plain.parquet").num_rows == ROWS

            began = time.perf_counter()
            engine.write(engine.from_arrow(changes),
                         SinkConfig(format="delta", path="t", mode="merge", merge_keys=("id",)),
                         str(work / "tf"))  # fmt: skip
            times["merge"].append(time.perf_counter() - began)
            merged = DeltaTable(str(work / "tf")).to_pyarrow_table()
            assert merged.num_rows == ROWS + new_rows.num_rows
            assert pc.sum(pc.equal(merged["amount"], -1.0)).as_py() == updates.num_rows
            began = time.perf_counter()
            engine.write(engine.from_arrow(table),
                         SinkConfig(format="delta", path="t", mode="overwrite"), str(work / "tf"))  # fmt: skip
            times["overwrite"].append(time.perf_counter() - began)
            print(f"  round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
                  flush=True)  # fmt: skip
    results.raw["seconds"] = times
    m = {k: median(v) for k, v in times.items()}
    results.add(benchmark=f"write {ROWS:,} rows x 7 columns", metric="rows/s",
                tierflow=ROWS / m["tierflow"], peer=ROWS / m["pyarrow"],
                peer_name="pyarrow.parquet.write_table (no Delta log)",
                ratio=m["tierflow"] / m["pyarrow"])  # fmt: skip
    results.add(benchmark=f"write {ROWS:,} rows x 7 columns", metric="rows/s",
                tierflow=ROWS / m["tierflow"], peer=ROWS / m["deltalake"],
                peer_name="deltalake.write_deltalake", ratio=m["tierflow"] / m["deltalake"])  # fmt: skip
    results.add(benchmark=f"MERGE 1% ({changes_n:,} rows) into {ROWS:,}", metric="seconds",
                tierflow=m["merge"], peer=m["overwrite"], peer_name="tierflow full overwrite",
                ratio=m["merge"] / m["overwrite"])  # fmt: skip
    return results.finish()


if __name__ == "__main__":
    sys.exit(main())
