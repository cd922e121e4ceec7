"""TPC-H data for the ``tpch_*`` jobs, generated with ``tpchgen-cli``, cached by scale factor.

``tpchgen-cli`` writes Parquet directly, in parts (many files per table, so that Dask and
Spark have partitions to spread). Each part is then rewritten once in the types every
engine reads the same way: decimals as float64, strings as plain UTF-8 strings (the
generator writes Arrow string views, which Spark and pandas read differently). The
layout is ``DIR/tpch/<table>/<table>.<part>.parquet``, so a project whose data folder is
``DIR`` runs the jobs in ``conf/jobs/tpch_*.yaml`` unchanged:

    tierflow examples tpch --scale 10 --data-dir .local/bench-data/tpch-sf10
    tierflow run tpch_q3 --data-dir .local/bench-data/tpch-sf10

Before writing anything the free disk space is checked against what the scale needs
(the converted tables plus the largest raw table, which is deleted once converted).
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tierflow.errors import TierflowError

TABLES = ("region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem")
#: Rows per unit of scale factor (nation and region are fixed).
ROWS_PER_SF = {
    "lineitem": 6_000_000, "orders": 1_500_000, "partsupp": 800_000, "part": 200_000,
    "customer": 150_000, "supplier": 10_000,
}  # fmt: skip
#: Parquet bytes per unit of scale factor after conversion (measured at SF 1; snappy).
BYTES_PER_SF = {
    "lineitem": 212_000_000, "orders": 56_000_000, "partsupp": 41_000_000,
    "part": 6_800_000, "customer": 13_700_000, "supplier": 900_000,
}  # fmt: skip
#: Rows per file: small enough that Dask and Spark get a task per core at SF 1.
ROWS_PER_PART = 2_000_000
ROWS_PER_GROUP = 1_000_000
DONE = "_done"


#: The queries as DuckDB writes them, over views named after the tables: the reference
#: that every tier's output and every hand-written peer is checked against, row for row.
#: (No ORDER BY/LIMIT, like the jobs; the parameters are the TPC-H defaults.)
REFERENCE_SQL = {
    "q1": """
        SELECT l_returnflag, l_linestatus, sum(l_quantity) AS sum_qty,
               sum(l_extendedprice) AS sum_base_price,
               sum(l_extendedprice * (1 - l_discount)) AS sum_disc_price,
               sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS sum_charge,
               avg(l_quantity) AS avg_qty, avg(l_extendedprice) AS avg_price,
               avg(l_discount) AS avg_disc, count(*) AS count_order
        FROM lineitem WHERE l_shipdate <= DATE '1998-09-02'
        GROUP BY l_returnflag, l_linestatus""",
    "q3": """
        SELECT l_orderkey, o_orderdate, o_shippriority,
               sum(l_extendedprice * (1 - l_discount)) AS revenue
        FROM customer JOIN orders ON c_custkey = o_custkey
             JOIN lineitem ON l_orderkey = o_orderkey
        WHERE c_mktsegment = 'BUILDING' AND o_orderdate < DATE '1995-03-15'
          AND l_shipdate > DATE '1995-03-15'
        GROUP BY l_orderkey, o_orderdate, o_shippriority""",
    "q5": """
        SELECT n_name, sum(l_extendedprice * (1 - l_discount)) AS revenue
        FROM customer, orders, lineitem, supplier, nation, region
        WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey AND l_suppkey = s_suppkey
          AND c_nationkey = s_nationkey AND s_nationkey = n_nationkey
          AND n_regionkey = r_regionkey AND r_name = 'ASIA'
          AND o_orderdate >= DATE '1994-01-01' AND o_orderdate < DATE '1995-01-01'
        GROUP BY n_name""",
    "q6": """
        SELECT sum(l_extendedprice * l_discount) AS revenue FROM lineitem
        WHERE l_shipdate >= DATE '1994-01-01' AND l_shipdate < DATE '1995-01-01'
          AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24""",
    "q9": """
        SELECT nation, o_year, sum(amount) AS sum_profit FROM (
          SELECT n_name AS nation, year(o_orderdate) AS o_year,
                 l_extendedprice * (1 - l_discount) - ps_supplycost * l_quantity AS amount
          FROM part, supplier, lineitem, partsupp, orders, nation
          WHERE s_suppkey = l_suppkey AND ps_suppkey = l_suppkey AND ps_partkey = l_partkey
            AND p_partkey = l_partkey AND o_orderkey = l_orderkey
            AND s_nationkey = n_nationkey AND p_name LIKE '%green%')
        GROUP BY nation, o_year""",
    "q18": """
        SELECT c_name, c_custkey, o_orderkey, o_orderdate, o_totalprice,
               sum(l_quantity) AS sum_qty
        FROM customer, orders, lineitem
        WHERE o_orderkey IN (SELECT l_orderkey FROM lineitem GROUP BY l_orderkey
                             HAVING sum(l_quantity) > 300)
          AND c_custkey = o_custkey AND o_orderkey = l_orderkey
        GROUP BY c_name, c_custkey, o_orderkey, o_orderdate, o_totalprice""",
}
#: The tables each query reads.
QUERY_TABLES = {
    "q1": ("lineitem",),
    "q3": ("customer", "orders", "lineitem"),
    "q5": ("customer", "orders", "lineitem", "supplier", "nation", "region"),
    "q6": ("lineitem",),
    "q9": ("part", "supplier", "lineitem", "partsupp", "orders", "nation"),
    "q18": ("customer", "orders", "lineitem"),
}


def duckdb_views(con: Any, tables: Path, names: tuple[str, ...] = TABLES) -> None:
    """Views over the generated Parquet files in a DuckDB connection, named after the tables."""
    for name in names:
        pattern = str(tables / name / "*.parquet").replace("'", "''")
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet('{pattern}')")  # noqa: S608


class TpchError(TierflowError):
    """The TPC-H data cannot be generated (no generator, or not enough disk)."""


@dataclass(frozen=True)
class TpchData:
    """Generated TPC-H tables: ``root`` is a data folder, the tables are in ``root/tpch``."""

    root: Path
    scale: float

    @property
    def tables(self) -> Path:
        """The folder holding one sub-folder per table."""
        return self.root / "tpch"

    def table(self, name: str) -> Path:
        """One table's folder of Parquet parts."""
        return self.tables / name


