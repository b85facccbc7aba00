"""The front door of a run: load the graph, build its plan, check the inputs and the mapping and,
to resume, the checkpoint to continue from, all before anything runs (``d4p-hpc run`` and
``d4p-hpc graph``; a Redis worker that rebuilds its driver's run)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from d4p_hpc import durable, liveness, mappings
from d4p_hpc.errors import ResumeError
from d4p_hpc.mappings.checkpoint import store
from d4p_hpc.mappings.runtime.plan import build_plan
from d4p_hpc.mappings.runtime.runner import RunContext
from d4p_hpc.results import check_new, make_private_dir, read_run
from d4p_hpc.supervisor import inside_mpi_world
from d4p_hpc.workflow.loader import load_graph, resolve_feeds


def prepare(source: str, attr: str | None, mapping: str, processes: int, raw_inputs: Any,
            results: str | Path, options: dict | None = None, resume: bool = False,
            writer: bool = False) -> RunContext:
    """Load and check everything a run needs; raises a UsageError (and nothing has run) on bad input.

    ``resume``: continue the run in ``results`` from its newest whole checkpoint, refusing one
    that has completed or still runs, or whose graph, inputs or mapping differ (see
    :func:`d4p_hpc.mappings.checkpoint.store.check_resumable`). ``writer``: this process writes the
    run (``d4p-hpc run``, not ``--check``): it takes the directory's lock first (:func:`lock`), so
    that what is checked here stays true while it runs; in an MPI world, rank 0 takes it."""
    chosen = mappings.get(mapping)
    graph = load_graph(source, attr)
    plan = build_plan(graph, processes)
    feeds = resolve_feeds(plan, raw_inputs)
    chosen.validate(plan)
    path = os.path.abspath(source) if os.path.exists(source) else source
    ctx = RunContext(graph, path, attr, mapping, processes, raw_inputs, Path(results).absolute(), plan, feeds,
                     dict(options or {}))
    if writer and not inside_mpi_world():
        lock(ctx.results, resume)
    if resume:
        ctx.restored = _resumable(ctx)
    if durable.TEST_CHECKPOINT_EVERY and ctx.checkpoints:
        ctx.options["checkpoint_every"] = durable.TEST_CHECKPOINT_EVERY
    return ctx


def lock(results: Path, resume: bool, holder: int | None = None) -> None:
    """Take the lock of the run directory ``results`` for this process's life (see
    :func:`d4p_hpc.durable.lock`; ``holder``: the pid of an mpi launcher that holds it for us).
    A new run creates its directory to lock it, and checks again, locked, that it holds no run."""
    if not resume:
        make_private_dir(results)
    elif not results.is_dir():
        return  # nothing to lock: the resume is refused for want of a run.json
    durable.lock(results, "d4p-hpc run --resume" if resume else "d4p-hpc run", holder=holder)
    if not resume:
        check_new(results)


def _resumable(ctx: RunContext) -> store.Restored:
    record = read_run(ctx.results)
    if record is None:
        raise ResumeError(f"{ctx.results} holds no run to resume (no run.json)")
    state = record.get("state")
    if state == "COMPLETED":
        raise ResumeError(f"the run in {ctx.results} has COMPLETED: there is nothing to resume")
    # a run of an earlier version holds no lock; the ranks of a resumed mpi run find rank 0 running
    if state == "RUNNING" and not inside_mpi_world() and \
            liveness.run_alive(record) is not False:
        raise ResumeError(f"the run in {ctx.results} is still running (pid {record.get('pid')} on "
                          f"{record.get('host')}): cancel it first, or wait for it to end")
    restored = store.load(ctx.results)
    store.check_resumable(ctx, restored)
    return restored
