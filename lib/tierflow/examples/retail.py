"""A small synthetic retail dataset for the example jobs.

Raw order CSVs, customer JSON lines, a product Parquet file and an existing customers
Delta table for the MERGE example.

Deterministic for a given seed. With ``defects`` (the default) a few raw rows break
their contracts on purpose, one of each kind, so the example jobs show quarantine at
work while staying under their bad-row thresholds.

``python -m tierflow.examples.retail DATA_DIR`` writes it.
"""

from __future__ import annotations

import json
import random
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

COUNTRIES = ("DE", "FR", "NL", "PL", "SE")
SEGMENTS = ("consumer", "business")
CATEGORIES = ("books", "garden", "kitchen", "toys", "tools")
STATUSES = ("placed", "shipped", "delivered", "returned")
ORDER_COLUMNS = (
    "order_id",
    "customer_id",
    "product_id",
    "quantity",
    "unit_price",
    "status",
    "ordered_at",
)


def _customers(rng: random.Random, n: int) -> list[dict[str, object]]:
    start = date(2022, 1, 1)
    return [
        {
            "customer_id": i,
            "name": f"Customer {i:05d}",
            "country": rng.choice(COUNTRIES),
            "segment": rng.choice(SEGMENTS),
            "signup_date": (start + timedelta(days=rng.randrange(700))).isoformat(),
        }
        for i in range(1, n + 1)
    ]


def generate(
    data_dir: Path, *, seed: int = 7, orders: int = 20_000, files: int = 4, defects: bool = True
) -> Path:
    """Write the dataset under ``data_dir``; returns ``data_dir``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import write_deltalake

    rng = random.Random(seed)
    n_customers = max(50, orders // 20)
    customers = _customers(rng, n_customers)
    products: list[dict[str, object]] = [
        {
            "product_id": f"P{i:04d}",
            "category": CATEGORIES[i % len(CATEGORIES)],
            "list_price": round(2 + (i * 7.3) % 90, 2),
        }
        for i in range(200)
    ]
    prices = {str(p["product_id"]): float(str(p["list_price"])) for p in products}
    raw = data_dir / "raw"
    (raw / "orders").mkdir(parents=True, exist_ok=True)
    (data_dir / "ref").mkdir(parents=True, exist_ok=True)

    with (raw / "customers.jsonl").open("w") as out:
        for c in customers:
            out.write(json.dumps(c) + "\n")
        if defects:
            out.write(
                '{"customer_id": 1, "name": "Duplicate of 1", "country": "DE", "segment": "consumer", "signup_date": "2022-02-02"}\n'
            )
            out.write("{this is not json}\n")

    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    rows = []
    for order_id in range(1, orders + 1):
        product = rng.choice(products)
        ordered_at = start + timedelta(minutes=rng.randrange(60 * 24 * 90))
        rows.append([
            str(order_id), str(rng.randrange(1, n_customers + 1)), str(product["product_id"]),
            str(rng.randrange(1, 6)), f"{prices[str(product['product_id'])] * rng.uniform(0.8, 1.0):.2f}",
            rng.choice(STATUSES), ordered_at.strftime("%Y-%m-%dT%H:%M:%S"),
        ])  # fmt: skip
    if defects:
        rows[10][3] = "many"  # rule "type": quantity not an integer
        rows[20][3] = "0"  # rule "range": quantity below 1
        rows[30][5] = "lost"  # rule "allowed": unknown status
        rows[40][6] = ""  # rule "not_null": no order time
        rows[50][0] = rows[49][0]  # rule "unique": order_id twice (both rows quarantined)
    per_file = (len(rows) + files - 1) // files
    for i in range(files):
        chunk = rows[i * per_file : (i + 1) * per_file]
        lines = [",".join(ORDER_COLUMNS)] + [",".join(r) for r in chunk]
        if defects and i == files - 1:
            lines.append("999999,oops")  # parse: too few fields
        (raw / "orders" / f"orders-{i:03d}.csv").write_text("\n".join(lines) + "\n")

    pq.write_table(pa.Table.from_pylist(products), data_dir / "ref" / "products.parquet")

    updates = []
    for c in rng.sample(customers, k=min(40, len(customers))):
        updates.append({**c, "segment": "business" if c["segment"] == "consumer" else "consumer"})
    for i in range(n_customers + 1, n_customers + 21):
        updates.append(
            {
                "customer_id": i,
                "name": f"Customer {i:05d}",
                "country": rng.choice(COUNTRIES),
                "segment": "consumer",
                "signup_date": "2024-03-01",
            }
        )
    with (raw / "customer_updates.jsonl").open("w") as out:
        for u in updates:
            out.write(json.dumps(u) + "\n")

    table = pa.Table.from_pylist(
        [{**c, "signup_date": date.fromisoformat(str(c["signup_date"]))} for c in customers],
        schema=pa.schema([
            ("customer_id", pa.int64()), ("name", pa.string()), ("country", pa.string()),
            ("segment", pa.string()), ("signup_date", pa.date32()),
        ]),
    )  # fmt: skip
    write_deltalake(str(data_dir / "silver" / "customers"), table, mode="overwrite")
    return data_dir


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "data")
    generate(target)
    print(f"example data written to {target}")
