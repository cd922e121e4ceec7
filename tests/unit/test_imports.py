"""``import tierflow`` must stay cheap: no JVM, no pyspark, ray, torch or dask."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = (
    "pyspark",
    "py4j",
    "delta",
    "ray",
    "torch",
    "dask",
    "distributed",
    "polars",
    "pandas",
    "kafka",
)

PROBE = """
import json, os, sys
import tierflow, tierflow.cli, tierflow.config, tierflow.paths, tierflow.jvm
import tierflow.spark, tierflow.services, tierflow.services.manager
import tierflow.stream.commands, tierflow.train.commands, tierflow.config.training
children = []
for task in os.listdir(f"/proc/{os.getpid()}/task"):
    with open(f"/proc/{os.getpid()}/task/{task}/children") as f:
        children += f.read().split()
print(json.dumps({"modules": sorted(sys.modules), "children": children}))
"""


def test_import_loads_no_engine_and_starts_no_process():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout
    result = json.loads(out)
    loaded = {m.split(".")[0] for m in result["modules"]}
    assert loaded.isdisjoint(HEAVY), loaded & set(HEAVY)
    assert result["children"] == [], "importing tierflow started a process"


def test_probe_detects_a_heavy_import():
    # The check above must be able to fail: importing pyspark shows up in sys.modules.
    probe = PROBE.replace("import tierflow,", "import pyspark, tierflow,")
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert "pyspark" in json.loads(out)["modules"]
