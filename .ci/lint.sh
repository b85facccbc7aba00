#!/bin/bash
# .ci/lint.sh - the static checks CI runs before the tests (.ci/run's `lint` phase); any finding fails.
#   ruff        ruff check on the packages (d4p_hpc/, mappings/), the tests and the benchmarks, rules from pyproject's [tool.ruff]
#   mypy        mypy as pyproject's [tool.mypy] says, on the installed layout: mypy cannot follow
#               package-dir (mappings/ is d4p_hpc.mappings) nor the editable install's import hook,
#               so it runs in a temporary tree of links laid out like the install (built from
#               [tool.setuptools.package-dir]); its paths are printed as the checkout's again
#   golden      shellcheck on every golden job script (tests/golden/*/*.sh), with the flags of
#               tests/test_render.py
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

TREE=$(mktemp -d "${TMPDIR:-/tmp}/d4p-lint.XXXXXX")
trap 'rm -rf "$TREE"' EXIT

# shellcheck disable=SC2317  # called through check
mypy_installed_layout() {
  local sed_script
  # the tree: one link per entry of each package's folder, a folder of its own where another
  # package lives inside (d4p_hpc/ holds links to d4p_hpc/*, and d4p_hpc/mappings -> mappings/);
  # prints the sed script that turns the tree's paths back into the checkout's
  sed_script=$("$PY" - "$REPO" "$TREE" <<'EOF'
import os, sys
from pathlib import Path
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: a dependency of the project there
    import tomli as tomllib

repo, tree = Path(sys.argv[1]), Path(sys.argv[2])
mapped = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
dirs = {tuple(pkg.split(".")): repo / src for pkg, src in mapped.items()}
for parts, src in sorted(dirs.items()):
    dest = tree.joinpath(*parts)
    if any(other[:len(parts)] == parts and other != parts for other in dirs):
        dest.mkdir(parents=True, exist_ok=True)
        for entry in sorted(src.iterdir()):
            if entry.name != "__pycache__" and not (dest / entry.name).exists():
                (dest / entry.name).symlink_to(entry)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink():  # an entry of the parent package's folder: the mapping wins
            dest.unlink()
        dest.symlink_to(src, target_is_directory=True)
    rel = src.relative_to(repo).as_posix()
    if "/".join(parts) != rel:
        print(f"s#^{'/'.join(parts)}/#{rel}/#")
EOF
) || return 2
  # cwd is the tree, so d4p_hpc is found there and nowhere else; no cache: a one-off run
  (cd "$TREE" && "$PY" -m mypy --config-file "$REPO/pyproject.toml" --cache-dir=/dev/null) \
    | sed -e "$sed_script"
}

check ruff "$PY" -m ruff check --no-cache "${RUFF_PATHS[@]}"
check mypy mypy_installed_layout
shopt -s nullglob
GOLDEN=(tests/golden/*/*.sh)
if [ ${#GOLDEN[@]} = 0 ]; then
  check shellcheck sh -c 'echo "no golden job scripts under tests/golden/" >&2; exit 1'
else
  # the flags of tests/test_render.py::test_shellcheck_is_clean_on_every_golden_script
  check shellcheck shellcheck --shell=bash --severity=warning "${GOLDEN[@]}"
fi

printf '%s\n' "${SUMMARY[@]}"
exit "$failed"
