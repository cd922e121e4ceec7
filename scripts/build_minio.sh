#!/usr/bin/env bash
# Build the MinIO server (the S3-compatible object store of the local profile and the
# tests) from the Go module proxy into .local/minio/bin. MinIO is AGPL-3.0: it is built
# and run as a separate server, never linked into tierflow. Idempotent: an existing
# binary of the pinned version is kept, and the built binary is kept in a cache outside
# the checkout (like the Horovod wheel: $TIERFLOW_BIN_CACHE, else ~/.cache/tierflow/bin),
# so another checkout copies it in a second instead of linking it again (10 s).
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
cache=${TIERFLOW_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tierflow/bin}/minio-$VERSION
mkdir -p "$out"
if [ -x "$cache" ] && "$cache" --version >/dev/null 2>&1; then
  cp "$cache" "$out/minio"
  printf '%s\n' "$VERSION" > "$stamp"
  exit 0
fi
scripts/require_go.sh "building MinIO" 1.24
echo "[setup] building MinIO $VERSION from the Go module proxy into $out (first time: minutes)" >&2
mkdir -p "$out"
GOBIN="$PWD/$out" GOFLAGS=-mod=mod go install -ldflags "-s -w" \
  "github.com/minio/minio@$VERSION"
"$out/minio" --version >/dev/null
mkdir -p "$(dirname "$cache")" && cp "$out/minio" "$cache.tmp" && mv "$cache.tmp" "$cache"
printf '%s\n' "$VERSION" > "$stamp"
