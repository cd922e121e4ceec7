"""TPC-H queries 1, 3, 5, 6, 9 and 18 as transforms (``conf/jobs/tpch_*.yaml``).

Each is the query's SQL written once over Narwhals lazy frames, so it runs on Polars,
Dask and Spark unchanged; the substitution parameters are the TPC-H defaults, given as
keyword arguments a job may override with ``params``. The final ``ORDER BY ... LIMIT``
of Q3 and Q18 is left out: outputs are whole groups, compared sorted (a limit over tied
values would pick different rows on different engines). ``tierflow examples tpch``
generates the data; the benchmarks run these against hand-written peers and DuckDB.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import narwhals as nw

from tierflow.jobs.registry import transform

Frame = nw.LazyFrame[Any]


def _volume() -> nw.Expr:
    return nw.col("l_extendedprice") * (1 - nw.col("l_discount"))


@transform
def tpch_q1(lineitem: Frame, ship_before: date = date(1998, 9, 2)) -> Frame:
    """Q1, pricing summary: sums and means per return flag and line status."""
    volume = _volume()
    return (
        lineitem.filter(nw.col("l_shipdate") <= ship_before)
        .with_columns(volume.alias("disc_price"), (volume * (1 + nw.col("l_tax"))).alias("charge"))
        .group_by("l_returnflag", "l_linestatus")
        .agg(
            nw.col("l_quantity").sum().alias("sum_qty"),
            nw.col("l_extendedprice").sum().alias("sum_base_price"),
            nw.col("disc_price").sum().alias("sum_disc_price"),
            nw.col("charge").sum().alias("sum_charge"),
            nw.col("l_quantity").mean().alias("avg_qty"),
            nw.col("l_extendedprice").mean().alias("avg_price"),
            nw.col("l_discount").mean().alias("avg_disc"),
            nw.len().alias("count_order"),
        )
    )


@transform
def tpch_q3(
    customer: Frame,
    orders: Frame,
    lineitem: Frame,
    segment: str = "BUILDING",
    on: date = date(1995, 3, 15),
) -> Frame:
    """Q3, shipping priority: revenue of the segment's orders still open on ``on``."""
    buyers = customer.filter(nw.col("c_mktsegment") == segment).select("c_custkey")
    open_orders = (
        orders.filter(nw.col("o_orderdate") < on)
        .select("o_orderkey", "o_custkey", "o_orderdate", "o_shippriority")
        .join(buyers, left_on="o_custkey", right_on="c_custkey")
    )
    return (
        lineitem.filter(nw.col("l_shipdate") > on)
        .select("l_orderkey", _volume().alias("volume"))
        .join(open_orders, left_on="l_orderkey", right_on="o_orderkey")
        .group_by("l_orderkey", "o_orderdate", "o_shippriority")
        .agg(nw.col("volume").sum().alias("revenue"))
    )


@transform
def tpch_q5(
    customer: Frame,
    orders: Frame,
    lineitem: Frame,
    supplier: Frame,
    nation: Frame,
    region: Frame,
    region_name: str = "ASIA",
    year: int = 1994,
) -> Frame:
    """Q5, local supplier volume: revenue per nation of the region, within one year.

    The joins start from the smallest side, as a SQL optimiser would order them: the
    region's nations narrow the customers, those the year's orders, and only then is the
    largest table, lineitem, joined. Starting from lineitem (the textual order of the
    query) makes every engine probe a 6-million-row-per-SF table against all of the year's
    orders: 1.7x the time on Polars.
    """
    nations = (
        region.filter(nw.col("r_name") == region_name)
        .select("r_regionkey")
        .join(nation, left_on="r_regionkey", right_on="n_regionkey")
        .select("n_nationkey", "n_name")
    )
    year_orders = orders.filter(
        (nw.col("o_orderdate") >= date(year, 1, 1)) & (nw.col("o_orderdate") < date(year + 1, 1, 1))
    ).select("o_orderkey", "o_custkey")
    return (
        nations.join(
            customer.select("c_custkey", "c_nationkey"),
            left_on="n_nationkey",
            right_on="c_nationkey",
        )
        .join(year_orders, left_on="c_custkey", right_on="o_custkey")
        .select("o_orderkey", "n_nationkey", "n_name")
        .join(
            lineitem.select("l_orderkey", "l_suppkey", _volume().alias("volume")),
            left_on="o_orderkey",
            right_on="l_orderkey",
        )
        # The customer and the supplier are of the same nation: a join on both keys.
        .join(
            supplier.select("s_suppkey", "s_nationkey"),
            left_on=["l_suppkey", "n_nationkey"],
            right_on=["s_suppkey", "s_nationkey"],
        )
        .group_by("n_name")
        .agg(nw.col("volume").sum().alias("revenue"))
    )


