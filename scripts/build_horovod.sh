#!/usr/bin/env bash
# `make horovod` (and `make test`): build Horovod 0.28.1 (the latest release) from its
# published source against this environment's torch, and install it into .venv.
# Idempotent: the built wheel is kept in a cache outside the checkout (like pip's:
# $TIERFLOW_WHEEL_CACHE, else ~/.cache/tierflow/wheels), so another checkout or a fresh
# .venv installs it in seconds; a stamp records what .venv has.
#
# Horovod 0.28.1 does not build against current torch as published: its CMake files ask
# for C++14 while torch's headers need C++17. The fix applied here, and only it: set
# CMAKE_CXX_STANDARD to 17 in CMakeLists.txt and horovod/torch/CMakeLists.txt. Newer
# CMake releases also refuse the bundled gloo's minimum version, so
# CMAKE_POLICY_VERSION_MINIMUM=3.5 is set for the build.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.28.1
PY=.venv/bin/python
BUILD=.local/build/horovod
WHEELS=${TIERFLOW_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tierflow/wheels}
STAMP=.local/stamps/horovod
say() { echo "[horovod] $*"; }

torch_version=$($PY -c 'import torch; print(torch.__version__)')
want="horovod-$VERSION torch-$torch_version"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && $PY -c 'import horovod.torch' 2>/dev/null; then
  say "ready ($want)"
  exit 0
fi
mkdir -p "$BUILD" "$WHEELS" .local/stamps
WHEELS=$(cd "$WHEELS" && pwd)  # absolute: the build runs in the source folder
wheel=$(ls "$WHEELS"/horovod-$VERSION-*.whl 2>/dev/null | head -1 || true)
python_tag=$($PY -c 'import sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}")')
built_for="$torch_version $python_tag"
if [ -n "$wheel" ] && [ -f "$WHEELS/horovod.torch" ] && [ "$(cat "$WHEELS/horovod.torch")" = "$built_for" ]; then
  say "installing the wheel built before ($wheel)"
else
  say "fetching the source of horovod $VERSION (pip cache)"
  rm -rf "$BUILD"/*
  $PY -m pip download -q --no-deps --no-binary :all: "horovod==$VERSION" -d "$BUILD"
  tar -xzf "$BUILD/horovod-$VERSION.tar.gz" -C "$BUILD"
  src="$BUILD/horovod-$VERSION"
  say "patching C++14 -> C++17 (torch's headers need C++17)"
  sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
    "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
  grep -q 'CMAKE_CXX_STANDARD 17' "$src/CMakeLists.txt"
  grep -q 'CMAKE_CXX_STANDARD 17' "$src/horovod/torch/CMakeLists.txt"
  $PY -m pip install -q 'cmake<4' wheel
  say "building (a few minutes on 2 cores)"
  (
    cd "$src"
    HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
    HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
    CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS="-j$(nproc)" \
      "$OLDPWD/$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$WHEELS" .
  )
  echo "$built_for" > "$WHEELS/horovod.torch"
  wheel=$(ls "$WHEELS"/horovod-$VERSION-*.whl | head -1)
fi
$PY -m pip install -q --no-deps "$wheel"
# Horovod's own runtime dependencies (cloudpickle, psutil, pyyaml, packaging) are
# already in the environment; check that it loads with torch and gloo.
$PY -c 'import horovod.torch as hvd; assert hvd.gloo_built(), "built without gloo"'
echo "$want" > "$STAMP"
say "ready ($want)"
