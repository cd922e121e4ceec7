"""A partitioned Parquet write of the single-node tier's output: Polars hands out string
views, which pyarrow cannot split by partition; the write must still land every row."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from tierflow.config.jobs import SinkConfig
from tierflow.io.arrow_sinks import write_arrow


def test_string_views_are_written_by_partition(tmp_path: Path) -> None:
    schema = pa.schema([("city", pa.string_view()), ("part", pa.int64()), ("x", pa.int64())])
    batches = [
        pa.record_batch([pa.array(["a", "b", None], pa.string_view()), [0, 1, 0], [1, 2, 3]],
                        schema=schema),
        pa.record_batch([pa.array(["c"], pa.string_view()), [1], [4]], schema=schema),
    ]  # fmt: skip
    path = str(tmp_path / "out")
    sink = SinkConfig(format="parquet", path=path, partition_by=("part",))
    result = write_arrow(batches, schema, sink, path)
    assert result.rows == 4
    table = ds.dataset(path, format="parquet", partitioning="hive").to_table()
    got = sorted(zip(*(table.column(c).to_pylist() for c in ("part", "city", "x")), strict=True),
                 key=lambda r: r[2])  # fmt: skip
    assert got == [(0, "a", 1), (1, "b", 2), (0, None, 3), (1, "c", 4)]
    assert sorted(p.name for p in Path(path).iterdir()) == ["part=0", "part=1"]
