"""Batch job definitions (``conf/jobs/*.yaml``): sources with their contracts, one step, a sink.

A job reads named sources, validates every row against the source's contract (bad rows
go to quarantine), runs one step (a registered Python transform or a SQL statement) over
the valid rows, optionally adds a train/valid/test split column, and writes a Parquet or
Delta table.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from tierflow.config.loader import FrozenModel

ColumnType = Literal[
    "string", "int32", "int64", "float32", "float64", "boolean", "date", "timestamp"
]
SourceFormat = Literal["csv", "jsonl", "parquet", "delta"]
SinkFormat = Literal["parquet", "delta"]
WriteMode = Literal["append", "overwrite", "overwrite_partitions", "merge"]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]
EngineName = Literal["single", "dask", "spark"]
ExtraPolicy = Literal["quarantine", "drop", "error"]

_URI = re.compile(r"^[a-z][a-z0-9+.-]*://")


def is_uri(path: str) -> bool:
    """True for ``s3://...``-style locations (left to the engines' filesystems)."""
    return bool(_URI.match(path))


class ColumnContract(FrozenModel):
    """Type and rules of one column. A rule left out is not checked."""

    type: ColumnType
    nullable: bool = True
    unique: bool = False
    min: float | None = None
    max: float | None = None
    allowed: tuple[str | int, ...] | None = None

    @model_validator(mode="after")
    def _rules_fit_type(self) -> ColumnContract:
        numeric = self.type.startswith(("int", "float"))
        if (self.min is not None or self.max is not None) and not numeric:
            raise ValueError(f"min/max need a numeric type, not {self.type}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if self.allowed is not None and self.type not in ("string", "int32", "int64"):
            raise ValueError(f"allowed values need a string or integer type, not {self.type}")
        return self


class RowCheck(FrozenModel):
    """A row-level rule: an expression over the row's columns that must not be false."""

    name: Identifier
    expr: Annotated[str, Field(min_length=1)]


class SourceConfig(FrozenModel):
    """One input: where it is, how to read it, and the contract its rows must meet."""

    format: SourceFormat
    path: Annotated[str, Field(min_length=1)]
    version: Annotated[int, Field(ge=0)] | None = None
    timestamp: datetime | None = None
    columns: dict[Identifier, ColumnContract] | None = None
    checks: tuple[RowCheck, ...] = ()
    unique_key: tuple[Identifier, ...] = ()
    extra_columns: ExtraPolicy = "quarantine"
    csv_delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ","
    csv_null_values: tuple[Annotated[str, Field(min_length=1)], ...] = ()  # e.g. [NA]

    @model_validator(mode="after")
    def _consistent(self) -> SourceConfig:
        if self.format != "delta" and (self.version is not None or self.timestamp is not None):
            raise ValueError("version and timestamp (time travel) apply to delta sources only")
        if self.version is not None and self.timestamp is not None:
            raise ValueError("give a delta source either version or timestamp, not both")
        if self.format == "delta" and any(ch in self.path for ch in "*?["):
            raise ValueError(f"a delta source is one table, not a glob: {self.path!r}")
        if self.format in ("csv", "jsonl") and not self.columns:
            raise ValueError(
                f"{self.format} sources need `columns` (their types are not in the file)"
            )
        if (self.checks or self.unique_key) and not self.columns:
            raise ValueError("row checks and unique_key need `columns`")
        unknown = [k for k in self.unique_key if k not in (self.columns or {})]
        if unknown:
            raise ValueError(f"unique_key names undeclared column(s): {', '.join(unknown)}")
        return self


class TransformStep(FrozenModel):
    """A registered Python transform; its parameters are the source names plus ``params``."""

    function: Identifier
    params: dict[str, Any] = Field(default_factory=dict)


class RandomSplit(FrozenModel):
    """Seeded random split by a hash of key columns.

    The same rows land in the same split on every engine and every run.
    """

    method: Literal["random"]
    key: tuple[Identifier, ...] = Field(min_length=1)
    seed: int = 0
    fractions: dict[Literal["train", "valid", "test"], float]
    column: Identifier = "split"

    @field_validator("fractions")
    @classmethod
    def _sum_to_one(cls, value: dict[str, float]) -> dict[str, float]:
        if any(f < 0 for f in value.values()) or abs(sum(value.values()) - 1.0) > 1e-9:
            raise ValueError(f"fractions must be non-negative and sum to 1, got {value}")
        return value


class TimeSplit(FrozenModel):
    """Split by event time: train before ``valid_from``, valid before ``test_from``, then test."""

    method: Literal["time"]
    time_column: Identifier
    valid_from: datetime
    test_from: datetime
    column: Identifier = "split"

    @model_validator(mode="after")
    def _ordered(self) -> TimeSplit:
        if self.valid_from >= self.test_from:
            raise ValueError("valid_from must be before test_from")
        return self


class SinkConfig(FrozenModel):
    """The output table."""

    format: SinkFormat
    path: Annotated[str, Field(min_length=1)]
    mode: WriteMode = "overwrite"
    partition_by: tuple[Identifier, ...] = ()
    merge_keys: tuple[Identifier, ...] = ()
    schema_evolution: bool = False
    replace_schema: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> SinkConfig:
        if self.replace_schema and self.mode != "overwrite":
            raise ValueError("replace_schema applies to mode overwrite only")
        if self.mode == "merge":
            if self.format != "delta":
                raise ValueError("mode merge needs format delta")
            if not self.merge_keys:
                raise ValueError("mode merge needs merge_keys")
        elif self.merge_keys:
            raise ValueError("merge_keys apply to mode merge only")
        if self.mode == "overwrite_partitions" and not self.partition_by:
            raise ValueError("mode overwrite_partitions needs partition_by")
        return self


class QuarantineConfig(FrozenModel):
    """Where bad rows go and how many a run tolerates before it fails."""

    path: str | None = None
    max_bad_fraction: Annotated[float, Field(ge=0, le=1)] = 0.01
    max_bad_rows: Annotated[int, Field(ge=0)] | None = None


class JobConfig(FrozenModel):
    """A batch job: the whole YAML file."""

    name: Identifier
    description: str = ""
    sources: dict[Identifier, SourceConfig] = Field(min_length=1)
    transform: TransformStep | None = None
    sql: str | None = None
    # int64 columns of microseconds since the epoch that become UTC timestamps after the
    # transform: Narwhals has no conversion that means the same on every engine.
    timestamps_from_epoch_us: tuple[Identifier, ...] = ()
    split: Annotated[RandomSplit | TimeSplit, Field(discriminator="method")] | None = None
    sink: SinkConfig
    quarantine: QuarantineConfig = QuarantineConfig()

    @model_validator(mode="after")
    def _one_step(self) -> JobConfig:
        if self.transform is not None and self.sql is not None:
            raise ValueError("give either transform or sql, not both")
        if self.transform is None and self.sql is None and len(self.sources) > 1:
            raise ValueError("a job with several sources needs a transform or sql step")
        return self

    def quarantine_path(self) -> str:
        """The quarantine folder (relative to the data folder unless absolute)."""
        return self.quarantine.path or f"_quarantine/{self.name}"
