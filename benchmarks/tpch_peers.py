"""TPC-H q1, q3, q5, q6, q9 and q18 written by hand, the way a user of each tool would.

Each function reads the generated Parquet tables under ``tables`` and writes its result
as a Delta table at ``out``: Polars (lazy scans, the streaming engine), DuckDB (SQL over
``read_parquet``), pandas (whole columns in memory), Dask (``dd.read_parquet`` on the
shared cluster) with ``deltalake`` writing, and PySpark with delta-spark. The queries are
the same as tierflow's jobs (``jobs/transforms/tpch.py``): no final ORDER BY/LIMIT.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

Q1_DATE, Q3_DATE = date(1998, 9, 2), date(1995, 3, 15)
Y1994, Y1995 = date(1994, 1, 1), date(1995, 1, 1)


def write_delta(table: Any, out: Path) -> None:
    """What a user of pandas/Polars/DuckDB/Dask writes Delta with: ``deltalake``."""
    from deltalake import write_deltalake

    write_deltalake(str(out), table, mode="overwrite", schema_mode="overwrite")


# --- Polars ---------------------------------------------------------------------------


def polars(query: str, tables: Path, out: Path) -> None:
    """The query with Polars' lazy API on its streaming engine."""
    import polars as pl

    def scan(name: str) -> pl.LazyFrame:
        return pl.scan_parquet(tables / name / "*.parquet")

    c = pl.col
    volume = c("l_extendedprice") * (1 - c("l_discount"))
    if query == "q1":
        frame = (
            scan("lineitem").filter(c("l_shipdate") <= Q1_DATE)
            .with_columns(volume.alias("disc_price"),
                          (volume * (1 + c("l_tax"))).alias("charge"))
            .group_by("l_returnflag", "l_linestatus")
            .agg(c("l_quantity").sum().alias("sum_qty"),
                 c("l_extendedprice").sum().alias("sum_base_price"),
                 c("disc_price").sum().alias("sum_disc_price"), c("charge").sum().alias("sum_charge"),
                 c("l_quantity").mean().alias("avg_qty"), c("l_extendedprice").mean().alias("avg_price"),
                 c("l_discount").mean().alias("avg_disc"), pl.len().alias("count_order"))
        )  # fmt: skip
    elif query == "q3":
        customers = scan("customer").filter(c("c_mktsegment") == "BUILDING")
        orders = (
            scan("orders")
            .filter(c("o_orderdate") < Q3_DATE)
            .join(customers, left_on="o_custkey", right_on="c_custkey")
        )
        frame = (
            scan("lineitem").filter(c("l_shipdate") > Q3_DATE)
            .join(orders, left_on="l_orderkey", right_on="o_orderkey")
            .group_by("l_orderkey", "o_orderdate", "o_shippriority")
            .agg(volume.sum().alias("revenue"))
        )  # fmt: skip
    elif query == "q5":
        frame = (
            scan("region").filter(c("r_name") == "ASIA")
            .join(scan("nation"), left_on="r_regionkey", right_on="n_regionkey")
            .join(scan("customer"), left_on="n_nationkey", right_on="c_nationkey")
            .join(scan("orders").filter((c("o_orderdate") >= Y1994) & (c("o_orderdate") < Y1995)),
                  left_on="c_custkey", right_on="o_custkey")
            .join(scan("lineitem"), left_on="o_orderkey", right_on="l_orderkey")
            .join(scan("supplier"), left_on=["l_suppkey", "n_nationkey"],
                  right_on=["s_suppkey", "s_nationkey"])
            .group_by("n_name").agg(volume.sum().alias("revenue"))
        )  # fmt: skip
    elif query == "q6":
        frame = scan("lineitem").filter(
            (c("l_shipdate") >= Y1994) & (c("l_shipdate") < Y1995)
            & c("l_discount").is_between(0.05, 0.07) & (c("l_quantity") < 24)
        ).select((c("l_extendedprice") * c("l_discount")).sum().alias("revenue"))  # fmt: skip
    elif query == "q9":
        frame = (
            scan("lineitem")
            .join(scan("part").filter(c("p_name").str.contains("green", literal=True)),
                  left_on="l_partkey", right_on="p_partkey")
            .join(scan("partsupp"), left_on=["l_partkey", "l_suppkey"],
                  right_on=["ps_partkey", "ps_suppkey"])
            .join(scan("supplier"), left_on="l_suppkey", right_on="s_suppkey")
            .join(scan("orders"), left_on="l_orderkey", right_on="o_orderkey")
            .join(scan("nation"), left_on="s_nationkey", right_on="n_nationkey")
            .select(c("n_name").alias("nation"), c("o_orderdate").dt.year().cast(pl.Int64).alias("o_year"),
                    (volume - c("ps_supplycost") * c("l_quantity")).alias("amount"))
            .group_by("nation", "o_year").agg(c("amount").sum().alias("sum_profit"))
        )  # fmt: skip
    elif query == "q18":
        large = (
            scan("lineitem").group_by("l_orderkey").agg(c("l_quantity").sum().alias("q"))
            .filter(c("q") > 300).select("l_orderkey")
        )  # fmt: skip
        frame = (
            scan("orders").join(large, left_on="o_orderkey", right_on="l_orderkey")
            .join(scan("customer"), left_on="o_custkey", right_on="c_custkey")
            .join(scan("lineitem"), left_on="o_orderkey", right_on="l_orderkey")
            .group_by("c_name", "o_custkey", "o_orderkey", "o_orderdate", "o_totalprice")
            .agg(c("l_quantity").sum().alias("sum_qty")).rename({"o_custkey": "c_custkey"})
        )  # fmt: skip
    else:
        raise ValueError(query)
    frame.collect(engine="streaming").write_delta(str(out), mode="overwrite")


