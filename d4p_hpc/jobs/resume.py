"""``d4p-hpc resume``: continue a job's run from its last checkpoint, as a new job in the same directory.

A job's run may span several jobs, its *segments*: each continues from the newest complete
checkpoint of the one before (see :mod:`d4p_hpc.mappings.checkpoint.store`). Resuming archives the
state markers (and scheduler logs) of the job that ended into ``state/segments/<n>/``, submits the
successor with the same spec plus ``continues`` (the directory) and, from inside a job that
requeues itself (``--requeue``), ``after`` (the successor starts once the job has left: a Slurm
or PBS dependency, a wait on the local scheduler). The directory's ``state/submitted`` then names
the successor, so ``status``, ``wait``, ``cancel`` and ``logs`` follow the run to its current job,
and the job's final state is that of its last segment. A link ``<name>-<successor id>`` beside
the directory lets the successor's id be used as JOB too.

Everything that would make the successor fail at its start is refused first, in one line: a job
still running or pending (or a successor already submitted), one that COMPLETED, no checkpoint, a
graph file or inputs that changed since the checkpoint, another mapping (the check is
``d4p-hpc run --check --resume``).

One resume at a time: it holds the run directory's lock (:func:`d4p_hpc.durable.lock`) from its
check to the record of the successor, so two at once give one successor and the other says who
has the directory. Each step is durable, and a resume killed half way is finished or undone by the
next one (:func:`_recover`): the archive of a segment is built aside and renamed into place, the
markers it holds are removed from ``state/`` only then, and the successor is recorded last.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from d4p_hpc import durable, units
from d4p_hpc.errors import ResumeError
from d4p_hpc.jobs import state as jobs
from d4p_hpc.results import Layout, make_private_dir, now, read_json, read_metrics, read_run, write_bytes, write_json
from d4p_hpc.schedulers import RUN


#: in a segment: the files of a run that started again rather than continue (:func:`archive_segment`)
ATTEMPT = "attempt"
#: what stays in a results directory whose run starts again: the job's own files
_KEPT = frozenset({Layout.SCRIPT, Layout.SPEC, Layout.STATE, Layout.STDOUT, Layout.STDERR, Layout.LOCK})

#: what a successor may change of its job: its time and where it is charged, never what it computes
#: (graph, inputs, mapping and size are the checkpoint's; ``run --check --resume`` holds them)
CHANGEABLE = ("walltime", "signal_seconds", "checkpoint_every", "requeue", "memory", "partition", "account", "qos")


def resume(job: jobs.Job, exit_code: int | None = None, requeue: int | None = None,
           changes: dict | None = None) -> tuple[str, str | None]:
    """Submit the successor of ``job``; return its job id and a warning about its signal time, if any.

    ``exit_code`` is given by a job that resubmits itself at its walltime stop (``--requeue``): it is
    still running, and its segment ends TIMEOUT with that code. ``requeue`` replaces the number of
    automatic resubmissions left (default: the job's own, one less for a job resubmitting itself).
    ``changes``: new values of some of :data:`CHANGEABLE` for the successor (a longer walltime).
    """
    unknown = sorted(set(changes or {}) - set(CHANGEABLE))
    if unknown:
        raise ResumeError(f"a resumed job cannot change {', '.join(unknown)} (its checkpoint holds what it computes); "
                          f"it may change: {', '.join(CHANGEABLE)}")
    from d4p_hpc.submission import precheck
    from d4p_hpc.submission.render import check_syntax, render_script
    from d4p_hpc.submission.spec import JobSpec
    from d4p_hpc.submission.submit import submit

    from_job = exit_code is not None
    if job.scheduler == RUN:
        raise ResumeError(f"{job.directory} is a `d4p-hpc run`, not a job: continue it with d4p-hpc run GRAPH "
                          f"--results {job.directory} --resume")
    ended = None
    if not from_job:
        _refuse_unfinished(job)  # before the lock: a running job holds it, and this says more
    with durable.locked(job.directory, durable.RESUME):
        _recover(job)
        if not from_job:  # another resume may have submitted a successor since
            job = jobs.open_job(job.directory)
            ended = _refuse_unfinished(job)
        saved = read_json(job.layout.spec, dict) or {}
        data = dict(saved.get("spec") or {})
        if not data:
            raise ResumeError(f"{job.directory} has no {Layout.SPEC}: it was not submitted by d4p-hpc")
        left = data.get("requeue", 0)
        if requeue is None:
            requeue = max(0, left - 1) if from_job else left
        spec = JobSpec.from_dict({**data, **(changes or {}), "continues": str(job.directory),
                                  "directory": None, "after": job.job_id if from_job else None, "requeue": requeue})
        precheck.check(spec)
        script = render_script(spec, saved.get("sources"))
        check_syntax(script)
        archive = archive_segment(job, ended=ended)
        try:
            new_id, _ = submit(spec, script, saved.get("sources"))
        except BaseException:
            unarchive(job, archive)
            raise
        if from_job:
            write_json(archive / Layout.FINISHED, {"time": now(), "epoch": time.time(), "state": "TIMEOUT",
                                                   "exit_code": exit_code,
                                                   "reason": f"walltime: continued by job {new_id}"})
        # last: a segment without it is one a killed resume left (see _recover)
        write_json(archive / Layout.SUCCESSOR, {"job_id": new_id, "time": now()})
        _link(job.directory, str(spec.job_name), new_id)
    return new_id, signal_warning(spec)


def _refuse_unfinished(job: jobs.Job) -> jobs.JobStatus:
    """Refuse, in one line, to resume a job that has not ended, or that COMPLETED; return how it ended."""
    current = jobs.status([job])[0]
    if not current.terminal:
        if segments(job):
            raise ResumeError(f"job {job.job_id} continues this run ({current.state}); see d4p-hpc status "
                              f"{job.job_id}")
        raise ResumeError(f"job {job.job_id} is {current.state}: cancel it first (d4p-hpc cancel {job.job_id}) "
                          "or wait for it to end")
    if current.state == "COMPLETED":
        raise ResumeError(f"job {job.job_id} has COMPLETED: there is nothing to resume")
    return current


def signal_warning(spec) -> str | None:
    """Why the pre-walltime signal of ``spec`` may come too late for the run's last checkpoint, if it may."""
    if not spec.checkpoints:
        return None
    # (the manifests' reader, standard library only: no mapping module comes with it)
    from d4p_hpc.mappings.checkpoint.store import signal_seconds_needed

    needed = signal_seconds_needed(Path(spec.continues) if spec.continues else None)
    if spec.warning_seconds >= needed:
        return None
    return (f"--signal-seconds {spec.warning_seconds} may not leave the run time for its checkpoint at the "
            f"walltime signal (about {needed:.0f} s, from the checkpoints so far); it would then resume from "
            "the one before")


def segments(job: jobs.Job) -> list[dict]:
    """The archived segments of ``job``'s run, oldest first: number, job id, state, times, exit code."""
    found = []
    for d in _numbered(job.layout.segments):
        submitted, started, finished = (read_json(d / name, dict) or {}
                                        for name in (Layout.SUBMITTED, Layout.STARTED, Layout.FINISHED))
        found.append({"segment": int(d.name), "job_id": submitted.get("job_id"),
                      "state": finished.get("state") or "FAILED",
                      "reason": finished.get("reason") or f"ended without writing {Layout.STATE}/{Layout.FINISHED}",
                      "started": started.get("epoch"), "ended": finished.get("epoch"),
                      "exit_code": finished.get("exit_code")})
    return found


def _numbered(root: Path) -> list[Path]:
    """The segment directories under ``root``, oldest first (not one being built)."""
    return sorted(d for d in root.iterdir() if d.name.isdigit()) if root.is_dir() else []


def archive_segment(job: jobs.Job, keep_outputs: bool = True, ended: jobs.JobStatus | None = None) -> Path:
    """Archive the job's markers (and a copy of its scheduler logs) as the run's next segment: built
    aside, renamed into place, and only then removed from ``state/`` (the logs emptied).

    ``ended``: how the job ended, as decided without its finished marker if it has none (cancelled,
    killed, its node lost): the segment keeps that, marked inferred, as the scheduler's record of it
    expires; the job's exit trap, if it still runs, writes its own over it (the template's
    ``d4p_mine`` finds the segment).

    Without ``keep_outputs`` (a sweep's task that starts again, having no checkpoint to continue
    from) the run's own files move into the segment's ``attempt/`` too, leaving the directory as a
    job finds it before its run starts."""
    root = make_private_dir(job.layout.segments)
    os.chmod(root, 0o700)  # (earlier versions made it 0755)
    number = max((int(d.name) for d in _numbered(root)), default=0) + 1
    building = make_private_dir(root / f".{number:03d}")
    for src in [job.layout.marker(name) for name in Layout.ARCHIVED] + job.layout.scheduler_logs:
        if src.exists():
            write_bytes(building / src.name, src.read_bytes(), sync=True)
    if ended is not None and ended.terminal and not (building / Layout.FINISHED).exists():
        # (its end time unknown: not the time of this resume, which may be days later)
        write_json(building / Layout.FINISHED, {"time": now(), "epoch": ended.ended, "state": ended.state,
                                                "exit_code": ended.exit_code, "reason": ended.reason,
                                                "inferred": True})
    if not keep_outputs:
        attempt = make_private_dir(building / ATTEMPT)
        for entry in job.directory.iterdir():
            if entry.name not in _KEPT:
                durable.replace(entry, attempt / entry.name)
    archive = root / f"{number:03d}"
    durable.replace(building, archive)
    for name in Layout.ARCHIVED:
        durable.unlink(job.layout.marker(name), missing_ok=True)
    for log in job.layout.scheduler_logs:
        if log.exists():
            durable.truncate(log, 0)  # (not removed: a job that requeues itself still writes to it)
    return archive


def unarchive(job: jobs.Job, archive: Path) -> None:
    """Undo :func:`archive_segment`: the markers back into ``state/``, the logs' lines before theirs,
    a run's files back into place."""
    if (archive / ATTEMPT).is_dir():
        for entry in (archive / ATTEMPT).iterdir():
            durable.replace(entry, job.directory / entry.name)
    for name in Layout.ARCHIVED:
        if (archive / name).exists():
            write_bytes(job.layout.marker(name), (archive / name).read_bytes(), sync=True)
    for log in job.layout.scheduler_logs:
        saved = archive / log.name
        if saved.exists() and (not log.exists() or log.stat().st_size < saved.stat().st_size):
            write_bytes(log, saved.read_bytes() + (log.read_bytes() if log.exists() else b""), sync=True)
    durable.remove_tree(archive)


def _recover(job: jobs.Job) -> None:
    """Finish or undo a resume that was killed half way: an archive it was building is removed; a
    newest segment with no successor recorded is one whose successor was submitted (``state/submitted``
    names another job: it is recorded now) or was not (the segment goes back into ``state/``)."""
    root = job.layout.segments
    if not root.is_dir():
        return
    for d in root.iterdir():
        if not d.name.isdigit():
            durable.remove_tree(d)
    archived = _numbered(root)
    if not archived or (archived[-1] / Layout.SUCCESSOR).exists():
        return
    newest = archived[-1]
    mine = (read_json(newest / Layout.SUBMITTED, dict) or {}).get("job_id")
    current = (read_json(job.layout.marker(Layout.SUBMITTED), dict) or {}).get("job_id")
    if current is not None and current != mine:
        write_json(newest / Layout.SUCCESSOR, {"job_id": current, "time": now(), "recovered": True})
    else:
        unarchive(job, newest)


def _link(directory: Path, name: str, job_id: str) -> None:
    link = directory.parent / f"{name}-{job_id}"
    if link != directory and not link.exists():
        os.symlink(directory.name, link)


def run_elapsed(current: jobs.JobStatus) -> float | None:
    """Seconds the run of the job whose status is ``current`` has run over all its segments: those
    before (their records) and its own so far, as every view of a run counts it; None before it starts."""
    if current.elapsed is None:
        return None
    job = current.job
    if job.scheduler == RUN:
        earlier = (read_run(job.directory) or {}).get("segments") or []
        return current.elapsed + sum(s.get("wall_seconds") or 0 for s in earlier if isinstance(s, dict))
    return current.elapsed + sum(s["ended"] - s["started"] for s in segments(job) if s["started"] and s["ended"])


def describe(current: jobs.JobStatus) -> list[str]:
    """Lines on the segments of the run of the job whose status is ``current`` (for ``status`` and
    ``results``): one per segment, with the items the run record counts for it."""
    job = current.job
    archived = segments(job)
    record = read_run(job.directory) or {}
    if job.scheduler == RUN:  # `d4p-hpc run --resume`: its record alone knows the segments
        # (the last is the run as it is now: its record says RUNNING until it ends, even once it is gone)
        runs = [*record.get("segments", []), {**record, "state": current.state}] if record.get("segments") else []
        return [f"segment {k}: {s.get('state')}, started {s.get('started')}"
                + (f", {s['items']:,} items" if s.get("items") is not None else "") for k, s in enumerate(runs, 1)]
    if not archived:
        return []
    # a segment killed before it wrote its figures is counted by its last samples (metrics.json)
    items = {s.get("job_id"): s.get("items") for s in (read_metrics(job.directory) or {}).get("segments", [])}
    items.update({s.get("job_id"): s.get("items") for s in record.get("segments", []) if s.get("items") is not None})
    items[record.get("job_id")] = record.get("items")
    lines = []
    for s in archived:
        took = units.clock(s["ended"] - s["started"]) if s["started"] and s["ended"] else "-"
        count = items.get(s["job_id"])
        lines.append(f"segment {s['segment']}: job {s['job_id']} {s['state']} after {took}"
                     + (f", {units.plural(count, 'item')}" if count is not None else "") + f" ({s['reason']})")
    count = items.get(job.job_id) if record.get("job_id") == job.job_id else None
    lines.append(f"segment {len(archived) + 1}: job {job.job_id} {current.state}"
                 + (f" after {units.clock(current.elapsed)}" if current.elapsed is not None else "")
                 + (f", {units.plural(count, 'item')}" if count is not None else ""))
    return lines