@transform
def tpch_q6(
    lineitem: Frame,
    year: int = 1994,
    discount_low: float = 0.05,
    discount_high: float = 0.07,
    quantity_below: float = 24,
) -> Frame:
    """Q6, forecasting revenue change: a selective scan and one sum.

    The discount bounds are given as the literals 0.05 and 0.07 rather than 0.06 -/+ 0.01,
    which in floating point would leave out discounts of exactly 0.07.
    """
    return (
        lineitem.filter(
            (nw.col("l_shipdate") >= date(year, 1, 1))
            & (nw.col("l_shipdate") < date(year + 1, 1, 1))
            & (nw.col("l_discount") >= discount_low)
            & (nw.col("l_discount") <= discount_high)
            & (nw.col("l_quantity") < quantity_below)
        )
        .select((nw.col("l_extendedprice") * nw.col("l_discount")).alias("revenue"))
        .select(nw.col("revenue").sum())
    )


@transform
def tpch_q9(
    part: Frame,
    supplier: Frame,
    lineitem: Frame,
    partsupp: Frame,
    orders: Frame,
    nation: Frame,
    colour: str = "green",
) -> Frame:
    """Q9, product type profit: profit per nation and year on parts of one colour."""
    parts = part.filter(nw.col("p_name").str.contains(colour, literal=True)).select("p_partkey")
    return (
        lineitem.select(
            "l_orderkey", "l_partkey", "l_suppkey", "l_quantity", _volume().alias("volume")
        )
        .join(parts, left_on="l_partkey", right_on="p_partkey")
        .join(
            partsupp.select("ps_partkey", "ps_suppkey", "ps_supplycost"),
            left_on=["l_partkey", "l_suppkey"],
            right_on=["ps_partkey", "ps_suppkey"],
        )
        .join(
            supplier.select("s_suppkey", "s_nationkey"), left_on="l_suppkey", right_on="s_suppkey"
        )
        .join(nation.select("n_nationkey", "n_name"), left_on="s_nationkey", right_on="n_nationkey")
        .join(
            orders.select("o_orderkey", "o_orderdate"), left_on="l_orderkey", right_on="o_orderkey"
        )
        .select(
            nw.col("n_name").alias("nation"),
            # The year type differs by engine (Polars Int32, pandas Int64): one type for all.
            nw.col("o_orderdate").dt.year().cast(nw.Int64).alias("o_year"),
            (nw.col("volume") - nw.col("ps_supplycost") * nw.col("l_quantity")).alias("amount"),
        )
        .group_by("nation", "o_year")
        .agg(nw.col("amount").sum().alias("sum_profit"))
    )


@transform
def tpch_q18(customer: Frame, orders: Frame, lineitem: Frame, quantity_above: float = 300) -> Frame:
    """Q18, large volume customers: orders of more than ``quantity_above`` items."""
    large = (
        lineitem.group_by("l_orderkey")
        .agg(nw.col("l_quantity").sum().alias("order_qty"))
        .filter(nw.col("order_qty") > quantity_above)
        .select("l_orderkey")
    )
    return (
        orders.select("o_orderkey", "o_custkey", "o_orderdate", "o_totalprice")
        .join(large, left_on="o_orderkey", right_on="l_orderkey")
        .join(customer.select("c_custkey", "c_name"), left_on="o_custkey", right_on="c_custkey")
        .join(
            lineitem.select("l_orderkey", "l_quantity"), left_on="o_orderkey", right_on="l_orderkey"
        )
        .group_by("c_name", "o_custkey", "o_orderkey", "o_orderdate", "o_totalprice")
        .agg(nw.col("l_quantity").sum().alias("sum_qty"))
        .rename({"o_custkey": "c_custkey"})
    )
