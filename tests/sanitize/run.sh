#!/usr/bin/env bash
# The op tests against an AddressSanitizer + UBSan build of lumo_uti._C.
#
# Builds the CPU module with -fsanitize=address,undefined,float-cast-overflow
# (GCC's "undefined" leaves out float-to-int conversions out of range, NaN
# included; Clang's has them) by tests/sanitize/build.py (CMake directly,
# cached by a hash of csrc/ and CMakeLists.txt), runs a self-check, then runs
# tests/test_ops_*.py on it with libasan preloaded (python itself is not
# instrumented) and the dev hypothesis profile. Any ASan or UBSan report fails
# the run. Needs the package installed (pip install -e ".[test]"), cmake and a
# C++ compiler with the sanitizer runtimes.
#
#   bash tests/sanitize/run.sh                     # all op tests
#   bash tests/sanitize/run.sh -k vq_search        # extra pytest arguments
#   LUMO_SANITIZE=address,undefined bash tests/sanitize/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
SANITIZE=${LUMO_SANITIZE:-address,undefined,float-cast-overflow}

MODULE=$(LUMO_SANITIZE="$SANITIZE" "$PY" tests/sanitize/build.py)
echo "sanitizer build: $MODULE"

# The ASan runtime the module links must come first in the process, and
# libstdc++ right after it: ASan finds the real __cxa_throw when it starts, and
# python itself does not load libstdc++ (without it the first C++ exception
# aborts in ASan's interceptor).
PRELOAD=""
if [[ ",$SANITIZE," == *",address,"* ]]; then
  ASAN_LIB=$(ldd "$MODULE" | awk '/libasan/ {print $3; exit}')
  CXX_LIB=$(ldd "$MODULE" | awk '/libstdc\+\+/ {print $3; exit}')
  if [[ -z "$ASAN_LIB" || ! -e "$ASAN_LIB" ]]; then
    echo "run.sh: the sanitizer build does not link a shared libasan (ldd $MODULE)" >&2
    exit 1
  fi
  PRELOAD="$ASAN_LIB${CXX_LIB:+:$CXX_LIB}"
fi

# detect_leaks=0: Python and torch keep memory until exit by design.
# protect_shadow_gap=0: the CUDA driver maps memory there (GPU machines).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:protect_shadow_gap=0:abort_on_error=1:strict_init_order=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:abort_on_error=1:print_stacktrace=1}
export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-dev}
export LUMO_SANITIZED_MODULE="$MODULE"
export PYTHONPATH="$PWD/tests/sanitize${PYTHONPATH:+:$PYTHONPATH}"
export LD_PRELOAD="$PRELOAD${LD_PRELOAD:+:$LD_PRELOAD}"

if [[ -n "$PRELOAD" ]]; then
  # First make sure a read out of bounds is caught at all (a lying caller).
  if report=$("$PY" tests/sanitize/selfcheck.py 2>&1); then
    echo "$report" >&2
    echo "run.sh: AddressSanitizer missed the self-check's out-of-bounds read" >&2
    exit 1
  fi
  if ! grep -q "heap-buffer-overflow" <<<"$report"; then
    echo "$report" >&2
    echo "run.sh: the self-check failed without an AddressSanitizer report" >&2
    exit 1
  fi
  echo "self-check: AddressSanitizer reports an out-of-bounds read"
fi
# --capture=sys: sanitizer reports go to file descriptor 2 and must reach the log.
"$PY" -m pytest -q --capture=sys -p plugin -m "not slow" tests/test_ops_*.py "$@"