# --- DuckDB ---------------------------------------------------------------------------


def duckdb(query: str, tables: Path, out: Path) -> None:
    """The reference SQL in DuckDB over the Parquet files; the result through deltalake."""
    import duckdb as ddb

    from tierflow.examples.tpch import QUERY_TABLES, REFERENCE_SQL, duckdb_views

    with ddb.connect() as con:
        duckdb_views(con, tables, QUERY_TABLES[query])
        result = con.sql(REFERENCE_SQL[query]).arrow()
        write_delta(result.read_all() if hasattr(result, "read_all") else result, out)


# --- pandas and Dask (the same dataframe code) ----------------------------------------


def _frames(query: str, read: Any) -> Any:
    """The query over pandas-like frames (pandas or Dask); ``read(table, columns)``."""
    if query == "q1":
        li = read("lineitem", ["l_quantity", "l_extendedprice", "l_discount", "l_tax",
                               "l_returnflag", "l_linestatus", "l_shipdate"])  # fmt: skip
        li = li[li["l_shipdate"] <= Q1_DATE]
        li = li.assign(disc_price=li["l_extendedprice"] * (1 - li["l_discount"]))
        li = li.assign(charge=li["disc_price"] * (1 + li["l_tax"]))
        g = li.groupby(["l_returnflag", "l_linestatus"])
        return g.agg(
            sum_qty=("l_quantity", "sum"), sum_base_price=("l_extendedprice", "sum"),
            sum_disc_price=("disc_price", "sum"), sum_charge=("charge", "sum"),
            avg_qty=("l_quantity", "mean"), avg_price=("l_extendedprice", "mean"),
            avg_disc=("l_discount", "mean"), count_order=("l_quantity", "count"),
        )  # fmt: skip
    if query == "q3":
        c = read("customer", ["c_custkey", "c_mktsegment"])
        o = read("orders", ["o_orderkey", "o_custkey", "o_orderdate", "o_shippriority"])
        li = read("lineitem", ["l_orderkey", "l_extendedprice", "l_discount", "l_shipdate"])
        c = c[c["c_mktsegment"] == "BUILDING"][["c_custkey"]]
        o = o[o["o_orderdate"] < Q3_DATE].merge(c, left_on="o_custkey", right_on="c_custkey")
        li = li[li["l_shipdate"] > Q3_DATE]
        li = li.assign(volume=li["l_extendedprice"] * (1 - li["l_discount"]))
        j = li.merge(o, left_on="l_orderkey", right_on="o_orderkey")
        return j.groupby(["l_orderkey", "o_orderdate", "o_shippriority"]).agg(
            revenue=("volume", "sum")
        )
    if query == "q5":
        r = read("region", ["r_regionkey", "r_name"])
        n = read("nation", ["n_nationkey", "n_name", "n_regionkey"])
        c = read("customer", ["c_custkey", "c_nationkey"])
        o = read("orders", ["o_orderkey", "o_custkey", "o_orderdate"])
        li = read("lineitem", ["l_orderkey", "l_suppkey", "l_extendedprice", "l_discount"])
        s = read("supplier", ["s_suppkey", "s_nationkey"])
        o = o[(o["o_orderdate"] >= Y1994) & (o["o_orderdate"] < Y1995)]
        j = (
            r[r["r_name"] == "ASIA"].merge(n, left_on="r_regionkey", right_on="n_regionkey")
            .merge(c, left_on="n_nationkey", right_on="c_nationkey")
            .merge(o, left_on="c_custkey", right_on="o_custkey")
            .merge(li, left_on="o_orderkey", right_on="l_orderkey")
            .merge(s, left_on=["l_suppkey", "n_nationkey"], right_on=["s_suppkey", "s_nationkey"])
        )  # fmt: skip
        j = j.assign(volume=j["l_extendedprice"] * (1 - j["l_discount"]))
        return j.groupby("n_name").agg(revenue=("volume", "sum"))
    if query == "q6":
        li = read("lineitem", ["l_shipdate", "l_discount", "l_quantity", "l_extendedprice"])
        li = li[(li["l_shipdate"] >= Y1994) & (li["l_shipdate"] < Y1995)
                & (li["l_discount"] >= 0.05) & (li["l_discount"] <= 0.07) & (li["l_quantity"] < 24)]  # fmt: skip
        return (li["l_extendedprice"] * li["l_discount"]).to_frame("revenue").sum()
    if query == "q9":
        p = read("part", ["p_partkey", "p_name"])
        s = read("supplier", ["s_suppkey", "s_nationkey"])
        li = read("lineitem", ["l_orderkey", "l_partkey", "l_suppkey", "l_quantity",
                               "l_extendedprice", "l_discount"])  # fmt: skip
        ps = read("partsupp", ["ps_partkey", "ps_suppkey", "ps_supplycost"])
        o = read("orders", ["o_orderkey", "o_orderdate"])
        n = read("nation", ["n_nationkey", "n_name"])
        p = p[p["p_name"].str.contains("green", regex=False)][["p_partkey"]]
        j = (
            li.merge(p, left_on="l_partkey", right_on="p_partkey")
            .merge(ps, left_on=["l_partkey", "l_suppkey"], right_on=["ps_partkey", "ps_suppkey"])
            .merge(s, left_on="l_suppkey", right_on="s_suppkey")
            .merge(o, left_on="l_orderkey", right_on="o_orderkey")
            .merge(n, left_on="s_nationkey", right_on="n_nationkey")
        )  # fmt: skip
        year = j["o_orderdate"].astype("datetime64[s]").dt.year.astype("int64")
        j = j.assign(nation=j["n_name"], o_year=year,
                     amount=j["l_extendedprice"] * (1 - j["l_discount"]) - j["ps_supplycost"] * j["l_quantity"])  # fmt: skip
        return j.groupby(["nation", "o_year"]).agg(sum_profit=("amount", "sum"))
    if query == "q18":
        c = read("customer", ["c_custkey", "c_name"])
        o = read("orders", ["o_orderkey", "o_custkey", "o_orderdate", "o_totalprice"])
        li = read("lineitem", ["l_orderkey", "l_quantity"])
        qty = li.groupby("l_orderkey")["l_quantity"].sum()
        large = qty[qty > 300].reset_index()[["l_orderkey"]]
        j = (
            o.merge(large, left_on="o_orderkey", right_on="l_orderkey").drop(columns="l_orderkey")
            .merge(c, left_on="o_custkey", right_on="c_custkey")
            .merge(li, left_on="o_orderkey", right_on="l_orderkey")
        )  # fmt: skip
        return j.groupby(["c_name", "c_custkey", "o_orderkey", "o_orderdate", "o_totalprice"]).agg(
            sum_qty=("l_quantity", "sum")
        )
    raise ValueError(query)


