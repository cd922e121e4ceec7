"""tierflow: batch ETL on size tiers, one feature definition for batch and stream, Ray Train.

Importing this package is cheap on purpose: it starts no JVM and imports none of
pyspark, dask, ray or torch. Engines are imported inside the functions that use them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
