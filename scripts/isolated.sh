#!/usr/bin/env bash
# Run a command inside a private network namespace that holds only loopback, so nothing
# the command starts can be reached from outside or reach another address. Needs root or
# unprivileged user namespaces; where neither works it says so and runs the command as is
# (every tierflow service binds 127.0.0.1 in any case).
set -euo pipefail
if [ "${TIERFLOW_ISOLATED:-0}" = 1 ]; then
  exec "$@"
fi
inner='ip link set lo up && exec "$@"'
if unshare -n true 2>/dev/null; then
  exec unshare -n -- env TIERFLOW_ISOLATED=1 bash -c "$inner" bash "$@"
elif unshare -r -n true 2>/dev/null; then
  exec unshare -r -n -- env TIERFLOW_ISOLATED=1 bash -c "$inner" bash "$@"
fi
echo "[isolated] no private network namespace possible here (needs root or user namespaces);" \
  "running with loopback-bound services instead" >&2
exec "$@"
