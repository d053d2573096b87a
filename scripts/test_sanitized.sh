#!/usr/bin/env bash
# The test suite against the custom-op library built with AddressSanitizer and
# UndefinedBehaviorSanitizer (CMake option ONNX_SNN_SANITIZE). The library goes into a venv of its
# own, so the normal install is never touched; the test dependencies are taken from the Python that
# runs this (install them first: pip install -c constraints.txt ".[test]").
#   scripts/test_sanitized.sh [pytest arguments]      # default: the CI subset, as `pytest`
# SANITIZE_DIR (default build/sanitize) holds the venv and the CMake build. Needs GCC (g++).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${SANITIZE_DIR:-build/sanitize}
[ -x "$dir/venv/bin/python" ] || python3 -m venv --system-site-packages "$dir/venv"
# install.strip=false keeps the debug info, so that a report names the file and line
"$dir/venv/bin/python" -m pip install --no-deps -q -C build-dir="$dir/cmake" \
  -C cmake.define.ONNX_SNN_SANITIZE=ON -C install.strip=false .

# Python is not instrumented, so the ASan runtime has to be loaded first; libstdc++ with it, or ASan's
# __cxa_throw interceptor finds no real one when a kernel throws (bad attributes are exceptions).
export LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)"
# No leak check: CPython, numpy and onnxruntime keep memory until exit on purpose (interned objects,
# caches, the registered op domains), which LeakSanitizer would report at every exit.
export ASAN_OPTIONS=detect_leaks=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# -P: import the venv's onnx_snn, not the source tree's (which has no library); --capture=sys: a
# report that aborts the run reaches the terminal instead of pytest's captured file descriptor.
# The plugin refuses an uninstrumented library and turns onnxruntime's memory pooling off.
PYTHONPATH=scripts exec "$dir/venv/bin/python" -P -m pytest --capture=sys -p sanitizer_plugin "$@"
