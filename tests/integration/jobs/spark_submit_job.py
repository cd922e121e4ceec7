"""A small job for spark-submit: aggregate on the cluster, write Delta, report where it ran."""

from __future__ import annotations

import json
import sys

from tierflow.spark import get_spark


def main(out: str, report: str) -> None:
    from pyspark.sql import functions as F

    spark = get_spark("tierflow-submit-test")
    df = spark.range(0, 100_000).withColumn("bucket", F.col("id") % 10)
    agg = df.groupBy("bucket").agg(F.sum("id").alias("total"), F.count("*").alias("n"))
    agg.write.format("delta").mode("overwrite").save(out)
    sc = spark.sparkContext
    executors = sc._jsc.sc().getExecutorMemoryStatus().keySet().toString()
    with open(report, "w") as f:
        json.dump({"master": sc.master, "app_id": sc.applicationId, "executors": executors}, f)
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
