"""Submitting a sweep: a job per task, run as the elements of job arrays, and the rerun of failed tasks.

Every task is the job given on the command line (or profile) with its line's values (:mod:`~d4p_hpc.sweeps.tasks`):
its own job script in ``tasks/<index>/job.sh``, complete on its own (its results directory fixed in
advance: :attr:`~d4p_hpc.submission.spec.JobSpec.directory`). An array's script holds the array's
directives (the job's resources, once for all) and runs element i's task script.

Arrays and the scheduler's limits: an array's indices always start at 0 and each array holds at
most the cluster's ``MaxArraySize``/``max_array_size`` elements, so a large sweep is split into
several arrays (its tasks listed in each array's script), said in one notice; a sweep with more
tasks than the scheduler keeps jobs (Slurm's ``MaxJobCount``) is refused. With ``--max-parallel
K`` each array runs at most K elements at once, and an array waits for the one before it to end
(a dependency), so that the sweep never runs more than K.

Every check happens before anything is made: the lines, the conflicts between a line and the
command line, each task's job spec, and the pre-check of the graph in the job's environment once per
distinct (mapping, size, graph variable, PEs given inputs) with the first task of that kind.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from d4p_hpc import durable, schedulers
from d4p_hpc.errors import D4pHpcError, ResumeError, SchedulerError, SpecError, UsageError
from d4p_hpc.jobs import index
from d4p_hpc.jobs import resume as job_resume
from d4p_hpc.results import Layout, make_private_dir, now, read_json, write_bytes, write_json
from d4p_hpc.submission import precheck
from d4p_hpc.submission.config import COMMAND_LINE, KEYWORD
from d4p_hpc.submission.render import check_syntax, render_array, render_script
from d4p_hpc.submission.submit import make_root
from d4p_hpc.submission.spec import JobSpec
from d4p_hpc.sweeps import sweep as sweeps
from d4p_hpc.sweeps.sweep import Sweep, SweepLayout
from d4p_hpc.sweeps.tasks import SAME_AS_OPTION, Task
from d4p_hpc.units import plural

#: what the lock of a sweep directory says while a submission or a rerun writes it
SWEEPING = "d4p-hpc resume --failed"


@dataclass(frozen=True)
class Array:
    """One job array of a sweep, as its template reads it."""

    sweep: Path
    #: the task each element runs, element 0 first
    tasks: tuple[int, ...]
    max_parallel: int | None
    #: where the scheduler writes the elements' logs until they move them
    logs: Path


@dataclass(frozen=True)
class SweepPlan:
    """A sweep checked and rendered, not yet submitted."""

    #: the job every task is: the arrays' directives
    spec: JobSpec
    sources: dict
    tasks: list[Task]
    #: each task's job, its directory not yet set
    specs: list[JobSpec]
    file: Path
    max_parallel: int | None
    #: elements per array, at most (None: one array)
    chunk: int | None
    notices: list[str]

    @property
    def chunks(self) -> list[list[int]]:
        """The task indices of each array."""
        return _chunks([t.index for t in self.tasks], self.chunk)

    def array_scripts(self) -> list[str]:
        """The arrays' scripts as they would be submitted (``submit --sweep --dry-run``), the sweep's
        directory written as ``SWEEP`` and the id of the array before as ``ARRAY<n>``."""
        sweep = Path("SWEEP")
        return [_array_script(self.spec, Array(sweep, tuple(chunk), self.max_parallel, SweepLayout(sweep).arrays),
                              f"ARRAY{n}" if n else None)
                for n, chunk in enumerate(self.chunks)]

    def description(self) -> str:
        spec = self.spec
        arrays = len(self.chunks)
        return (f"{spec.scheduler} sweep {spec.job_name}: {plural(len(self.tasks), 'task')} in "
                f"{plural(arrays, 'job array')}, each task a job of {plural(spec.nodes, 'node')} x "
                f"{plural(spec.tasks_per_node, 'task')}"
                + (f", at most {self.max_parallel} at once" if self.max_parallel else ""))


def _array_script(spec: JobSpec, array: Array, before: str | None) -> str:
    """The script of ``array``, with the directives of ``spec``; with ``--max-parallel`` it starts
    once the array ``before`` has ended, so that the sweep never runs more than that at once."""
    directives = JobSpec.from_dict({**spec.to_dict(), "after": before if array.max_parallel else None,
                                    "directory": None, "continues": None})
    script = render_array(directives, array)
    check_syntax(script)
    return script


def _chunks(indices: list[int], size: int | None) -> list[list[int]]:
    size = size or len(indices) or 1
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def task_spec(base: JobSpec, task: Task, directory: str | None = None, continues: str | None = None) -> JobSpec:
    """The job of ``task``: ``base`` with the task's values (``processes`` as tasks per node)."""
    values = task.values
    changes: dict = {k: values[k] for k in ("data", "iterations", "input_file", "attr", "mapping") if k in values}
    if "processes" in values:
        processes = values["processes"]
        per_node, rest = divmod(processes, base.nodes)
        if rest or per_node > base.tasks_per_node or not per_node:
            raise SpecError(f"processes {processes} does not fit the job's {plural(base.nodes, 'node')} x "
                            f"{plural(base.tasks_per_node, 'task')}: give at most {base.total_tasks}, a multiple "
                            f"of {base.nodes} (or a larger job: every task is given the job's size)")
        changes["tasks_per_node"] = per_node
    if task.env:  # first: the setup lines may use them
        changes["setup"] = (*(f"export {name}={shlex.quote(value)}" for name, value in task.env.items()),
                            *base.setup)
    return JobSpec.from_dict({**base.to_dict(), **changes, "directory": directory, "continues": continues,
                              "after": None})


