"""Submitting a job: check its files, hand its rendered script to its scheduler, record it.

This sits above the scheduler registry (:mod:`d4p_hpc.schedulers`), which knows no job
spec: a scheduler is given the script and a :class:`~d4p_hpc.schedulers.Submission`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

from d4p_hpc import schedulers, supervisor
from d4p_hpc.errors import SchedulerError, SpecError, UsageError
from d4p_hpc.jobs import index
from d4p_hpc.results import Layout, now, write_json
from d4p_hpc.submission.config import scheduler_why
from d4p_hpc.submission.spec import JobSpec


def check_files(spec: JobSpec) -> None:
    """Refuse a spec whose graph or input file does not exist here (the nodes could not read it either)."""
    for what, path in (("graph file", spec.graph), ("input file", spec.input_file)):
        if path is not None and os.path.isdir(path):
            raise SpecError(f"{what} {path} is a directory; give a file")
        if path is not None and not os.path.isfile(path):
            raise SpecError(f"{what} {path} does not exist")


def make_root(root: Path) -> list[Path]:
    """Make the results root ``root`` (and its missing parents, which are returned: a submission
    refused removes them); one :class:`UsageError` line if it cannot be made, leaving nothing."""
    made = [p for p in (root, *root.parents) if not p.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # under /proc, a read-only mount, a file in the way: nothing is left of the attempt
        for directory in made:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise UsageError(f"cannot create the results directory {root}: {exc.strerror or exc}; give --results-root a "
                         "writable directory") from None
    return made


def submit(spec: JobSpec, script: str, sources: dict | None = None) -> tuple[str, Path]:
    """Submit the rendered ``script`` of ``spec``; returns the job id and its results directory.

    Besides what the script writes itself when it starts, ``state/submitted``
    (job id, scheduler, time) is written now, so that a job still pending can
    be found and inspected; ``job.sh`` and ``spec.json`` are written too. The script was checked
    by whoever rendered it (:func:`~d4p_hpc.submission.render.check_syntax`).
    """
    try:
        return _submit(spec, script, sources)
    except SchedulerError as err:  # a newcomer's job may have gone to Slurm unasked: say why it went there
        why = scheduler_why(spec.scheduler, sources or {})
        raise type(err)(f"{err} (scheduler {spec.scheduler}: {why})", err.cmd, err.returncode, err.stdout,
                        err.stderr) from None


def _submit(spec: JobSpec, script: str, sources: dict | None) -> tuple[str, Path]:
    assert spec.results_root is not None, "a resolved spec always has a results root"
    made = make_root(Path(spec.results_root))  # Slurm and PBS open the job's log files there
    job = schedulers.Submission(results_dir=spec.results_dir, continues=bool(spec.continues or spec.directory),
                                after=spec.after, tasks=spec.total_tasks)
    # Ctrl-C waits until the job is recorded (its directory, its markers, the index): a job queued or
    # started but not recorded would run with nothing to find or cancel it by
    with supervisor.deferred():
        # a job's directory, its script and its logs are the user's alone, as the script's own files are
        umask = os.umask(0o077)
        try:
            try:
                job_id = schedulers.get(spec.scheduler).submit(script, job)
            except BaseException:
                for directory in made:  # a job refused leaves nothing (the scheduler removes what it made)
                    with contextlib.suppress(OSError):
                        directory.rmdir()
                raise
            layout = Layout(spec.results_dir(job_id))
            layout.state.mkdir(parents=True, exist_ok=True)
            if not layout.script.exists():
                layout.script.write_text(script)
            if not layout.spec.exists():
                write_json(layout.spec, {"spec": spec.to_dict(), "sources": sources or {}})
            write_json(layout.marker(Layout.SUBMITTED), {"time": now(), "epoch": time.time(), "job_id": job_id,
                                                         "scheduler": spec.scheduler, "argv": sys.argv,
                                                         "cwd": os.getcwd()})
        finally:
            os.umask(umask)
        if problem := index.record(job_id, layout.directory):
            print(f"warning: {problem}", file=sys.stderr)
    return job_id, layout.directory
