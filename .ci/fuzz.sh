#!/usr/bin/env bash
# CI: the coverage-guided fuzz target for file planning (fuzz/fuzz_files.py, atheris; issue 17),
# time-boxed. Runs the seed corpus fuzz/corpus/ and mutations of it for FASTMOMENTS_FUZZ_SECONDS
# (default 100) and fails on any finding (crash, signal, hang > 10 s, RSS > 2 GiB, an exception
# that is not a ValueError/TypeError/OSError naming the file, a result that disagrees with
# NumPy); the input is printed in base64 and kept under $FASTMOMENTS_FUZZ_ARTIFACTS.
# Needs the project's virtualenv (.ci/run builds it); installs atheris into it.
# FASTMOMENTS_FUZZ_SKIP_KNOWN=1 fuzzes past the issue 17 findings still open (see fuzz_files.py).
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
seconds=${FASTMOMENTS_FUZZ_SECONDS:-100}
"$py" -m pip install -q "atheris>=2.3" || { echo "fuzz.sh: atheris did not install" >&2; exit 1; }
work=$(mktemp -d)
artifacts=${FASTMOMENTS_FUZZ_ARTIFACTS:-$work/artifacts}
mkdir -p "$work/new" "$artifacts"
# New inputs go to a scratch folder (first), the kept corpus is only read.
"$py" fuzz/fuzz_files.py "$work/new" fuzz/corpus -max_total_time="$seconds" -timeout=10 \
  -rss_limit_mb=2048 -artifact_prefix="$artifacts/" -print_final_stats=1 >"$work/log" 2>&1
rc=$?
grep -v -E "^INFO: Instrumenting|^#[0-9]+[[:space:]]+(NEW|REDUCE)" "$work/log" | tail -60
execs=$(grep -E "^stat::number_of_executed_units" "$work/log" | awk '{print $2}')
if [ -z "$execs" ]; then  # a finding stops libFuzzer before its final stats
  execs=$(grep -oE "^#[0-9]+" "$work/log" | tail -1 | tr -d '#')
fi
echo "fuzz.sh: ${execs:-0} executions in at most ${seconds} s (skip known: ${FASTMOMENTS_FUZZ_SKIP_KNOWN:-0}); libFuzzer exit status $rc"
if [ "$rc" -ne 0 ]; then
  echo "fuzz.sh: FINDING; reproduce with: $py fuzz/fuzz_files.py FILE" >&2
  ls -l "$artifacts" >&2
  exit 1
fi
