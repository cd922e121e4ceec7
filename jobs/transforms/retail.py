"""Transforms of the example retail jobs (conf/jobs/*.yaml).

Pure functions over Narwhals lazy frames: no IO, no engine in sight. Each runs unchanged
on Polars, Dask and Spark; the conformance suite checks that they agree.
"""

from __future__ import annotations

from typing import Any

import narwhals as nw

from tierflow.jobs.registry import transform

Frame = nw.LazyFrame[Any]


OUTPUT_COLUMNS = (
    "order_id", "customer_id", "product_id", "quantity", "unit_price", "total",
    "status", "ordered_at", "order_date", "country", "segment",
)  # fmt: skip


OUTPUT_COLUMNS = (
    "order_id", "customer_id", "product_id", "quantity", "unit_price", "total",
    "status", "ordered_at", "order_date", "country", "segment",
)  # fmt: skip


@transform
def enrich_orders(orders: Frame, customers: Frame) -> Frame:
    """Orders with their customer's country and segment, line totals and the order date."""
    people = customers.select("customer_id", "country", "segment")
    return (
        orders.join(people, on="customer_id", how="left")
        .with_columns(
            (nw.col("quantity") * nw.col("unit_price")).round(2).alias("total"),
            nw.col("ordered_at").dt.date().alias("order_date"),
            nw.col("country").fill_null("unknown"),
        )
        .select(*OUTPUT_COLUMNS)
    )


@transform
def daily_revenue(orders: Frame, exclude_status: str = "returned") -> Frame:
    """Revenue per day and country, and each country's share of the day's revenue."""
    kept = orders.filter(nw.col("status") != exclude_status)
    # Aggregations stay elementary (one column, one function) so every engine can run
    # them natively; rounding and casts come after.
    daily = kept.group_by("order_date", "country").agg(
        nw.col("total").sum().alias("revenue"),
        nw.len().alias("orders"),
        nw.col("quantity").sum().alias("items"),
        nw.col("total").mean().alias("mean_order_value"),
    )
    # Engines break rounding ties differently (Polars half to even, Spark half up), so
    # only sums of cents are rounded: they have no ties. Means and shares stay exact.
    daily = daily.with_columns(
        nw.col("revenue").round(2),
        nw.col("orders").cast(nw.Int64),
        nw.col("items").cast(nw.Int64),
    )
    share = nw.col("revenue") / nw.col("revenue").sum().over("order_date")
    return daily.with_columns(share.alias("share_of_day"))