def _to_arrow(frame: Any, query: str) -> Any:
    import pyarrow as pa

    frame = frame.to_frame().T if query == "q6" else frame.reset_index()
    if query == "q6":
        frame = frame.astype("float64")
    return pa.Table.from_pandas(frame, preserve_index=False)


def pandas(query: str, tables: Path, out: Path) -> None:
    """Whole columns in memory with pandas (``pd.read_parquet`` of the columns used)."""
    import pandas as pd

    def read(name: str, columns: list[str]) -> Any:
        return pd.read_parquet(tables / name, columns=columns)

    write_delta(_to_arrow(_frames(query, read), query), out)


def dask(query: str, tables: Path, out: Path, client: Any) -> None:
    """The same dataframe code on Dask (``dd.read_parquet``), computed on the cluster."""
    import dask.dataframe as dd

    def read(name: str, columns: list[str]) -> Any:
        return dd.read_parquet(str(tables / name), columns=columns)

    result = client.compute(_frames(query, read)).result()
    write_delta(_to_arrow(result, query), out)


# --- PySpark --------------------------------------------------------------------------


def pyspark(query: str, tables: Path, out: Path, spark: Any) -> None:
    """The query with the DataFrame API; Delta written by delta-spark."""
    from pyspark.sql import functions as F

    def read(name: str) -> Any:
        return spark.read.parquet(str(tables / name))

    c = F.col
    volume = c("l_extendedprice") * (1 - c("l_discount"))
    if query == "q1":
        frame = read("lineitem").where(c("l_shipdate") <= F.lit(Q1_DATE)).groupBy(
            "l_returnflag", "l_linestatus"
        ).agg(F.sum("l_quantity").alias("sum_qty"), F.sum("l_extendedprice").alias("sum_base_price"),
              F.sum(volume).alias("sum_disc_price"), F.sum(volume * (1 + c("l_tax"))).alias("sum_charge"),
              F.avg("l_quantity").alias("avg_qty"), F.avg("l_extendedprice").alias("avg_price"),
              F.avg("l_discount").alias("avg_disc"), F.count(F.lit(1)).alias("count_order"))  # fmt: skip
    elif query == "q3":
        cu = read("customer").where(c("c_mktsegment") == "BUILDING")
        o = read("orders").where(c("o_orderdate") < F.lit(Q3_DATE))
        li = read("lineitem").where(c("l_shipdate") > F.lit(Q3_DATE))
        frame = (
            li.join(o.join(cu, o.o_custkey == cu.c_custkey), li.l_orderkey == o.o_orderkey)
            .groupBy("l_orderkey", "o_orderdate", "o_shippriority")
            .agg(F.sum(volume).alias("revenue"))
        )
    elif query == "q5":
        n, s = read("nation"), read("supplier")
        o = read("orders").where(
            (c("o_orderdate") >= F.lit(Y1994)) & (c("o_orderdate") < F.lit(Y1995))
        )
        frame = (
            read("region").where(c("r_name") == "ASIA")
            .join(n, c("r_regionkey") == c("n_regionkey"))
            .join(read("customer"), c("n_nationkey") == c("c_nationkey"))
            .join(o, c("c_custkey") == c("o_custkey"))
            .join(read("lineitem"), c("o_orderkey") == c("l_orderkey"))
            .join(s, (c("l_suppkey") == c("s_suppkey")) & (c("n_nationkey") == c("s_nationkey")))
            .groupBy("n_name").agg(F.sum(volume).alias("revenue"))
        )  # fmt: skip
    elif query == "q6":
        frame = read("lineitem").where(
            (c("l_shipdate") >= F.lit(Y1994)) & (c("l_shipdate") < F.lit(Y1995))
            & c("l_discount").between(0.05, 0.07) & (c("l_quantity") < 24)
        ).agg(F.sum(c("l_extendedprice") * c("l_discount")).alias("revenue"))  # fmt: skip
    elif query == "q9":
        p = read("part").where(c("p_name").contains("green"))
        frame = (
            read("lineitem").join(p, c("l_partkey") == c("p_partkey"))
            .join(read("partsupp"), (c("l_partkey") == c("ps_partkey")) & (c("l_suppkey") == c("ps_suppkey")))
            .join(read("supplier"), c("l_suppkey") == c("s_suppkey"))
            .join(read("orders"), c("l_orderkey") == c("o_orderkey"))
            .join(read("nation"), c("s_nationkey") == c("n_nationkey"))
            .select(c("n_name").alias("nation"), F.year("o_orderdate").cast("long").alias("o_year"),
                    (volume - c("ps_supplycost") * c("l_quantity")).alias("amount"))
            .groupBy("nation", "o_year").agg(F.sum("amount").alias("sum_profit"))
        )  # fmt: skip
    elif query == "q18":
        li = read("lineitem")
        large = li.groupBy("l_orderkey").agg(F.sum("l_quantity").alias("q")).where(c("q") > 300)
        frame = (
            read("orders").join(large.select(c("l_orderkey").alias("k")), c("o_orderkey") == c("k"))
            .join(read("customer"), c("o_custkey") == c("c_custkey"))
            .join(li, c("o_orderkey") == c("l_orderkey"))
            .groupBy("c_name", "c_custkey", "o_orderkey", "o_orderdate", "o_totalprice")
            .agg(F.sum("l_quantity").alias("sum_qty"))
        )  # fmt: skip
    else:
        raise ValueError(query)
    frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(str(out))
