#!/usr/bin/env bash
# Build the Docker Compose CLI plugin from the Go module proxy into .local/docker, so the
# tests can run `docker compose config` on docker-compose.yml (parsing needs no engine).
# Idempotent: an existing binary of the pinned version is kept, and the built binary is
# kept in a cache outside the checkout ($TIERFLOW_BIN_CACHE, else ~/.cache/tierflow/bin),
# so another checkout copies it instead of building it again (10 s with Go's caches warm).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=v2.40.3
MODULE=github.com/docker/compose/v2
out=.local/docker/cli-plugins/docker-compose
if [ -x "$out" ] && "$out" version --short 2>/dev/null | grep -qx "${VERSION#v}"; then
  exit 0
fi
cache=${TIERFLOW_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tierflow/bin}/docker-compose-$VERSION
if [ -x "$cache" ] && "$cache" version --short 2>/dev/null | grep -qx "${VERSION#v}"; then
  mkdir -p "$(dirname "$out")" && cp "$cache" "$out"
  exit 0
fi
scripts/require_go.sh "building docker compose" 1.24
echo "[setup] building docker compose $VERSION from the Go module proxy into .local/docker" >&2
src=$(go mod download -json "$MODULE@$VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
[ -d "$src" ] || { echo "[setup] error: go mod download gave no folder for $MODULE@$VERSION" >&2; exit 1; }
# Its go.mod has exclude directives, which `go install pkg@version` refuses: build it as
# the main module from a writable copy.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$src/." "$work"
chmod -R u+w "$work"
mkdir -p "$(dirname "$out")"
(cd "$work" && go build -trimpath -ldflags "-s -w -X $MODULE/internal.Version=$VERSION" \
  -o "$OLDPWD/$out" ./cmd)
"$out" version --short >/dev/null
mkdir -p "$(dirname "$cache")" && cp "$out" "$cache.tmp" && mv "$cache.tmp" "$cache"
