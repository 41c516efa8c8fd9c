#!/usr/bin/env bash
# Build llama.cpp's `llama-server` (CPU, static) from the llama.cpp source vendored in the pinned
# llama-cpp-python sdist, and cache it per user, keyed by that version. A second run prints the
# cached path at once. The binary's path is the last line on stdout; everything else goes to
# stderr. ~9 min on 2 cores. Needs pip (to fetch the sdist), cmake and a C++17 compiler; the
# build itself needs no network (no curl, no OpenSSL, no prebuilt web UI download).
#   PARAFILL_BUILD_JOBS  parallel compile jobs (default 2)
#   XDG_CACHE_HOME       cache root (default ~/.cache)
set -euo pipefail

VERSION=0.3.36
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/parafill-build/llama-server-$VERSION"
BIN="$CACHE/llama-server"
PYTHON="${PYTHON:-python3}"

if [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi

mkdir -p "$(dirname "$CACHE")"
# One build at a time per cache; a run that waited here finds the binary and returns it.
exec 9>"$CACHE.lock"
flock 9
if [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi

WORK="$(mktemp -d "$CACHE.work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS
{
    "$PYTHON" -m pip download -q --no-deps --no-binary :all: \
        "llama-cpp-python==$VERSION" -d "$WORK"
    tar -xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK"
    cmake -S "$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp" -B "$WORK/build" \
        -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_SERVER=ON \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
    cmake --build "$WORK/build" --target llama-server -j "${PARAFILL_BUILD_JOBS:-2}"
} >&2

mkdir -p "$CACHE"
cp "$WORK/build/bin/llama-server" "$BIN.partial"
printf 'llama-cpp-python %s (vendored llama.cpp), built %s in %ss\n' \
    "$VERSION" "$(date -u +%FT%TZ)" "$((SECONDS - start))" >"$CACHE/BUILD_INFO"
mv "$BIN.partial" "$BIN"
echo "built in $((SECONDS - start))s" >&2
echo "$BIN"
