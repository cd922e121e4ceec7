"""``tierflow init DIR``: a new project with one working job, one feature view and its data.

The project is what the README's tutorial walks through: a contract on a CSV of orders
(two of whose rows break it), a transform in ``transforms/``, a Delta sink, and a
feature view over that table. Every file is small and commented, meant to be edited.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tierflow.errors import UsageError

SETTINGS = """\
# Project settings. Paths are relative to this project's folder.
data_dir: data            # job paths are relative to this (--data-dir, TIERFLOW_DATA_DIR)
logs_dir: logs            # run logs and run records (`tierflow runs`)
transform_modules:        # imported so that their @transform functions register
  - transforms
online_store:             # where `tierflow materialize` and `tierflow serve` keep values
  kind: sqlite            # an embedded file; `redis` with a url for a shared store
"""

JOB = """\
name: orders_clean
description: Raw orders checked against their contract, with line totals, into a Delta table.
sources:
  orders:
    format: csv
    path: raw/orders.csv
    columns:                       # the contract: rows that break it are quarantined
      order_id: {type: int64, nullable: false, unique: true}
      customer_id: {type: int64, nullable: false}
      quantity: {type: int64, nullable: false, min: 1, max: 100}
      unit_price: {type: float64, nullable: false, min: 0}
      ordered_at: {type: timestamp, nullable: false}
transform:
  function: order_totals           # transforms/orders.py
sink:
  format: delta
  path: silver/orders
  mode: overwrite
quarantine:
  max_bad_fraction: 0.05           # more bad rows than this fails the run (exit status 1)
"""

VIEW = """\
name: customer_spend
description: What each customer ordered in the last day and week, as of any hour.
entities: [customer_id]
event_time: ordered_at
source:
  format: delta
  path: silver/orders
  columns:
    customer_id: {type: int64, nullable: false}
    ordered_at: {type: timestamp}
    total: {type: float64}
step: 1h
ttl: 30d
features:
  - {name: orders_24h, agg: count, window: 24h}
  - {name: spend_7d, agg: sum, column: total, window: 7d}
  - {name: largest_order_7d, agg: max, column: total, window: 7d}
"""

TRANSFORMS_INIT = '''\
"""The project's transforms (``transform_modules`` in conf/tierflow.yaml imports them)."""
'''

TRANSFORM = '''\
"""Transforms: pure functions over Narwhals lazy frames, registered by name.

They read no files and pick no engine: tierflow hands them the validated sources on the
tier the planner chooses (Polars, Dask or Spark) and writes what they return.
"""

from __future__ import annotations

from typing import Any

import narwhals as nw

from tierflow.jobs.registry import transform


@transform
def order_totals(orders: nw.LazyFrame[Any]) -> nw.LazyFrame[Any]:
    """Each order with its line total (quantity times unit price, in cents precision)."""
    total = (nw.col("quantity") * nw.col("unit_price")).round(2)
    return orders.with_columns(total.alias("total"))
'''

GITIGNORE = "data/\nlogs/\n.local/\n"

README = """\
# {name}

A tierflow project. Try:

```bash
tierflow plan orders_clean          # which tier would run it, and why
tierflow run orders_clean           # validate, transform, write data/silver/orders
tierflow runs                       # what ran, with row counts
tierflow features values customer_spend --as-of 2026-01-08T00:00:00Z
```

`conf/jobs/` holds jobs, `conf/features/` feature views, `transforms/` the Python they
call, `data/raw/orders.csv` the example input (two of its rows break the contract and
are quarantined under `data/_quarantine/`).
"""


def orders_csv(rows: int = 200, seed: int = 7) -> str:
    """The example orders: a week of them for 20 customers, two rows breaking the contract."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    lines = ["order_id,customer_id,quantity,unit_price,ordered_at"]
    for order in range(1, rows + 1):
        at = start + timedelta(minutes=rng.randrange(7 * 24 * 60))
        quantity = rng.randint(1, 5)
        price = rng.choice((4.5, 9.99, 12.0, 25.0, 49.9))
        stamp = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        lines.append(f"{order},{rng.randint(1, 20)},{quantity},{price},{stamp}")
    # What a contract is for: a quantity out of range and a price that is not a number.
    lines[10] = "10,3,0,9.99,2026-01-02T10:00:00Z"
    lines[20] = "20,5,2,n/a,2026-01-03T11:30:00Z"
    return "\n".join(lines) + "\n"


def init_project(folder: Path) -> list[Path]:
    """Write a new project into ``folder`` (created; it must hold no project yet).

    Returns:
        The files written.

    Raises:
        UsageError: ``folder`` already holds a tierflow project or other files.
    """
    folder = folder.resolve()
    if (folder / "conf" / "tierflow.yaml").exists():
        raise UsageError(f"{folder} already holds a tierflow project (conf/tierflow.yaml)")
    if folder.exists() and any(folder.iterdir()):
        raise UsageError(f"{folder} is not empty: `tierflow init` writes into a new folder")
    files = {
        "conf/tierflow.yaml": SETTINGS,
        "conf/jobs/orders_clean.yaml": JOB,
        "conf/features/customer_spend.yaml": VIEW,
        "transforms/__init__.py": TRANSFORMS_INIT,
        "transforms/orders.py": TRANSFORM,
        "data/raw/orders.csv": orders_csv(),
        ".gitignore": GITIGNORE,
        "README.md": README.format(name=folder.name),
    }
    written = []
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
