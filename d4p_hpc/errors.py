"""The d4p-hpc error hierarchy.

Every error a user can cause derives from :class:`D4pHpcError`. Messages say
what to do next. ``exit_code`` follows click: 2 for bad input or usage (and
nothing ran), 1 for a failure while doing the work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click


class D4pHpcError(Exception):
    """Base of all d4p-hpc errors; ``str(err)`` is a complete, actionable message."""

    exit_code = 1


class UsageError(D4pHpcError):
    """Bad input from the user, found before anything ran."""

    exit_code = 2


class GraphError(UsageError):
    """The graph file cannot be loaded, or holds no (or several) graphs."""


class InputsError(UsageError):
    """``-i``/``-d``/``-f`` inputs are malformed or name PEs the graph lacks."""


class UnknownMappingError(UsageError):
    """A mapping name that does not exist."""


class MappingError(UsageError):
    """The graph cannot run under the chosen mapping (e.g. stateful PE under dyn_multi)."""


class SpecError(UsageError):
    """A job specification value is invalid."""


class RenderError(D4pHpcError):
    """A job script template could not be rendered."""


class SchedulerError(D4pHpcError):
    """A scheduler command failed, or could not be run here; ``cmd`` and what it said are kept."""

    def __init__(self, message: str, cmd: list[str] | None = None, returncode: int | None = None,
                 stdout: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.cmd = cmd
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class SubmitError(SchedulerError):
    """The scheduler refused a job, or its submit command failed."""


class QueryError(SchedulerError):
    """The scheduler could not be asked about jobs (``squeue``, ``qstat`` failed)."""


class CancelError(SchedulerError):
    """The scheduler refused to cancel a job, or the job is not one of its own."""


class RedisError(D4pHpcError):
    """The per-job Redis could not be started, reached or authenticated."""


class JobNotFoundError(UsageError):
    """A job id or results directory that d4p-hpc cannot find."""


class ResultsError(D4pHpcError):
    """A file of a results directory cannot be read: cut short, changed by hand, unreadable."""


class UntrustedFileError(UsageError):
    """A file d4p-hpc would unpickle could have been written by another user (see :mod:`d4p_hpc.trust`);
    ``why`` says how (``was written by user bob (mode 0600)``)."""

    def __init__(self, message: str, why: str = "") -> None:
        super().__init__(message)
        self.why = why


class ResumeError(UsageError):
    """A run or job cannot be resumed from its checkpoints (none, changed graph or inputs, COMPLETED)."""


class BusyError(UsageError):
    """Another d4p-hpc process writes the results directory (see :func:`d4p_hpc.durable.lock`)."""


class RunFailed(D4pHpcError):
    """A workflow run ended FAILED, CANCELLED or TIMEOUT; ``run.json`` holds the details."""


class JobFailed(RunFailed):
    """A job (or run) of the Python API ended FAILED, CANCELLED or TIMEOUT: ``job``, ``state``,
    ``reason``, the failing ``pe`` (if one raised), its ``error`` line and the ``log_tail``."""

    def __init__(self, job: object, state: str, reason: str, pe: str | None, error: str, log_tail: str) -> None:
        self.job, self.state, self.reason, self.pe, self.error, self.log_tail = job, state, reason, pe, error, log_tail
        where = f"PE {pe} raised " if pe and not error.startswith(f"PE {pe}") else ""
        said = f": {where}{error}" if error else (f": {reason}" if reason else "")
        super().__init__(f"job {getattr(job, 'id', job)} ended {state}{said}"
                         + (f"\n--- the end of its logs ---\n{log_tail}" if log_tail else ""))


class Command(click.Command):
    """Turns every D4pHpcError into ``Error: message`` and its exit code, in one place: for the
    ``d4p-hpc`` group and for the in-job entry points (``python -m d4p_hpc.mappings.redis.worker``,
    ``python -m d4p_hpc.mappings.redis.server``), which are commands of their own. It lives here,
    beside the hierarchy it renders, so that those entry points import no part of the CLI."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        with one_line_usage(ctx):
            return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except D4pHpcError as err:
            # click reads the exit code from the class (a ClassVar since click 8.5)
            refusal = type("Refused", (click.ClickException,), {"exit_code": err.exit_code})
            raise refusal(str(err)) from None


@contextlib.contextmanager
def one_line_usage(ctx: click.Context) -> Iterator[None]:
    """A usage error (an unknown option or command, a bad value) as one ``Error:`` line naming the
    help to read, exit code 2, instead of click's usage block, hint and blank line."""
    try:
        yield
    except click.UsageError as err:
        if err.ctx is None:  # one line already
            raise
        raise click.UsageError(f"{err.format_message()} (see `{ctx.command_path} --help`)") from None
