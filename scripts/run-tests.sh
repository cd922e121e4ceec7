#!/usr/bin/env bash
# The test suite as `make test` runs it (inside scripts/isolated.sh). The services the
# session fixtures start live in their own state folder; whatever happens to pytest,
# they are stopped afterwards by the PIDs recorded there.
set -uo pipefail
cd "$(dirname "$0")/.."
export TIERFLOW_STATE_DIR="${TIERFLOW_STATE_DIR:-$PWD/.local/test-services}"
export RAY_USAGE_STATS_ENABLED=0
# Ray Train's controller polls its workers every 2 s, and each step of a run's start, its
# checkpoints and its end waits for a poll: about 11 s of every run here (a 111-step DDP
# run 44 s, 33 s at 0.5 s). Polling every 0.5 s costs the steps themselves 5-10% on two
# cores, so tierflow keeps Ray's default and only the suite's many short runs poll faster
# (Ray Train's own setting, passed from each driver to its controller and workers).
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="${RAY_TRAIN_HEALTH_CHECK_INTERVAL_S:-0.5}"
# Ray Train starts a preemption watcher with every worker group: one more actor process,
# which watches for the notices a cloud sends before it takes a node back. Nothing sends
# them here, and its start competes with the workers' on two cores (measured in
# docs/tests.md); tierflow keeps Ray's default elsewhere.
export RAY_TRAIN_ENABLE_PREEMPTION_WATCHER="${RAY_TRAIN_ENABLE_PREEMPTION_WATCHER:-0}"
# The suite's JVMs (Spark drivers, Kafka brokers) live for seconds to minutes on little
# data: the JIT's first tier alone compiles what they run for less than the optimizing
# tier costs on two cores (measured: the Spark conformance module 77.9 s -> 62.5 s).
# Services, demos and benchmarks keep the JVM's defaults; `java` notes the option on
# standard error.
export JDK_JAVA_OPTIONS="${JDK_JAVA_OPTIONS:--XX:TieredStopAtLevel=1}"
# Horovod is an optional extra: `make test` builds it (once, cached) before this script;
# run on its own where it is not built, its tests are left out and it says so.
default_markers="not gpu"
if [ ! -f .local/stamps/horovod ]; then
  default_markers="not gpu and not horovod"
  echo "[tests] Horovod is not built (make horovod): its tests are not selected"
fi
# The slowest tests are listed at the end, to keep an eye on the suite's time.
.venv/bin/python -m pytest -m "${PYTEST_MARKERS:-$default_markers}" --durations=15 "$@"
rc=$?
.venv/bin/tierflow services down >/dev/null 2>&1 || true
exit $rc