def parts(table: str, scale: float) -> int:
    """Files to write for ``table`` at ``scale``."""
    rows = ROWS_PER_SF.get(table, 0) * scale
    return max(1, math.ceil(rows / ROWS_PER_PART))


def bytes_needed(scale: float) -> int:
    """Disk the generation needs at its peak: every converted table plus the largest raw one."""
    converted = sum(BYTES_PER_SF.values()) * scale
    raw_lineitem = 1.1 * BYTES_PER_SF["lineitem"] * scale
    return int(converted + raw_lineitem + 64 * 2**20)


def check_disk(folder: Path, scale: float) -> None:
    """Fail with the numbers when the disk under ``folder`` cannot hold scale ``scale``.

    Raises:
        TpchError: naming the space needed and the space free.
    """
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = bytes_needed(scale)
    if free < need:
        raise TpchError(
            f"TPC-H at scale factor {scale:g} needs about {need / 2**30:.1f} GiB of free disk "
            f"under {folder} (the tables, plus the largest raw table while it is converted); "
            f"{free / 2**30:.1f} GiB is free. Free some space or choose a smaller scale."
        )


def _generator() -> str:
    cli = Path(sys.executable).parent / "tpchgen-cli"
    if cli.is_file():
        return str(cli)
    found = shutil.which("tpchgen-cli")
    if found is None:
        raise TpchError("tpchgen-cli was not found; install it with: pip install 'tierflow[bench]'")
    return found


def _convert(raw: Path, out: Path) -> None:
    """One part in the portable types: decimals as float64, string views as strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(raw)
    fields = []
    for field in table.schema:
        kind = field.type
        if pa.types.is_decimal(kind):
            kind = pa.float64()
        elif pa.types.is_string_view(kind) or pa.types.is_large_string(kind):
            kind = pa.string()
        fields.append(pa.field(field.name, kind, nullable=field.nullable))
    table = table.cast(pa.schema(fields))
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(table, tmp, row_group_size=ROWS_PER_GROUP)
    tmp.rename(out)


def generate(root: Path, scale: float, *, echo: bool = True) -> TpchData:
    """TPC-H at ``scale`` under ``root/tpch`` (kept when already complete); returns it.

    Raises:
        TpchError: no generator, or too little free disk (checked before writing).
    """
    data = TpchData(root, scale)
    if (data.tables / DONE).is_file():
        return data
    check_disk(root, scale)
    cli = _generator()
    shutil.rmtree(data.tables, ignore_errors=True)
    raw = root / "_tpch_raw"
    for table in TABLES:
        n = parts(table, scale)
        if echo:
            print(f"[tpch] SF {scale:g}: {table} in {n} file(s)", file=sys.stderr, flush=True)
        shutil.rmtree(raw, ignore_errors=True)
        subprocess.run(
            [cli, "parquet", "-s", f"{scale:g}", f"--tables={table}", f"--parts={n}",
             f"--output-dir={raw}", "--quiet"],
            check=True,
        )  # fmt: skip
        out = data.table(table)
        out.mkdir(parents=True, exist_ok=True)
        files = sorted(raw.rglob("*.parquet"))
        if not files:
            raise TpchError(f"tpchgen-cli wrote no {table} files under {raw}")
        for i, file in enumerate(files, 1):
            _convert(file, out / f"{table}.{i}.parquet")
            file.unlink()
    shutil.rmtree(raw, ignore_errors=True)
    (data.tables / DONE).write_text(f"scale {scale:g}\n")
    return data


if __name__ == "__main__":
    generate(Path(sys.argv[1]), float(sys.argv[2]))
