"""A graph here, with no scheduler: run it (``d4p-hpc run``, and the child process of
:func:`d4p_hpc.run`) through the mappings' front door (:func:`~d4p_hpc.mappings.runtime.prepare.prepare`,
then the mapping's ``run``), or draw it with where a mapping would place it (``d4p-hpc graph``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from d4p_hpc import mappings, settings
from d4p_hpc.errors import UsageError
from d4p_hpc.jobs import index, progress
from d4p_hpc.mappings.runtime.prepare import prepare
from d4p_hpc.results import ResultsView, check_new
from d4p_hpc.supervisor import ignore_signals, inside_mpi_world
from d4p_hpc.units import plural
from d4p_hpc.workflow.loader import default_results, parse_inputs


@dataclass(frozen=True)
class Ended(ResultsView):
    """How a run here ended: its results directory and its record, or (``check``) what was checked."""

    directory: Path
    final: dict[str, Any]
    mapping: mappings.Mapping
    #: with ``check``: the one line saying what would run
    checked: str = ""

    @property
    def late_notices(self) -> list[str]:
        """The plan's notices still to say after the run: an MPI rank 0's (the ranks said none at
        their start, lest each say them); the others said theirs before the run."""
        return list(self.final.get("notices") or []) if inside_mpi_world() else []

    @property
    def said_by_another(self) -> bool:
        """Whether another process of the run (MPI rank 0) says how it ended."""
        return bool(self.final.get("secondary"))

    def exit(self) -> None:
        """Leave with the run's exit code, as its mapping leaves (an MPI rank finalises first)."""
        self.mapping.exit(self.final["exit_code"])


def run_here(graph: str, mapping: str = "simple", processes: int | None = None, attr: str | None = None,
             iterations: int | None = None, data: str | None = None, data_file: str | None = None,
             results: str | None = None, redis_url: str | None = None, redis_connection: str | None = None,
             external_workers: bool = False, redis_server: str | None = None, check: bool = False,
             checkpoint_every: float | None = None, checkpoint: bool = False, resume: bool = False,
             notices: Callable[[Iterable[str]], None] = lambda lines: None) -> Ended:
    """Check, then run ``graph`` under ``mapping`` in this process (and those the mapping starts);
    ``notices`` is given the plan's notices before the run starts, so that a slow run explains itself."""
    chosen = mappings.get(mapping)
    raw = parse_inputs(iterations, data, data_file)
    options = {"redis_url": redis_url, "redis_connection": redis_connection,
               "external_workers": external_workers, "redis_server": redis_server, "inputs_file": data_file,
               "checkpoint_every": checkpoint_every, "checkpoint": checkpoint}
    if resume and not results:
        raise UsageError("--resume needs --results DIR: the results directory of the run to continue")
    if results:
        results_dir: str | Path = results
    else:  # (the profiles are read only for this: a job's run, and each MPI rank, is given its directory)
        from d4p_hpc.submission import config

        results_dir = default_results(graph, mapping, config.results_root())
    settings.check()
    _check_local_processes(chosen, processes, external_workers)
    chosen.check(options)
    count = chosen.processes(processes)
    if not check:
        _check_connections(chosen, count, options)
    if not check and not resume and not inside_mpi_world():  # (the ranks of one run share it: rank 0 checks it)
        check_new(results_dir)
    ctx = prepare(graph, attr, mapping, count, raw, results_dir, options, resume, not check)
    # a run of its own (not a job's, which the job's id finds) is found by its id alone, as a job is
    here = not check and not inside_mpi_world() and settings.job_id() is None
    if here and (problem := index.record(Path(ctx.results).name, ctx.results)):
        notices([problem])
    if check or not (inside_mpi_world() or settings.quiet()):
        notices(ctx.plan.notices)
    if check:
        return Ended(Path(results_dir), {}, chosen,
                     f"ok: {plural(len(ctx.plan.pes), 'PE')}, {plural(ctx.plan.instances, 'instance')} under "
                     f"{mapping} with {plural(ctx.processes, 'process')}")
    with progress.live(ctx.results):
        try:
            record = chosen.run(ctx)
        finally:
            # from its end (recorded, or refused) this process only reports and exits with the run's code: a
            # second stop signal (a batch system's, after mpiexec passed the first on) must not kill it first
            ignore_signals()
    return Ended(ctx.results, record, chosen)


def _check_local_processes(chosen: mappings.Mapping, processes: int | None, external: bool) -> None:
    """Refuse a ``-n`` that would fork more processes on this host than it could ever run well
    (the Redis mappings fork theirs too, unless a job script starts the workers on its nodes)."""
    if processes is None or not chosen.forks or external or inside_mpi_world():
        return
    cores = os.cpu_count() or 1
    limit = settings.max_processes()
    if processes > limit:
        raise UsageError(f"-n {processes} would start {processes} processes on this host "
                         f"({plural(cores, 'core')}); the limit is {limit}: set D4P_HPC_MAX_PROCESSES={processes} "
                         "to allow it, or submit a job (d4p-hpc submit) to use more nodes")


def _check_connections(chosen: mappings.Mapping, processes: int, options: dict) -> None:
    """Refuse a run whose own Redis could not take its workers' connections on this host (a job's
    driver, whose Redis runs beside it, is checked by ``submit`` and by that Redis)."""
    if chosen.launch != "redis" or options["external_workers"] or options["redis_url"] or options["redis_connection"]:
        return
    hard = settings.host_nofile_limit()
    if mappings.files_needed(processes) > hard:
        raise UsageError(f"-m {chosen.name} -n {processes} needs {mappings.budget(processes)} here; it is {hard:,} "
                         "(ulimit -Hn): run fewer workers (-n), or raise the limit")


def draw(graph: str, mapping: str | None = None, processes: int | None = None, attr: str | None = None,
         output: str | None = None) -> str:
    """The DOT text of ``graph`` (with ``mapping``: its plan's instances and processes, as ``run``
    would make them), written to ``output`` (.dot, .svg, .png) when given."""
    from d4p_hpc.workflow import drawing

    if output is not None:
        drawing.output_format(output)  # a bad suffix fails before the graph is loaded
    if processes is not None and mapping is None:
        raise UsageError("-n/--processes needs -m/--mapping: the placement depends on both")
    if mapping is None:
        ctx = prepare(graph, attr, "simple", 1, 0, Path(os.getcwd()))
        title = Path(graph).name
    else:
        n = mappings.get(mapping).processes(processes)
        ctx = prepare(graph, attr, mapping, n, 0, Path(os.getcwd()))
        title = f"{Path(graph).name}: {mapping} -n {n}"
    dot = drawing.dot_source(ctx.plan, mapping, title)
    if output is not None:
        drawing.write(dot, output)
    return dot
