#!/usr/bin/env bash
# Regenerates the CUDA driver FFM bindings (bindings/java) from cuda.h with jextract.
#
#   tools/build/regen-bindings.sh
#
# Environment:
#   JEXTRACT   jextract launcher to use (default: `jextract` found on PATH)
#   CUDA_HOME  CUDA toolkit root containing include/cuda.h (default: /usr/local/cuda)
#   JEXTRACT_EXTRA_ARGS  extra jextract arguments, e.g. "-I /usr/lib/llvm-14/lib/clang/14.0.6/include"
#                        when your jextract build does not bundle clang's builtin headers (stddef.h ...)
#
# This script does NOT build jextract. The committed bindings must compile at --release 22, so use a
# jextract that emits JDK 22-compatible code (see bindings/README.md for the revision used).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ARGS_FILE="$ROOT/bindings/cuda-driver.args"
OUT_DIR="$ROOT/bindings/java"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
HEADER="$CUDA_HOME/include/cuda.h"

die() { echo "regen-bindings: error: $*" >&2; exit 1; }

if [[ -n "${JEXTRACT:-}" ]]; then
    [[ -x "$JEXTRACT" ]] || command -v "$JEXTRACT" >/dev/null 2>&1 \
        || die "JEXTRACT='$JEXTRACT' is not an executable"
    JEXTRACT_BIN="$JEXTRACT"
else
    JEXTRACT_BIN="$(command -v jextract || true)"
    [[ -n "$JEXTRACT_BIN" ]] || die "jextract not found on PATH (set JEXTRACT=/path/to/jextract)"
fi
[[ -f "$HEADER" ]] || die "cuda.h not found at $HEADER (set CUDA_HOME to a CUDA toolkit root)"
[[ -f "$ARGS_FILE" ]] || die "argument file missing: $ARGS_FILE"

echo "regen-bindings: jextract = $JEXTRACT_BIN"
echo "regen-bindings: header   = $HEADER"
grep -m1 -E '^#define CUDA_VERSION ' "$HEADER" | sed 's/^/regen-bindings: /'
echo "regen-bindings: sha256   = $(sha256sum "$HEADER" | cut -d' ' -f1)"

cd "$ROOT"   # the args file uses --output bindings/java, relative to the repository root
rm -rf "$OUT_DIR"
# shellcheck disable=SC2086
"$JEXTRACT_BIN" @"$ARGS_FILE" -I "$CUDA_HOME/include" ${JEXTRACT_EXTRA_ARGS:-} "$HEADER"

[[ -f "$OUT_DIR/dev/calibquant/cuda/bindings/CudaDriver.java" ]] \
    || die "jextract finished but CudaDriver.java was not generated"
echo "regen-bindings: wrote $(find "$OUT_DIR" -name '*.java' | wc -l) file(s) under bindings/java"
