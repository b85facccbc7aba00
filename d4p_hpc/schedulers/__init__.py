"""The schedulers by name, and :func:`submit`, which renders, submits and records a job."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from d4p_hpc.errors import SpecError
from d4p_hpc.schedulers.base import Scheduler, SchedulerState
from d4p_hpc.schedulers.local import Local
from d4p_hpc.schedulers.pbs import Pbs
from d4p_hpc.schedulers.slurm import Slurm
from d4p_hpc.spec import JobSpec

__all__ = ["Scheduler", "SchedulerState", "get", "submit", "check_files", "SUBMITTED"]

_CLASSES: dict[str, type[Scheduler]] = {cls.name: cls for cls in (Slurm, Pbs, Local)}
#: marker written by ``submit`` into ``state/``; jobs sent with plain sbatch/qsub lack it
SUBMITTED = "submitted"


def get(name: str) -> Scheduler:
    """The scheduler called ``name`` (slurm, pbs or local)."""
    try:
        return _CLASSES[name]()
    except KeyError:
        raise SpecError(f"unknown scheduler {name!r}; valid: {', '.join(_CLASSES)}") from None


def check_files(spec: JobSpec) -> None:
    """Refuse a spec whose graph or input file does not exist here (the nodes could not read it either)."""
    for what, path in (("graph file", spec.graph), ("input file", spec.input_file)):
        if path is not None and not os.path.isfile(path):
            raise SpecError(f"{what} {path} does not exist")


def submit(spec: JobSpec, script: str, sources: dict | None = None) -> tuple[str, Path]:
    """Submit the rendered ``script`` of ``spec``; returns the job id and its results directory.

    Besides what the script writes itself when it starts, ``state/submitted``
    (job id, scheduler, time) is written now, so that a job still pending can
    be found and inspected; ``job.sh`` and ``spec.json`` are written too.
    """
    from d4p_hpc.render import check_syntax
    from d4p_hpc.results import now, write_json

    check_syntax(script)
    Path(spec.results_root).mkdir(parents=True, exist_ok=True)
    # a job's directory, its script and its logs are the user's alone, as the script's own files are
    umask = os.umask(0o077)
    try:
        job_id = get(spec.scheduler).submit(script, spec)
        directory = spec.results_dir(job_id)
        (directory / "state").mkdir(parents=True, exist_ok=True)
        if not (directory / "job.sh").exists():
            (directory / "job.sh").write_text(script)
        if not (directory / "spec.json").exists():
            write_json(directory / "spec.json", {"spec": spec.to_dict(), "sources": sources or {}})
        write_json(directory / "state" / SUBMITTED, {"time": now(), "epoch": time.time(), "job_id": job_id,
                                                      "scheduler": spec.scheduler, "argv": sys.argv,
                                                      "cwd": os.getcwd()})
    finally:
        os.umask(umask)
    return job_id, directory

