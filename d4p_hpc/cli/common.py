"""What the commands that take a JOB share: the results root they look under, and the lookup.

A JOB argument is a results directory, or a job id looked up under the results root
(``--results-root``, else the profile's, else ``./d4p-results``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from d4p_hpc.errors import UsageError
from d4p_hpc.jobs import state
from d4p_hpc.submission import config

PROFILE_HELP = "Profile of the config files (~/.config/d4p-hpc/config.toml, ./d4p-hpc.toml)."

F = TypeVar("F", bound=Callable[..., object])


def root_options(command: F) -> F:
    """Decorate an inspection command with --results-root and --profile."""
    command = click.option("--profile", help=PROFILE_HELP)(command)
    return click.option("--results-root", type=click.Path(file_okay=False),
                        help="Where job directories are [default: from the profile, else ./d4p-results].")(command)


def root(results_root: str | None, profile: str | None) -> Path:
    """The results root given, else the profile's."""
    try:
        return Path(results_root).resolve(strict=Path(results_root).is_symlink()) if results_root \
            else config.results_root(profile)
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop, before Python 3.13
        raise UsageError(f"results root {results_root or '(from the profile)'} cannot be used: {exc}; "
                         "give --results-root a directory") from None


def find(job: str, results_root: str | None, profile: str | None) -> state.Job:
    """The job a JOB argument names."""
    return state.find(job, root(results_root, profile))
