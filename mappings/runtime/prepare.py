"""The front door of a run: load the graph, build its plan, check the inputs and the mapping and,
to resume, the checkpoint to continue from, all before anything runs (``d4p-hpc run`` and
``d4p-hpc graph``; a Redis worker that rebuilds its driver's run)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from d4p_hpc import durable, liveness, mappings
from d4p_hpc.errors import BusyError, ResumeError, UsageError
from d4p_hpc.mappings.checkpoint import store
from d4p_hpc.mappings.runtime.plan import build_plan
from d4p_hpc.mappings.runtime.runner import RunContext
from d4p_hpc.results import Layout, check_new, new_private_dir, read_run, remove_created
from d4p_hpc.supervisor import inside_mpi_world
from d4p_hpc.trust import require_checkpoint_dir
from d4p_hpc.workflow.loader import load_graph, resolve_feeds


def prepare(source: str, attr: str | None, mapping: str, processes: int, raw_inputs: Any,
            results: str | Path, options: dict | None = None, resume: bool = False,
            writer: bool = False) -> RunContext:
    """Load and check everything a run needs; raises a UsageError (and nothing has run) on bad input.

    ``resume``: continue the run in ``results`` from its newest whole checkpoint, refusing one
    that has completed or still runs, or whose graph, inputs or mapping differ (see
    :func:`d4p_hpc.mappings.checkpoint.store.check_resumable`). ``writer``: this process writes the
    run (``d4p-hpc run``, not ``--check``): it takes the directory's lock first (:func:`lock`), so
    that what is checked here stays true while it runs; in an MPI world, rank 0 takes it.

    A new run that takes checkpoints (``--checkpoint``, ``--checkpoint-every``) is refused here,
    before anything is written, in a results directory where it could not load them
    (:func:`d4p_hpc.trust.require_checkpoint_dir`); a resume, when it loads its checkpoint. A
    resume keeps the checkpoint interval of the run it continues (its ``run.json``) unless
    ``options`` give another."""
    chosen = mappings.get(mapping)
    graph = load_graph(source, attr)
    plan = build_plan(graph, processes, chosen.roots_spread)
    feeds = resolve_feeds(plan, raw_inputs)
    chosen.validate(plan)
    path = os.path.abspath(source) if os.path.exists(source) else source
    ctx = RunContext(graph, path, attr, mapping, processes, raw_inputs, Path(results).absolute(), plan, feeds,
                     dict(options or {}))
    if not resume and (ctx.options.get("checkpoint") or ctx.options.get("checkpoint_every")):
        require_checkpoint_dir(ctx.results)
    if writer and not inside_mpi_world():
        ctx.created = lock(ctx.results, resume)
    if resume:
        ctx.restored = _resumable(ctx)
    if durable.TEST_CHECKPOINT_EVERY and ctx.checkpoints:
        ctx.options["checkpoint_every"] = durable.TEST_CHECKPOINT_EVERY
    return ctx


def lock(results: Path, resume: bool, holder: int | None = None) -> list[Path]:
    """Take the lock of the run directory ``results`` for this process's life (see
    :func:`d4p_hpc.durable.lock`; ``holder``: the pid of an mpi launcher that holds it for us).
    A new run creates its directory to lock it, and checks again, locked, that it holds no run.

    Returns what it created (the directory's missing parents, the directory, its lock file), which
    a run refused at its start removes (:func:`d4p_hpc.mappings.runtime.runner.begin`); a directory
    that cannot be created, or locked, is refused in one line and leaves nothing behind."""
    created: list[Path] = []
    if not resume:
        try:
            created = new_private_dir(results)
        except OSError as exc:
            raise UsageError(f"cannot create the results directory {results}: {exc.strerror or exc}; "
                             "give --results a writable directory") from None
    elif not results.is_dir():
        return created  # nothing to lock: the resume is refused for want of a run.json
    if not os.path.lexists(results / Layout.LOCK):
        created.append(results / Layout.LOCK)
    try:
        durable.lock(results, "d4p-hpc run --resume" if resume else "d4p-hpc run", holder=holder)
        if not resume:
            check_new(results)
    except BusyError:
        raise  # the directory is another writer's now
    except BaseException:
        remove_created(created)
        raise
    return created


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
    if not ctx.options.get("checkpoint_every") and record.get("checkpoint_every"):
        # a resume goes on taking checkpoints as the run did: a second kill must not lose this segment
        ctx.options["checkpoint_every"] = record["checkpoint_every"]
    return restored
