#!/usr/bin/env bash
# The soak test under AddressSanitizer and UBSan: builds build-asan (through
# scripts/build, so what is missing gets installed), then runs the CTest test
# labelled "soak" (tests/e2e/soak.py) for SOAK_SECONDS (default 600) of mixed
# traffic and prints its summary line.
#
#   bench/soak.sh                 10 minutes
#   SOAK_SECONDS=60 bench/soak.sh a quick look
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$here/scripts/build" --sanitize
export SOAK_SECONDS=${SOAK_SECONDS:-600}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ctest --test-dir "$here/build-asan" -C soak -L soak --output-on-failure -V |
  grep -E "soak:|Ran |OK|FAIL|Error|passed|failed"
