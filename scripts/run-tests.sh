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
markers="${PYTEST_MARKERS:-$default_markers}"

# One pytest process; the slowest tests are listed at the end, to keep an eye on the
# suite's time. Its services are stopped afterwards, whatever happened to pytest.
suite() {
  .venv/bin/python -m pytest -m "$markers" --durations=15 "$@"
  local rc=$?
  .venv/bin/tierflow services down >/dev/null 2>&1 || true
  # A lane none of whose tests were selected (a file of the other lane named) is no failure.
  [ "$rc" = 5 ] && [ -n "${TIERFLOW_TEST_LANE:-}" ] && rc=0
  return $rc
}

# One pytest process leaves much of two cores idle while it waits for processes to start
# (JVMs, Ray's workers, the lab's hosts). So the suite runs as two pytest processes at
# once, each in a private network namespace of its own (the services' ports are fixed)
# with its own state folder and temporary folder: the modules that start services of
# their own or need Ray (the lab, training, the demo, the secure profile) in one, the rest
# in the other (`OWN_LANE` in tests/conftest.py). The second process's output is printed
# when both have ended. TIERFLOW_TEST_LANES=1, or no second namespace possible here, runs
# one.
lanes="${TIERFLOW_TEST_LANES:-2}"
if [ "$lanes" = 2 ] && ! unshare -n true 2>/dev/null; then
  echo "[tests] no second network namespace possible here: one pytest process"
  lanes=1
fi
if [ "$lanes" != 2 ]; then
  suite "$@"
  exit $?
fi

mkdir -p .local
own_log=.local/tests-own-lane.log
own_state="$TIERFLOW_STATE_DIR-own"
own_tmp="${TMPDIR:-/tmp}/tierflow-tests-own"
mkdir -p "$own_tmp"
echo "[tests] two pytest processes: the lab, Ray's modules, the demo and the secure profile (output" \
  "in $own_log, printed at the end), and the rest"
export -f suite
export markers
# A --basetemp given is the first process's; the second takes the same name with "-own"
# (pytest empties its basetemp at start, so one folder for both would lose files).
own_args=()
basetemp_next=0
for arg in "$@"; do
  if [ "$basetemp_next" = 1 ]; then
    own_args+=("$arg-own")
    basetemp_next=0
    continue
  fi
  case "$arg" in
    --basetemp=*) own_args+=("$arg-own") ;;
    --basetemp) own_args+=("$arg"); basetemp_next=1 ;;
    *) own_args+=("$arg") ;;
  esac
done
# A process group of its own (setsid), so that an interrupted run stops it as a whole.
TIERFLOW_TEST_LANE=own TIERFLOW_STATE_DIR="$own_state" \
  PYTEST_DEBUG_TEMPROOT="$own_tmp" \
  setsid unshare -n -- bash -c 'ip link set lo up && suite "$@"' bash ${own_args[@]+"${own_args[@]}"} \
  >"$own_log" 2>&1 &
own=$!
stop_own() {
  kill -TERM -- "-$own" 2>/dev/null
  wait "$own"
  TIERFLOW_STATE_DIR="$own_state" .venv/bin/tierflow services down >/dev/null 2>&1 || true
}
trap 'stop_own; exit 130' INT TERM
TIERFLOW_TEST_LANE=shared suite "$@"
rc=$?
wait "$own"
own_rc=$?
trap - INT TERM
echo
echo "======== the second pytest process: the lab, Ray's modules, the demo, the secure profile ========"
cat "$own_log"
[ "$rc" = 0 ] && rc=$own_rc
exit $rc