def plan(spec: JobSpec, sources: dict, tasks: list[Task], file: Path, max_parallel: int | None,
         check: bool = True) -> SweepPlan:
    """Check the sweep of ``tasks`` over the job ``spec`` and plan its arrays; nothing is made."""
    if max_parallel is not None and (isinstance(max_parallel, bool) or not isinstance(max_parallel, int)
                                     or max_parallel < 1):
        raise UsageError(f"max_parallel must be a whole number of at least 1 (tasks running at once), "
                         f"not {max_parallel!r}")
    scheduler = schedulers.get(spec.scheduler)
    notices: list[str] = []
    if scheduler.array_template is None:
        raise UsageError(f"the {scheduler.title} scheduler runs no job arrays: a sweep cannot be submitted to it")
    if spec.after or spec.continues:
        raise UsageError("a sweep cannot continue a job or wait for one")
    for key, option in SAME_AS_OPTION.items():
        lines = [t.line for t in tasks if key in t.values]
        if lines and sources.get(key) in (COMMAND_LINE, KEYWORD):
            raise UsageError(f"{option} was given, and {key} is set by line {lines[0]} of {file}: give {key} in the "
                             f"sweep file only (every task's), or not at all there")
    if spec.requeue and not scheduler.requeues_elements:
        raise UsageError(f"--requeue cannot be given to a sweep on {scheduler.title} (it allows no dependency on one "
                         "element of an array, which a task's successor needs): resume the tasks stopped at their "
                         "walltime with d4p-hpc resume SWEEP --failed")
    if max_parallel is None and scheduler.on_this_host:  # this host's cores, not a cluster's nodes
        max_parallel = max(1, (os.cpu_count() or 1) // max(spec.total_tasks, 1))
        notices.append(f"at most {max_parallel} task{'s' * (max_parallel > 1)} at once: the {scheduler.title} "
                       f"scheduler runs them on this host ({plural(os.cpu_count() or 1, 'core')}); --max-parallel K "
                       "sets it")
    limits = scheduler.array_limits()
    if limits.max_jobs is not None and len(tasks) > limits.max_jobs:
        raise UsageError(f"the sweep has {len(tasks):,} tasks, more than the {scheduler.title} cluster keeps jobs at "
                         f"once (MaxJobCount={limits.max_jobs:,}, {limits.source}): split the sweep file")
    specs: list[JobSpec] = []
    checked: set[tuple] = set()
    for task in tasks:
        try:
            one = task_spec(spec, task)
            kind = (one.mapping, one.tasks_per_node, one.attr, tuple(sorted(_data_pes(one))), one.input_file is None,
                    one.iterations is None)
            if kind not in checked:
                checked.add(kind)
                notices += [n for n in precheck.check(one, graph=check, sources=sources) if n not in notices]
        except UsageError as err:
            raise type(err)(f"{file}, line {task.line} (task {task.index}): {err}") from None
        specs.append(one)
    chunk = limits.max_index
    result = SweepPlan(spec, sources, tasks, specs, file, max_parallel, chunk, notices)
    if chunk is not None and len(result.chunks) > 1:
        notices.append(f"the {scheduler.title} cluster allows array indices up to {chunk - 1} "
                       f"({limits.index_name}={chunk}, {limits.source}): "
                       f"the {len(tasks)} tasks are {len(result.chunks)} arrays of at most {chunk}"
                       + (", each waiting for the one before" if max_parallel else ""))
    return result


def _data_pes(spec: JobSpec) -> list[str]:
    return list(json.loads(spec.data)) if spec.data else []


def submit(planned: SweepPlan) -> Sweep:
    """Make the sweep's directory (every task's job script in its own results directory) and submit
    its arrays; return the sweep. An array refused leaves the ones before it queued and says so."""
    spec = planned.spec
    root = Path(str(spec.results_root))
    make_root(root)
    while True:
        sweep_id = f"sweep-{secrets.token_hex(4)}"
        directory = root / f"{spec.job_name}-{sweep_id}"
        try:
            directory.mkdir(mode=0o700)
            break
        except FileExistsError:
            continue
    layout = SweepLayout(directory)
    try:
        # the record first: a submit killed from here on leaves a sweep whose tasks never ran, which
        # `resume --failed` submits
        write_json(layout.record, {"id": sweep_id, "name": spec.job_name, "scheduler": spec.scheduler,
                                   "graph": spec.graph, "time": now(), "max_parallel": planned.max_parallel,
                                   "spec": spec.to_dict(), "sources": planned.sources, "argv": sys.argv,
                                   "cwd": os.getcwd(), "tasks": [{"index": t.index, "line": t.line,
                                                                  "values": t.values} for t in planned.tasks],
                                   "arrays": []})
        write_bytes(directory / f"{SweepLayout.FILE}{planned.file.suffix}", planned.file.read_bytes())
        make_private_dir(directory / SweepLayout.TASKS)
        scripts = []
        for task, one in zip(planned.tasks, planned.specs, strict=False):
            task_dir = layout.task(task.index)
            one = JobSpec.from_dict({**one.to_dict(), "directory": str(task_dir)})
            scripts.append((task_dir, one, render_script(one, planned.sources)))
        for _, _, script in {s[2]: s for s in scripts}.values():
            check_syntax(script)
        for task_dir, one, script in scripts:
            _write_task(task_dir, one, script, planned.sources)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    index.record(sweep_id, directory)
    found = sweeps.open_sweep(directory)
    sizes = {t.index: one.total_tasks for t, one in zip(planned.tasks, planned.specs, strict=True)}
    _submit_arrays(found, planned.spec, planned.chunks, planned.max_parallel, sizes)
    return sweeps.open_sweep(directory)


def _write_task(task_dir: Path, spec: JobSpec, script: str, sources: dict) -> None:
    tl = Layout(task_dir)
    make_private_dir(task_dir)
    make_private_dir(tl.state)
    write_bytes(tl.script, script.encode())
    write_json(tl.spec, {"spec": spec.to_dict(), "sources": sources})


def _submit_arrays(sweep: Sweep, spec: JobSpec, chunks: list[list[int]], max_parallel: int | None,
                   sizes: dict[int, int]) -> None:
    """Submit one array per chunk (``sizes``: each task's ranks or workers), recording each element's
    job id in its task's ``state/submitted`` and each array in ``sweep.json``; an array that waits for
    the one before when ``max_parallel``."""
    scheduler = schedulers.get(spec.scheduler)
    layout = sweep.layout
    make_private_dir(layout.arrays)
    before: str | None = None
    for k, chunk in enumerate(chunks):
        number = len(sweep.arrays) + 1
        script = _array_script(spec, Array(sweep.directory, tuple(chunk), max_parallel, layout.arrays), before)
        path = layout.arrays / f"{number}.sh"
        write_bytes(path, script.encode())
        submission = schedulers.ArraySubmission(tuple(layout.task(i) for i in chunk),
                                                tuple(sizes[i] for i in chunk), max_parallel, layout.arrays, path)
        umask = os.umask(0o077)
        try:
            ids = scheduler.submit_array(script, submission)
        except SchedulerError as err:
            done = [i for c in chunks[:k] for i in c]
            raise type(err)(f"{err}; " + (f"tasks {_ranges(done)} were submitted before it, the others were not: "
                                          if done else "no task was submitted: ")
                            + f"d4p-hpc resume {sweep.directory} --failed submits the rest",
                            err.cmd, err.returncode, err.stdout, err.stderr) from None
        finally:
            os.umask(umask)
        for i, job_id in zip(chunk, ids, strict=False):
            write_json(Layout(layout.task(i)).marker(Layout.SUBMITTED),
                       {"time": now(), "epoch": time.time(), "job_id": job_id, "scheduler": spec.scheduler,
                        "argv": sys.argv, "cwd": os.getcwd(), "sweep": sweep.id, "array": number})
            index.record(job_id, layout.task(i))
        record = read_json(layout.record, dict)
        record["arrays"] = [*record.get("arrays", []), {"number": number, "job_ids": ids, "tasks": chunk,
                                                        "time": now()}]
        write_json(layout.record, record)
        sweep = sweeps.open_sweep(sweep.directory)
        before = scheduler.array_of(ids[0])


def _ranges(indices: list[int]) -> str:
    """``0-3,7``."""
    parts: list[str] = []
    for i in sorted(indices):
        if parts and parts[-1].split("-")[-1] == str(i - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{i}"
        else:
            parts.append(str(i))
    return ",".join(parts)


def rerun(sweep: Sweep, indices: list[int] | None = None, check: bool = True) -> list[int]:
    """``d4p-hpc resume SWEEP --failed``: submit, as new arrays in the same directory, the tasks that
    ended without completing (or never ran; or those of ``indices``). A task with a complete
    checkpoint continues from it; another one starts again, its earlier attempt (markers, logs and
    outputs) archived as a segment of its run. Returns the tasks submitted."""
    with durable.locked(sweep.directory, SWEEPING):
        current = sweeps.status(sweeps.open_sweep(sweep.directory))
        going = [t.task.index for t in current if not t.terminal]
        if indices is None:
            if going:
                raise ResumeError(f"{plural(len(going), 'task')} of sweep {sweep.id} ({_ranges(going)}) not ended: "
                                  f"wait for {'it' if len(going) == 1 else 'them'} (d4p-hpc wait {sweep.id}), or pick "
                                  "tasks with --tasks")
            picked = [t for t in current if t.rerunnable]
            if not picked:
                raise ResumeError(f"every task of sweep {sweep.id} has COMPLETED: there is nothing to rerun")
        else:
            picked = [t for t in current if t.task.index in indices]
            bad = [t for t in picked if not t.rerunnable]
            if bad:
                raise ResumeError(f"task {bad[0].task.index} of sweep {sweep.id} is {bad[0].state}: only tasks that "
                                  "ended without completing (or never ran) can be rerun")
        spec = JobSpec.from_dict(sweep.record["spec"])
        sources = sweep.record.get("sources") or {}
        scripts = []
        for t in picked:
            task_dir = sweep.layout.task(t.task.index)
            resumable = _resumable(task_dir)
            one = task_spec(spec, t.task, str(task_dir), str(task_dir) if resumable else None)
            try:
                precheck.check(one, graph=check, sources=sources)
            except UsageError as err:
                raise type(err)(f"task {t.task.index}: {err}") from None
            scripts.append((t, task_dir, one, render_script(one, sources)))
        chunks = _chunks([t.task.index for t in picked], schedulers.get(spec.scheduler).array_limits().max_index)
        arrays = len(sweep.arrays)
        archived = []
        try:
            for t, task_dir, one, script in scripts:
                job = sweep.job(t.task.index)
                if job is not None:  # its attempt becomes a segment of its run; outputs too unless continued
                    archived.append((job, job_resume.archive_segment(job, keep_outputs=one.continues is not None,
                                                                       ended=t.status)))
                _write_task(task_dir, one, script, sources)
            _submit_arrays(sweeps.open_sweep(sweep.directory), spec, chunks, sweep.record.get("max_parallel"),
                           {t.task.index: one.total_tasks for t, _, one, _ in scripts})
        except BaseException:
            if len(sweeps.open_sweep(sweep.directory).arrays) == arrays:  # nothing went: as it was
                with contextlib.suppress(D4pHpcError, OSError):
                    for job, archive in archived:
                        job_resume.unarchive(job, archive)
            raise
        return [t.task.index for t in picked]


def _resumable(task_dir: Path) -> bool:
    """Whether the task's run left a complete checkpoint to continue from."""
    from d4p_hpc.mappings.checkpoint.store import complete_seqs

    return bool(complete_seqs(task_dir))
