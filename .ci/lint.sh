#!/bin/bash
# .ci/lint.sh - the static checks CI runs before the tests (.ci/run's `lint` phase); any finding fails.
#   ruff        ruff check on the packages (d4p_hpc/, mappings/), the tests and the benchmarks, rules from pyproject's [tool.ruff]
#   mypy        plain `mypy` in the checkout, as pyproject's [tool.mypy] says (d4p_hpc/mappings and
#               d4p_hpc/templates are committed links the file system follows)
#   golden      shellcheck on every golden job script (tests/golden/*/*.sh), with the flags of
#               tests/unit/test_render.py
# All three run even when one fails; one line per tool with its result and time, then the exit code
# (0: all clean). Needs what .ci/install.sh installs: ruff and mypy come with the [test] extra, and
# apt brings shellcheck. Env: PYTHON (default python3) runs ruff and mypy.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
PY=${PYTHON:-python3}
RUFF_PATHS=(d4p_hpc mappings tests benchmarks)

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs() { local d=$(( $(now_ms) - $1 )); printf '%d.%03d' $((d / 1000)) $((d % 1000)); }

SUMMARY=() failed=0
check() {  # check NAME CMD...: run one tool, note its result and time
  local name=$1 t rc=0 shown; shift
  shown="$*"; [ ${#shown} -le 160 ] || shown="${shown:0:157}..."
  echo "--- [lint] $name: $shown"
  t=$(now_ms)
  "$@" || rc=$?
  if [ "$rc" = 0 ]; then
    SUMMARY+=("$(printf '[lint] %-10s ok      %8s s' "$name" "$(secs "$t")")")
  else
    SUMMARY+=("$(printf '[lint] %-10s FAILED  %8s s  rc=%s' "$name" "$(secs "$t")" "$rc")")
    failed=1
  fi
}

check ruff "$PY" -m ruff check --no-cache "${RUFF_PATHS[@]}"
check mypy "$PY" -m mypy --cache-dir=/dev/null
shopt -s nullglob
GOLDEN=(tests/golden/*/*.sh)
if [ ${#GOLDEN[@]} = 0 ]; then
  check shellcheck sh -c 'echo "no golden job scripts under tests/golden/" >&2; exit 1'
else
  # the flags of tests/unit/test_render.py::test_shellcheck_is_clean_on_every_golden_script
  check shellcheck shellcheck --shell=bash --severity=warning "${GOLDEN[@]}"
fi

printf '%s\n' "${SUMMARY[@]}"
exit "$failed"
