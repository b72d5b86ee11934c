#!/usr/bin/env bash
# Build the kernels with AddressSanitizer + UndefinedBehaviorSanitizer
# (meson's b_sanitize) into .venv-asan/ and run the test suite under them.
#
#   tools/sanitize.sh [pytest args...]
#
# CPython itself is not instrumented, so the sanitizer runtimes are preloaded;
# leak detection is off (CPython's own allocations would drown the report).
# Any ASan report or UBSan finding aborts the run with a non-zero exit.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-asan
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  "meson-python>=0.17" "meson>=1.4" ninja "Cython>=3.1" "numpy>=2.0" "scipy>=1.13"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation \
  -Cbuild-dir=build/asan \
  -Csetup-args=-Db_sanitize=address,undefined -Csetup-args=-Db_lundef=false \
  -Csetup-args=-Ddebug_boundscheck=false \
  -e ".[test]"
ASAN_LIB=$(gcc -print-file-name=libasan.so)
UBSAN_LIB=$(gcc -print-file-name=libubsan.so)
export LD_PRELOAD="$ASAN_LIB:$UBSAN_LIB"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
# The bundled OpenBLAS is not instrumented; its hand-written kernels read
# whole SIMD blocks, which is fine on real hardware but can be flagged.
exec "$VENV/bin/python" -m pytest tests -q -p no:cacheprovider "$@"
