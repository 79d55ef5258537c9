#!/usr/bin/env bash
# CI: the file and kernel tests against a build of _core with AddressSanitizer and
# UndefinedBehaviorSanitizer (issue 17). Own virtualenv (.venv-asan) and build folder
# (build/asan); the TF op and CUDA are not built. Python itself is not instrumented: libasan is
# preloaded so it comes first, leak checking is off (the interpreter's own allocations would
# drown it), and any ASan/UBSan report aborts the process, so the test (or the corpus child)
# that triggered it fails.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
# FASTMOMENTS_SANITIZE_REUSE=1 (local use): keep an existing .venv-asan and build/asan.
if [ "${FASTMOMENTS_SANITIZE_REUSE:-0}" != 1 ] || [ ! -x .venv-asan/bin/python ]; then
  rm -rf .venv-asan build/asan
  python3 -m venv .venv-asan
  .venv-asan/bin/pip install -q numpy pybind11 scikit-build-core cmake ninja
fi
.venv-asan/bin/pip install -q --no-build-isolation -C build-dir=build/asan \
  -C cmake.build-type=RelWithDebInfo -C cmake.define.FASTMOMENTS_SANITIZE=ON \
  -C cmake.define.FASTMOMENTS_CUDA=OFF -C cmake.define.FM_WITH_TF=OFF ".[test]"
built=$(date +%s)
# libasan first; libstdc++ with it, since python does not link it and ASan must find the real
# __cxa_throw when it starts (else "CHECK failed ... real___cxa_throw" at the first C++ throw).
libasan=$(${CXX:-g++} -print-file-name=libasan.so)
libstdcxx=$(${CXX:-g++} -print-file-name=libstdc++.so)
if [ ! -e "$libasan" ] || [ ! -e "$libstdcxx" ]; then
  echo "sanitize.sh: libasan.so/libstdc++.so not found (gcc's libasan is needed)" >&2
  exit 1
fi
preload="$libasan $libstdcxx"
# ASan: no leak check (CPython's own allocations), abort at the first report; a huge
# allocation returns NULL (numpy's MemoryError) rather than aborting; a small quarantine keeps
# the corpus test's peak-RSS bounds meaningful; SIGBUS stays with fastmoments' own handler (its
# truncated-map tests). UBSan: stop at the first
# report with a stack trace; .ci/ubsan.supp lists the open findings it lets pass.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1:quarantine_size_mb=16:handle_sigbus=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:abort_on_error=1:suppressions=$PWD/.ci/ubsan.supp"
# Slower doors under ASan: more time before a door counts as a hang.
export FASTMOMENTS_UNTRUSTED_TIMEOUT=${FASTMOMENTS_UNTRUSTED_TIMEOUT:-20}
LD_PRELOAD="$preload" .venv-asan/bin/python -c "import fastmoments, fastmoments._core as c; print('sanitized _core:', c.__file__)"
# --capture=sys: a sanitizer report (written to fd 2 by the runtime) reaches the log even when
# it aborts pytest itself.
LD_PRELOAD="$preload" .venv-asan/bin/python -m pytest -q -p no:cacheprovider --capture=sys \
  tests/test_stream.py tests/test_compute.py tests/test_bad_input.py tests/test_untrusted.py \
  tests/test_weights.py tests/test_near_overflow.py "$@"
end=$(date +%s)
echo "sanitize.sh: build $((built - start)) s, tests $((end - built)) s, total $((end - start)) s"
