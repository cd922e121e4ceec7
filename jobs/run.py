"""Run any job in conf/jobs under spark-submit (or plain python): ``jobs/run.py JOB``.

    tierflow spark-submit --master spark://127.0.0.1:27077 \
        --py-files dist/tierflow.zip jobs/run.py orders_clean

Under spark-submit the job runs on the submitted session (the Spark tier); with plain
python it runs on the tier the planner picks, like ``tierflow run``.
"""

from __future__ import annotations

import argparse
import sys

from tierflow.errors import TierflowError
from tierflow.project import Project
from tierflow.spark import under_spark_submit


def main() -> int:
    """Parse the arguments and run the job; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("job", help="job name (conf/jobs/NAME.yaml) or a YAML path")
    parser.add_argument("--data-dir", help="data folder")
    parser.add_argument("--engine", choices=("single", "dask", "spark"))
    args = parser.parse_args()
    project = Project.load(data_dir=args.data_dir)
    engine = "spark" if under_spark_submit() else args.engine
    try:
        record = project.run(project.load_job(args.job), engine=engine)
    except TierflowError as exc:
        print(f"tierflow: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{record.run_id}: {record.status}, {record.rows_out:,} rows to {record.output.get('path')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
