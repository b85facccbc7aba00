"""What the commands that take a JOB share: the options saying where to look.

A JOB argument is a results directory, or a job id looked up under the results root
(``--results-root``, else the profile's, else ``./d4p-results``), else in the user's index of
submitted jobs: :func:`d4p_hpc.attach` finds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

PROFILE_HELP = "Profile of the config files (~/.config/d4p-hpc/config.toml, ./d4p-hpc.toml)."

F = TypeVar("F", bound=Callable[..., object])


def root_options(command: F) -> F:
    """Decorate an inspection command with --results-root and --profile."""
    command = click.option("--profile", help=PROFILE_HELP)(command)
    return click.option("--results-root", type=click.Path(file_okay=False),
                        help="Where job directories are [default: from the profile, else ./d4p-results].")(command)

