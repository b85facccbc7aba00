"""How long the everyday commands take to answer: ``--help``, ``submit --dry-run`` with and
without the graph check, ``status`` of nothing. The tests assert what these commands import
(``tests/jobs/test_cli_jobs.py``), which does not depend on the machine; the seconds are this
machine's and live here.

    python benchmarks/cli_startup.py              # best and median of 9 runs each
    python benchmarks/cli_startup.py --runs 21
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "word_count.py"


def timed(argv: list[str], runs: int, env: dict) -> tuple[float, float]:
    """Best and median wall seconds of ``runs`` runs of ``argv``."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, env=env, check=True)
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    d4p = str(Path(sys.executable).parent / "d4p-hpc")
    with tempfile.TemporaryDirectory(prefix="d4p-startup-") as tmp:
        env = dict(os.environ, D4P_HPC_RESULTS_ROOT=tmp, XDG_CONFIG_HOME=tmp)
        cases = [
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ("d4p-hpc --help", [d4p, "--help"]),
            ("d4p-hpc run --help", [d4p, "run", "--help"]),
            ("submit --dry-run --no-check", [d4p, "submit", str(EXAMPLE), "--scheduler", "slurm", "--dry-run",
                                             "--no-check"]),
            ("submit --dry-run (graph check)", [d4p, "submit", str(EXAMPLE), "--scheduler", "slurm", "--dry-run"]),
        ]
        print(f"| command | best s | median s |  ({args.runs} runs, load {os.getloadavg()[0]:.1f})")
        print("|---|---|---|")
        for name, argv in cases:
            best, median = timed(argv, args.runs, env)
            print(f"| {name} | {best:.3f} | {median:.3f} |")


if __name__ == "__main__":
    main()
