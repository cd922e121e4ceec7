#!/usr/bin/env bash
# The multi-host scenario on its own: hosts as network namespaces joined by a bridge of
# their own, a Kafka/Spark/Ray/Redis cluster across them, jobs and daemons while one host
# is cut off. Needs root. Results and logs in WORK (default .local/multihost/<time>).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-.local/multihost/$(date +%Y%m%dT%H%M%S)}
scripts/isolated.sh .venv/bin/python -m tests.multihost.run "$work"
echo "result: $work/result.json"
