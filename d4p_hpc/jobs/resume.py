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
still running or pending, one that COMPLETED, no checkpoint, a graph file or inputs that changed
since the checkpoint, another mapping (the check is ``d4p-hpc run --check --resume``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from d4p_hpc import units
from d4p_hpc.errors import ResumeError
from d4p_hpc.jobs import state as jobs
from d4p_hpc.results import Layout, now, read_json, read_run, write_json
from d4p_hpc.schedulers import RUN


def resume(job: jobs.Job, exit_code: int | None = None, requeue: int | None = None) -> tuple[str, str | None]:
    """Submit the successor of ``job``; return its job id and a warning about its signal time, if any.

    ``exit_code`` is given by a job that resubmits itself at its walltime stop (``--requeue``): it is
    still running, and its segment ends TIMEOUT with that code. ``requeue`` replaces the number of
    automatic resubmissions left (default: the job's own, one less for a job resubmitting itself).
    """
    from d4p_hpc.submission import precheck
    from d4p_hpc.submission.render import render_script
    from d4p_hpc.submission.spec import JobSpec
    from d4p_hpc.submission.submit import submit

    from_job = exit_code is not None
    if job.scheduler == RUN:
        raise ResumeError(f"{job.directory} is a `d4p-hpc run`, not a job: continue it with d4p-hpc run GRAPH "
                          f"--results {job.directory} --resume")
    if not from_job:
        current = jobs.status([job])[0]
        if not current.terminal:
            raise ResumeError(f"job {job.job_id} is {current.state}: cancel it first (d4p-hpc cancel {job.job_id}) "
                              "or wait for it to end")
        if current.state == "COMPLETED":
            raise ResumeError(f"job {job.job_id} has COMPLETED: there is nothing to resume")
    saved = read_json(job.layout.spec, dict) or {}
    data = dict(saved.get("spec") or {})
    if not data:
        raise ResumeError(f"{job.directory} has no {Layout.SPEC}: it was not submitted by d4p-hpc")
    left = data.get("requeue", 0)
    if requeue is None:
        requeue = max(0, left - 1) if from_job else left
    spec = JobSpec.from_dict({**data, "continues": str(job.directory), "after": job.job_id if from_job else None,
                              "requeue": requeue})
    precheck.check(spec)
    script = render_script(spec, saved.get("sources"))
    number, archive = _archive(job)
    try:
        new_id, _ = submit(spec, script, saved.get("sources"))
    except BaseException:
        _unarchive(job, archive)
        raise
    if from_job:
        write_json(archive / Layout.FINISHED, {"time": now(), "epoch": time.time(), "state": "TIMEOUT",
                                               "exit_code": exit_code,
                                               "reason": f"walltime: continued by job {new_id}"})
    write_json(archive / Layout.SUCCESSOR, {"job_id": new_id, "time": now()})
    _link(job.directory, str(spec.job_name), new_id)
    return new_id, signal_warning(spec)


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
    root = job.layout.segments
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        submitted, started, finished = (read_json(d / name, dict) or {}
                                        for name in (Layout.SUBMITTED, Layout.STARTED, Layout.FINISHED))
        found.append({"segment": int(d.name), "job_id": submitted.get("job_id"),
                      "state": finished.get("state") or "FAILED",
                      "reason": finished.get("reason") or f"ended without writing {Layout.STATE}/{Layout.FINISHED}",
                      "started": started.get("epoch"), "ended": finished.get("epoch"),
                      "exit_code": finished.get("exit_code")})
    return found


def _archive(job: jobs.Job) -> tuple[int, Path]:
    """Move the job's markers (and copy its scheduler logs) into a new segment directory."""
    root = job.layout.segments
    root.mkdir(parents=True, exist_ok=True)
    number = len([d for d in root.iterdir() if d.name.isdigit()]) + 1
    archive = root / f"{number:03d}"
    archive.mkdir()
    for name in Layout.ARCHIVED:
        if job.layout.marker(name).exists():
            os.replace(job.layout.marker(name), archive / name)
    for log in job.layout.scheduler_logs:
        if log.exists():
            shutil.copy2(log, archive / log.name)
            os.truncate(log, 0)  # the local scheduler's next job appends to it
    return number, archive


def _unarchive(job: jobs.Job, archive: Path) -> None:
    for name in Layout.ARCHIVED:
        if (archive / name).exists():
            os.replace(archive / name, job.layout.marker(name))
    for log in job.layout.scheduler_logs:
        if (archive / log.name).exists():
            with open(log, "ab") as out:
                out.write((archive / log.name).read_bytes())
    shutil.rmtree(archive, ignore_errors=True)


def _link(directory: Path, name: str, job_id: str) -> None:
    link = directory.parent / f"{name}-{job_id}"
    if link != directory and not link.exists():
        os.symlink(directory.name, link)


def describe(current: jobs.JobStatus) -> list[str]:
    """Lines on the segments of the run of the job whose status is ``current`` (for ``status`` and
    ``results``): one per segment, with the items the run record counts for it."""
    job = current.job
    archived = segments(job)
    record = read_run(job.directory) or {}
    if job.scheduler == RUN:  # `d4p-hpc run --resume`: its record alone knows the segments
        runs = [*record.get("segments", []), record] if record.get("segments") else []
        return [f"segment {k}: {s.get('state')}, started {s.get('started')}"
                + (f", {s['items']:,} items" if s.get("items") is not None else "") for k, s in enumerate(runs, 1)]
    if not archived:
        return []
    items = {s.get("job_id"): s.get("items") for s in record.get("segments", [])}
    items[record.get("job_id")] = record.get("items")
    lines = []
    for s in archived:
        took = units.clock(s["ended"] - s["started"]) if s["started"] and s["ended"] else "-"
        count = items.get(s["job_id"])
        lines.append(f"segment {s['segment']}: job {s['job_id']} {s['state']} after {took}"
                     + (f", {count:,} items" if count is not None else "") + f" ({s['reason']})")
    count = items.get(job.job_id) if record.get("job_id") == job.job_id else None
    lines.append(f"segment {len(archived) + 1}: job {job.job_id} {current.state}"
                 + (f" after {units.clock(current.elapsed)}" if current.elapsed is not None else "")
                 + (f", {count:,} items" if count is not None else ""))
    return lines

