"""Drop fetched jars whose artifact pyspark already ships, so Spark keeps its own version.

Maven copies Delta's and spark-sql-kafka's whole runtime closure, which repeats libraries
that pyspark bundles (Hadoop client, Jackson, Parquet, Scala) at other versions. Two
versions of one library on a classpath is how NoSuchMethodError happens.

Usage: python prune_spark_jars.py FOLDER
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

# artifactId-1.2.3[-classifier].jar; the version starts at the first "-<digits>.<digits>".
_VERSIONED = re.compile(r"^(?P<artifact>.+?)-\d+(\.\d+)+.*\.jar$")


def artifact_of(jar_name: str) -> str:
    match = _VERSIONED.match(jar_name)
    return match.group("artifact") if match else jar_name.removesuffix(".jar")


def main(folder: Path) -> int:
    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        print("pyspark is not installed in this interpreter", file=sys.stderr)
        return 1
    shipped = {artifact_of(j.name) for j in (Path(spec.origin).parent / "jars").glob("*.jar")}
    kept, dropped = [], []
    for jar in sorted(folder.glob("*.jar")):
        if artifact_of(jar.name) in shipped:
            jar.unlink()
            dropped.append(jar.name)
        else:
            kept.append(jar.name)
    print(f"spark jars: kept {len(kept)}, dropped {len(dropped)} that pyspark ships")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
