"""A usage error of any command (an unknown option or command, a bad or missing value, dispel4py's
word order) is one ``Error:`` line on stderr naming what to do, exit code 2, and nothing else:
no usage block, no "Try ... --help" line, no blank line (found by an outside tester: click's
four lines for each)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from d4p_hpc.cli import main

CASES = [
    (["rn", "g.py"], "No such command 'rn'", "d4p-hpc --help"),
    (["--bogus"], "No such option '--bogus'", "d4p-hpc --help"),
    (["run", "g.py", "--mapin", "x"], "Did you mean '--mapping'?", "d4p-hpc run --help"),
    (["run", "g.py", "-i", "-5"], "-5 is not in the range", "d4p-hpc run --help"),
    (["run", "g.py", "-n", "0"], "0 is not in the range", "d4p-hpc run --help"),
    (["submit", "g.py", "--nodes", "x"], "'x' is not a valid integer", "d4p-hpc submit --help"),
    (["status", "--wat"], "Did you mean '--watch'?", "d4p-hpc status --help"),
    (["report"], "Missing argument 'JOB'", "d4p-hpc report --help"),
    (["graph"], "Missing argument 'GRAPH'", "d4p-hpc graph --help"),
    (["simple", "g.py"], "did you mean `d4p-hpc run g.py -m simple`?", None),
    (["run", "simple", "g.py"], "did you mean `d4p-hpc run g.py -m simple`?", None),
]


@pytest.mark.parametrize(("argv", "says", "help_of"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_a_usage_error_is_one_error_line(argv, says, help_of):
    result = CliRunner().invoke(main, argv, prog_name="d4p-hpc")
    lines = result.stderr.splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: ") and says in lines[0], lines
    assert help_of is None or f"(see `{help_of}`)" in lines[0], lines
    assert result.stdout == ""
