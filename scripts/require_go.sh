#!/usr/bin/env bash
# `scripts/require_go.sh WHAT MIN`: exit non-zero, saying what to do, unless `go` is on
# PATH at version MIN or newer (Debian's own golang package is often older than a
# module's go.mod asks for, and go then fails with a less helpful message).
set -euo pipefail
what=$1 min=$2
fail() {
  echo "[setup] error: $what needs Go $min or newer; $1. Install it from https://go.dev/dl" \
    "(unpack to /usr/local/go, put /usr/local/go/bin on PATH), or Debian's golang-$min-go" \
    "package where the release has it." >&2
  exit 1
}
command -v go >/dev/null 2>&1 || fail "go is not on PATH"
have=$(go env GOVERSION 2>/dev/null | sed -E 's/^go//; s/[^0-9.].*$//')
lowest=$(printf '%s\n%s\n' "$min" "$have" | sort -V | head -1)
[ "$lowest" = "$min" ] || fail "this go is $have"
