#!/usr/bin/env bash
# Build the MinIO server (the S3-compatible object store of the local profile and the
# tests) from the Go module proxy into .local/minio/bin. MinIO is AGPL-3.0: it is built
# and run as a separate server, never linked into tierflow. Idempotent: an existing
# binary of the pinned version is kept; Go's module and build caches make a rebuild in a
# new checkout quick.
set -euo pipefail
cd "$(dirname "$0")/.."
# MinIO publishes no semver tags; this is the module proxy's pseudo-version of the
# repository's last commit (2026-02-12).
VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
out=.local/minio/bin
stamp=.local/minio/version
if [ -x "$out/minio" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$VERSION" ]; then
  exit 0
fi
scripts/require_go.sh "building MinIO" 1.24
echo "[setup] building MinIO $VERSION from the Go module proxy into $out (first time: minutes)" >&2
mkdir -p "$out"
GOBIN="$PWD/$out" GOFLAGS=-mod=mod go install -ldflags "-s -w" \
  "github.com/minio/minio@$VERSION"
"$out/minio" --version >/dev/null
printf '%s\n' "$VERSION" > "$stamp"
