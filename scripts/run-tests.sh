#!/usr/bin/env bash
# The test suite as `make test` runs it (inside scripts/isolated.sh). The services the
# session fixtures start live in their own state folder; whatever happens to pytest,
# they are stopped afterwards by the PIDs recorded there.
set -uo pipefail
cd "$(dirname "$0")/.."
export TIERFLOW_STATE_DIR="${TIERFLOW_STATE_DIR:-$PWD/.local/test-services}"
export RAY_USAGE_STATS_ENABLED=0
.venv/bin/python -m pytest -m "${PYTEST_MARKERS:-not gpu}" "$@"
rc=$?
.venv/bin/tierflow services down >/dev/null 2>&1 || true
exit $rc
