"""Transforms of the NYC flights pipeline (conf/jobs/flights_*.yaml, weather_silver, flight_labels).

Pure functions over Narwhals lazy frames, run unchanged on Polars, Dask and Spark. Times
are built with integer arithmetic only (microseconds since the epoch), because Narwhals
has no date construction that means the same on every engine; the job's
``timestamps_from_epoch_us`` turns them into timestamps.

The data's clock times are New York local times; like :mod:`tierflow.examples.flights`
(the reference these transforms are tested against), they are read as UTC.
"""

from __future__ import annotations

from typing import Any

import narwhals as nw

from tierflow.jobs.registry import transform

Frame = nw.LazyFrame[Any]

MINUTE_US = 60_000_000
DAY_US = 24 * 60 * MINUTE_US

SILVER_COLUMNS = (
    "flight_id", "year", "month", "day", "carrier", "flight", "tailnum", "origin", "dest",
    "distance", "air_time", "hour", "dep_delay", "arr_delay", "sched_dep_at", "dep_at",
    "arr_at", "cancelled", "diverted", "tail_status", "plane_age",
)  # fmt: skip


def days_since_epoch(year: nw.Expr, month: nw.Expr, day: nw.Expr) -> nw.Expr:
    """Days from 1970-01-01 to a proleptic Gregorian date (years from 1970 on).

    The civil-to-days algorithm with floor divisions of non-negative integers only, so
    every engine computes the same value.
    """
    early = month <= 2  # January and February count as months 10 and 11 of the year before
    y = year - nw.when(early).then(nw.lit(1)).otherwise(nw.lit(0))
    era = y // 400
    yoe = y - era * 400
    mp = month + nw.when(early).then(nw.lit(9)).otherwise(nw.lit(-3))
    doy = (mp * 153 + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def minutes_of_day(hhmm: nw.Expr) -> nw.Expr:
    """``1435`` -> ``14 * 60 + 35``."""
    hours = hhmm // 100
    return hours * 60 + (hhmm - hours * 100)


@transform
def clean_flights(flights: Frame, planes: Frame) -> Frame:
    """Silver flights: event times, cancelled/diverted flags, the tail's registry status and age.

    - ``sched_dep_at``: the scheduled departure; ``dep_at``: scheduled + departure delay
      (null for cancelled flights); ``arr_at``: scheduled arrival (the next day when it is
      "earlier" than the departure) + arrival delay (null when the arrival is unknown).
    - ``cancelled``: never departed; ``diverted``: departed, no arrival recorded.
    - ``tail_status``: ``missing`` (no tail number), ``unregistered`` (not in the planes
      table) or ``registered``; ``plane_age``: flight year minus the year built (null
      unless registered with a year).
    """
    registry = planes.select(
        nw.col("tailnum"), nw.col("year").alias("plane_year"), nw.lit(True).alias("_registered")
    )
    day_us = days_since_epoch(nw.col("year"), nw.col("month"), nw.col("day")) * DAY_US
    sched = day_us + (nw.col("hour") * 60 + nw.col("minute")) * MINUTE_US
    arr_sched = day_us + minutes_of_day(nw.col("sched_arr_time")) * MINUTE_US
    return (
        flights.join(registry, on="tailnum", how="left")
        .with_columns(
            sched.alias("sched_dep_at"),
            nw.when(arr_sched < sched)
            .then(arr_sched + DAY_US)
            .otherwise(arr_sched)
            .alias("_arr_sched"),
        )
        .with_columns(
            (nw.col("sched_dep_at") + nw.col("dep_delay") * MINUTE_US).alias("dep_at"),
            (nw.col("_arr_sched") + nw.col("arr_delay") * MINUTE_US).alias("arr_at"),
            nw.col("dep_time").is_null().alias("cancelled"),
            (~nw.col("dep_time").is_null() & nw.col("arr_delay").is_null()).alias("diverted"),
            nw.when(nw.col("tailnum").is_null())
            .then(nw.lit("missing"))
            .when(nw.col("_registered").is_null())
            .then(nw.lit("unregistered"))
            .otherwise(nw.lit("registered"))
            .alias("tail_status"),
            (nw.col("year") - nw.col("plane_year")).cast(nw.Float64).alias("plane_age"),
            nw.col("dep_delay").cast(nw.Float64),
            nw.col("arr_delay").cast(nw.Float64),
            nw.col("distance").cast(nw.Float64),
        )
        .select(*SILVER_COLUMNS)
    )


@transform
def clean_weather(weather: Frame) -> Frame:
    """Silver weather: one observation per airport and hour, at ``obs_at``."""
    day_us = days_since_epoch(nw.col("year"), nw.col("month"), nw.col("day")) * DAY_US
    columns = ("origin", "obs_at", "temp", "dewp", "humid", "wind_speed", "wind_gust",
               "precip", "pressure", "visib")  # fmt: skip
    obs_at = (day_us + nw.col("hour") * 60 * MINUTE_US).alias("obs_at")
    return weather.with_columns(obs_at).select(*columns)


@transform
def label_flights(flights: Frame, valid_from_month: int = 10, test_from_month: int = 12) -> Frame:
    """One row per flight that arrived: delayed on arrival by more than 15 minutes or not.

    The label is known at the scheduled departure (``sched_dep_at``, the row's time), with
    what is known about the flight then: the hour, the distance, the plane's age. The split
    is by month of the year (train before ``valid_from_month``, valid before
    ``test_from_month``, then test), so time-shifted copies of a year split alike.
    """
    month = nw.col("month")
    return flights.filter(~nw.col("cancelled") & ~nw.col("arr_delay").is_null()).select(
        nw.col("flight_id"),
        nw.col("carrier"),
        nw.col("origin"),
        nw.col("dest"),
        nw.col("tailnum"),
        nw.col("sched_dep_at"),
        nw.col("hour").cast(nw.Float64).alias("sched_hour"),
        nw.col("distance"),
        nw.col("plane_age"),
        nw.when(month < valid_from_month)
        .then(nw.lit("train"))
        .when(month < test_from_month)
        .then(nw.lit("valid"))
        .otherwise(nw.lit("test"))
        .alias("split"),
        (nw.col("arr_delay") > 15).alias("delayed"),
    )
