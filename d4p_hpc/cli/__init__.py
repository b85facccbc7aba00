"""The ``d4p-hpc`` command group, the module each of its commands lives in, how they all say a
plan's notices, and the hint for dispel4py's word order (``dispel4py simple g.py``).

A command's module is imported only when that command runs (or prints its own help), so each
module imports what it needs at its top and ``d4p-hpc --help`` loads none of them.

Exit codes follow click: 0 success, 1 a failure while working, 2 bad input or
usage (nothing ran); a run stopped by a signal exits 128 + signal.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterable, Iterator

import click

from d4p_hpc import __version__
from d4p_hpc.errors import Command, one_line_usage

#: command name: (module in this package, the command in it, the first paragraph of its help,
#: which ``d4p-hpc --help`` lists without importing the module)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "cancel": ("jobs", "cancel", "Cancel JOB, pending or running (a SWEEP: its tasks that have not ended)."),
    "graph": ("graph", "graph",
              "Draw GRAPH: its PEs, connections and groupings, with -m the plan's instances and processes."),
    "list": ("jobs", "list_", "All jobs under the results root, oldest first, then a line per sweep."),
    "logs": ("jobs", "logs",
             "The scheduler's stdout/stderr of JOB (or of a SWEEP's task N), then its per-process logs."),
    "render": ("jobs", "render", "Write the job script of GRAPH, to submit by hand (sbatch job.sh / qsub job.sh)."),
    "report": ("report", "report",
               "Write one self-contained HTML page of what JOB (a job id or results directory) or SWEEP did: summary, "
               "efficiency, the graph, throughput, busy time, backlog, pool size, memory, outputs."),
    "results": ("jobs", "results", "State, wall time, items/s per PE and outputs of JOB (of each task of a SWEEP)."),
    "resume": ("jobs", "resume_",
               "Continue JOB (TIMEOUT, CANCELLED or FAILED) from its last checkpoint, as a new job in its directory; "
               "rerun a SWEEP's failed tasks (--failed)."),
    "run": ("run", "run", "Run GRAPH here, with no scheduler, and write a results directory."),
    "status": ("jobs", "status",
               "State of JOBs (ids or results directories) or of a SWEEP; without JOB, of the unfinished jobs and "
               "sweeps."),
    "submit": ("jobs", "submit_",
               "Submit GRAPH as a batch job (with --sweep, one per line of a sweep file, as job arrays); print its "
               "job id and results directory."),
    "wait": ("jobs", "wait", "Wait for JOB (or every task of a SWEEP) to end; exit 0 if it COMPLETED, 1 otherwise."),
}


class _LazyGroup(Command, click.Group):
    """Finds its commands in :data:`COMMANDS`, importing a command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            module, name, _ = COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(f"{__name__}.{module}"), name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple:
        with one_line_usage(ctx), word_order_hint(ctx, list(args)):
            return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """List the commands as click would (each help cut to its first sentence), from the table."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        with formatter.section("Commands"):
            # a throwaway command's short help: click's own cut, without its helper deprecated in 8.5
            formatter.write_dl([(name, click.Command(name, help=COMMANDS[name][2]).get_short_help_str(limit))
                                for name in names])


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="d4p-hpc")
def main() -> None:
    """Run dispel4py workflows locally or as Slurm/PBS jobs."""


def notices(lines: Iterable[str]) -> None:
    """The plan's notices (an instance count scaled down, processes shared), one ``notice:`` line
    each on stderr: ``run`` and ``run --check`` (whose lines ``submit`` relays), ``submit --wait``."""
    for line in lines:
        click.echo(f"notice: {line}", err=True)


@contextlib.contextmanager
def word_order_hint(ctx: click.Context, words: list[str]) -> Iterator[None]:
    """A usage error in ``words`` that is dispel4py's word order (``simple g.py``) says what to type."""
    try:
        yield
    except click.UsageError:
        hint = word_order(words)
        if hint is None:
            raise
        raise click.UsageError(hint) from None  # (no context: the hint says what to type, in one line)


def word_order(words: list[str]) -> str | None:
    """For ``d4p-hpc [run] simple g.py ...`` (``words`` after the command), an error message
    saying ``d4p-hpc run g.py -m simple ...``; None if no mapping name comes before a graph."""
    from d4p_hpc.mappings import MAPPINGS

    for k, word in enumerate(words[:-1]):
        given_as_option = k > 0 and words[k - 1] in ("-m", "--mapping")
        if word in MAPPINGS and not given_as_option and not words[k + 1].startswith("-"):
            rest = words[:k] + words[k + 1:]
            command = " ".join(["d4p-hpc", "run", *rest[:k + 1], "-m", word, *rest[k + 1:]])
            return f"the graph comes first, then -m MAPPING: did you mean `{command}`?"
    return None
