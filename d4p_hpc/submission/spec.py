"""The job specification: one frozen, validated description of a batch job.

Every value is checked when a :class:`JobSpec` is built, before anything is
rendered, and a bad value raises :class:`~d4p_hpc.errors.SpecError` naming what
is valid. Values that end up in ``#SBATCH``/``#PBS`` lines are parsed by the
scheduler, not by a shell, so they are validated strictly here and never
quoted; everything a shell reads is quoted by the renderer. Every value has an upper bound
(:data:`MAX_CHARS`, :data:`LIMITS`), far above any real job: a number a node file, a
scheduler or a command line cannot hold is refused here, in one line, before anything is made.

The fields and their help texts are the single source of the valid keys of
profiles (:mod:`d4p_hpc.submission.config`, which also turns strings into the
fields' types) and of the options of ``submit``/``render``.
What a scheduler accepts (launchers, directives, the requests marked ``request``)
is the scheduler class's to say (:mod:`d4p_hpc.schedulers`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from d4p_hpc import schedulers, settings, units
from d4p_hpc.errors import SpecError

from d4p_hpc.mappings import MAPPINGS as _RUNTIME_MAPPINGS  # a name table only: no mapping module is imported

# mapping -> how a job launches it: "single", "mpi" or "redis"
MAPPINGS = {name: m.launch for name, m in _RUNTIME_MAPPINGS.items()}
DEFAULT_RESULTS_ROOT = "d4p-results"

_NAME = re.compile(r"[A-Za-z0-9_.+@][A-Za-z0-9_.,+@-]*")
_JOB_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]{0,63}")
_CONSTRAINT = re.compile(r"[A-Za-z0-9_.,&|*!()\[\]:=+][A-Za-z0-9_.,&|*!()\[\]:=+-]*")
_GRES = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,:=+-]*")
# sbatch expands % in --output paths and qsub splits host:path, so the results
# root (it appears in directives) is limited to plain path characters
_ROOT = re.compile(r"/[A-Za-z0-9_./+@,~=-]*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# a job id, or PBS's id of a job array (123[].server)
_JOB_ID = re.compile(r"[A-Za-z0-9_.+@][A-Za-z0-9_.,+@\[\]-]*")
_HOST = re.compile(r"[A-Za-z0-9_.:][A-Za-z0-9_.:-]*")

#: the longest value of each text field, in characters (per item for lists): the names batch systems
#: keep (Slurm's and PBS's are shorter than 64), a host name (253), PATH_MAX for paths and shell
#: lines; ``data`` is one word of the run's command line, which Linux caps at 128 KiB
MAX_CHARS = {"partition": 64, "account": 64, "qos": 64, "job_name": 64, "after": 255, "launcher": 64,
             "mapping": 64, "scheduler": 64, "attr": 255, "redis_bind": 253, "memory": 32, "walltime": 32,
             "data": 100_000}
_MAX_TEXT = 4096
#: the largest value of each whole-number field; ``checkpoint_every`` is the run's own range
LIMITS = {"nodes": 100_000, "tasks_per_node": 10_000, "cpus_per_task": 10_000, "gpus_per_node": 1_024,
          "iterations": settings.MAX_COUNT, "requeue": 1_000,
          "checkpoint_every": int(settings.CHECKPOINT_EVERY_RANGE[1]), "signal_seconds": 366 * 86400}
#: ranks or workers in one job, and the longest walltime and memory per node
MAX_TASKS = 1_000_000
MAX_WALLTIME_DAYS = 366
MAX_MEMORY_MB = 1024 ** 3  # 1024T


class SchedulerMismatchError(SpecError):
    """A value the job's scheduler does not take; :meth:`d4p_hpc.submission.config.Resolved.spec`
    adds which scheduler it is and why it was chosen."""


def _opt(help_text: str, *flags: str, default=None, request: bool = False):
    """A field with its help text and its ``submit``/``render`` option names.

    ``request``: a request to the batch system, which a scheduler must declare it passes on (or
    ignores), else it is refused rather than silently dropped (:attr:`~d4p_hpc.schedulers.Scheduler.options`).
    """
    return field(default=default, metadata={"help": help_text, "flags": flags, "request": request})


def _either(words) -> str:
    *rest, last = words
    return f"{', '.join(rest)} or {last}" if rest else last


def _scheduler_help() -> str:
    return f"Scheduler: {_either(schedulers.names())} [default: the one found on PATH, else local]."


def _launcher_help() -> str:
    every = dict.fromkeys(launcher for cls in schedulers.classes() for launcher in cls.launchers)
    defaults = ", ".join(f"{cls.launchers[0]} on {cls.title}" for cls in schedulers.classes())
    return f"How ranks and workers start: {_either(every)} [default: {defaults}]."


@dataclass(frozen=True)
class JobSpec:
    """A batch job that runs one dispel4py graph with one mapping.

    Build it with keyword arguments (or :meth:`from_dict`); it validates itself.
    ``job_name`` defaults to the graph file's stem.
    """

    graph: str = _opt("Absolute path of the graph file.")
    mapping: str = _opt("Mapping: " + ", ".join(MAPPINGS) + ".", "-m", "--mapping", default="multi")
    attr: str | None = _opt("Name of the graph variable in the graph file.", "-a", "--attr")
    iterations: int | None = _opt("Feed each root PE N times.", "-i", "--iterations")
    data: str | None = _opt("Inputs as JSON, as for `d4p-hpc run -d`.", "-d", "--data")
    input_file: str | None = _opt("Inputs as a JSON file, as for `d4p-hpc run -f`.", "-f", "--file")
    scheduler: str = _opt(_scheduler_help(), "--scheduler", default="local")
    nodes: int = _opt("Number of nodes.", "-N", "--nodes", default=1)
    tasks_per_node: int = _opt("MPI ranks or workers per node.", "--tasks-per-node", "--ntasks-per-node",
                               default=1)
    cpus_per_task: int = _opt("CPUs per rank or worker.", "-c", "--cpus-per-task", default=1)
    memory: str | None = _opt("Memory per node, e.g. 4G or 500M.", "--mem", request=True)
    walltime: str = _opt("Walltime: MM, HH:MM:SS or D-HH:MM:SS.", "-t", "--time", default="01:00:00")
    signal_seconds: int | None = _opt(
        "Seconds before the walltime at which the run is told to stop and keep its outputs "
        "[default: 60, at most half the walltime].", "--signal-seconds")
    checkpoint_every: int | None = _opt(
        "Take a checkpoint every SECONDS, to resume from after a kill or a lost node (one is also taken at "
        "the walltime signal).", "--checkpoint-every")
    requeue: int = _opt("After a walltime stop, submit a successor job that continues from the last "
                        "checkpoint, up to N times.", "--requeue", default=0)
    #: set by ``d4p-hpc resume``: the results directory this job continues, and the job that must end first
    continues: str | None = _opt("Results directory of the run this job continues (set by d4p-hpc resume).")
    after: str | None = _opt("Job id that must end before this job starts (set by d4p-hpc resume).")
    #: set for a task of a sweep: its results directory, made before the job has an id (it runs as an
    #: element of a job array, :mod:`d4p_hpc.sweeps`)
    directory: str | None = _opt("Results directory of this job, fixed before it is submitted (set for the "
                                 "tasks of a sweep).")
    partition: str | None = _opt("Slurm partition or PBS queue.", "-p", "--partition", "-q", "--queue",
                                 request=True)
    account: str | None = _opt("Account (project) to charge.", "-A", "--account", request=True)
    qos: str | None = _opt("Slurm quality of service.", "--qos", request=True)
    constraint: str | None = _opt("Slurm node feature constraint.", "-C", "--constraint", request=True)
    gres: str | None = _opt("Slurm generic resources, e.g. gpu:2.", "--gres", request=True)
    gpus_per_node: int | None = _opt("GPUs per node.", "--gpus-per-node", request=True)
    exclusive: bool = _opt("Ask for whole nodes.", "--exclusive/--no-exclusive", default=False, request=True)
    job_name: str | None = _opt("Job name [default: the graph file's stem].", "-J", "--job-name")
    modules: tuple[str, ...] = _opt("Environment module to load (repeatable).", "--module", default=())
    venv: str | None = _opt("Python virtual environment to activate.", "--venv")
    conda: str | None = _opt("Conda environment to activate.", "--conda")
    setup: tuple[str, ...] = _opt("Shell line run before the workflow (repeatable).", "--setup", default=())
    container: str | None = _opt("Apptainer/Singularity image to run the workflow in.", "--container")
    extra_directives: tuple[str, ...] = _opt(
        "Raw directive line, e.g. '#SBATCH --mail-type=END' (repeatable).", "--directive", default=())
    results_root: str | None = _opt("Directory that receives <job name>-<job id>/ [default: ./d4p-results].",
                                    "--results-root")
    python: str = _opt("Python interpreter on the nodes [default: this one, or python3 with "
                       "--venv/--conda/--container].", "--python", default="python3")
    launcher: str | None = _opt(_launcher_help(), "--launcher")
    launcher_args: tuple[str, ...] = _opt("Extra argument for srun/mpiexec, e.g. --mpi=pmix (repeatable).",
                                          "--launcher-arg", default=())
    redis_bind: str | None = _opt("Address or interface the per-job Redis listens on "
                                  "[default: 0.0.0.0; 127.0.0.1 on the local scheduler].", "--redis-bind")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, check_type(f.name, getattr(self, f.name)))
        _validate_sizes(self)
        if self.job_name is None:
            object.__setattr__(self, "job_name", default_job_name(self.graph))
        if self.results_root is None:
            object.__setattr__(self, "results_root", os.path.abspath(DEFAULT_RESULTS_ROOT))
        if self.memory is not None:
            object.__setattr__(self, "memory", units.normalise_memory(self.memory))
        _validate(self)

    @property
    def launch_kind(self) -> str:
        """How the job starts the mapping: ``single``, ``mpi`` or ``redis``."""
        return MAPPINGS[self.mapping]

    @property
    def total_tasks(self) -> int:
        """Ranks or workers in the whole job."""
        return self.nodes * self.tasks_per_node

    @property
    def walltime_seconds(self) -> int:
        """The walltime in seconds."""
        return units.walltime_seconds(self.walltime)

    @property
    def warning_seconds(self) -> int:
        """Seconds before the walltime at which the run is asked to stop."""
        if self.signal_seconds is not None:
            return self.signal_seconds
        return min(60, self.walltime_seconds // 2)

    @property
    def checkpoints(self) -> bool:
        """Whether the run takes checkpoints: asked for, or needed to continue."""
        return bool(self.checkpoint_every or self.requeue or self.continues)

    def results_dir(self, job_id: str) -> Path:
        """The results directory of this job once it has id ``job_id`` (that of the run it continues)."""
        assert self.results_root is not None, "a resolved spec always has a results root"
        if self.continues or self.directory:
            return Path(str(self.continues or self.directory))
        return Path(self.results_root) / f"{self.job_name}-{job_id}"

    def to_dict(self) -> dict:
        """The spec as plain JSON-ready data; :meth:`from_dict` reverses it."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> JobSpec:
        """Build a spec from :meth:`to_dict` output (unknown keys are an error)."""
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise SpecError(f"unknown job spec key(s) {', '.join(unknown)}; valid keys: {', '.join(FIELDS)}")
        return cls(**data)


FIELDS = {f.name: f for f in dataclasses.fields(JobSpec)}
#: the fields that are requests to the batch system (see :func:`_opt`)
REQUESTS = tuple(name for name, f in FIELDS.items() if f.metadata["request"])
_TYPES = {"int": int, "bool": bool, "tuple": tuple}


def field_type(name: str) -> type:
    """The value type of field ``name``: int, bool, tuple (of str) or str."""
    annotation = str(FIELDS[name].type)
    for key, typ in _TYPES.items():
        if annotation.startswith(key):
            return typ
    return str


def check_type(name: str, value, source: str = "") -> object:
    """``value`` if it has the type of field ``name`` (a list of strings becomes a tuple), else SpecError.

    ``source`` says where the value came from, for the message. Strings are not converted here:
    :func:`d4p_hpc.submission.config.coerce` does that for the files, the environment and the
    command line.
    """
    if value is None:
        return None
    typ = field_type(name)
    where = f" (from {source})" if source else ""
    if typ is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise SpecError(f"{name}{where} must be a list of strings, not {value!r:.80}")
        return tuple(value)
    if typ is bool and not isinstance(value, bool):
        raise SpecError(f"{name}{where} must be true or false, not {value!r:.80}")
    if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise SpecError(f"{name}{where} must be a whole number, not {value!r:.80}")
    if typ is str and not isinstance(value, str):
        raise SpecError(f"{name}{where} must be a string, not {value!r:.80}")
    return value


def default_job_name(graph: str) -> str:
    """A valid job name made from the graph file's stem (``word_count.py`` -> ``word_count``)."""
    stem = re.sub(r"[^A-Za-z0-9_.+-]", "_", Path(graph or "job").stem)[:64]
    return stem if stem[:1].isalpha() else ("j" + stem)[:64]


def _one_of(what: str, value: str, valid, error: type[SpecError] = SpecError) -> None:
    if value not in valid:
        raise error(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def _pattern(name: str, value: str | None, pattern: re.Pattern, allowed: str) -> None:
    if value is not None and not pattern.fullmatch(value):
        raise SpecError(f"{name} {value!r} is not valid: {allowed}")


def _validate(spec: JobSpec) -> None:
    _one_of("mapping", spec.mapping, MAPPINGS)
    scheduler = schedulers.scheduler_class(spec.scheduler)
    if spec.launcher is not None:
        _one_of(f"launcher for {spec.scheduler}", spec.launcher, scheduler.launchers, SchedulerMismatchError)
    if not spec.graph or not Path(spec.graph).is_absolute():
        raise SpecError(f"graph must be an absolute path, not {spec.graph!r}")
    _pattern("results_root", spec.results_root, _ROOT,
             "use an absolute path of letters, digits and _ . / + @ , ~ = - only (it appears in "
             "scheduler directives, which cannot quote)")
    for name in ("nodes", "tasks_per_node", "cpus_per_task"):
        if getattr(spec, name) < 1:
            raise SpecError(f"{name} must be at least 1, not {getattr(spec, name)}")
    if spec.total_tasks > MAX_TASKS:
        raise SpecError(f"{spec.nodes} nodes x {spec.tasks_per_node} tasks per node is {spec.total_tasks:,} "
                        f"tasks; the limit is {MAX_TASKS:,}")
    if scheduler.on_this_host and spec.total_tasks > (limit := settings.max_processes()):
        raise SchedulerMismatchError(
            f"{spec.total_tasks} tasks would be {spec.total_tasks} processes on this host; the limit is {limit}: "
            f"set {settings.MAX_PROCESSES}={spec.total_tasks} to allow it, or submit to a cluster's scheduler")
    _validate_inputs(spec)
    _validate_resources(spec, scheduler)
    _validate_text(spec)


def _validate_sizes(spec: JobSpec) -> None:
    """Refuse a value over its bound (:data:`MAX_CHARS`, :data:`LIMITS`), naming the bound, before
    any other check reads it (a 5,000-digit walltime is not a number Python converts)."""
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        limit = LIMITS.get(f.name) if field_type(f.name) is int else MAX_CHARS.get(f.name, _MAX_TEXT)
        if limit is None or value is None or isinstance(value, bool):
            continue
        if isinstance(value, int):
            if value > limit:
                raise SpecError(f"{f.name} {value} is too large: the limit is {limit:,}")
            continue
        for item in value if isinstance(value, tuple) else (value,):
            if len(item) > limit:
                hint = ": give larger inputs as a JSON file with -f" if f.name == "data" else ""
                raise SpecError(f"{f.name} {_shown(item)} is {len(item):,} characters long; the limit is "
                                f"{limit:,}{hint}")


def _shown(value: str) -> str:
    """``value`` for a message: its start, quoted, when it is long."""
    return repr(value) if len(value) <= 40 else repr(value[:40]) + "..."


def _validate_inputs(spec: JobSpec) -> None:
    given = [n for n in ("iterations", "data", "input_file") if getattr(spec, n) is not None]
    if len(given) > 1:
        raise SpecError(f"give at most one of -i/--iterations, -d/--data, -f/--file, not {' and '.join(given)}")
    if spec.iterations is not None and spec.iterations < 0:
        raise SpecError(f"iterations must be 0 or more, not {spec.iterations}")
    if spec.data is not None:
        try:
            json.loads(spec.data)
        except ValueError as err:
            raise SpecError(f"data is not valid JSON ({err}): {spec.data!r}") from None
    if spec.input_file is not None and not Path(spec.input_file).is_absolute():
        raise SpecError(f"input_file must be an absolute path, not {spec.input_file!r}")
    _pattern("attr", spec.attr, _IDENTIFIER, "use the name of a Python variable")


def _validate_resources(spec: JobSpec, scheduler: type[schedulers.Scheduler]) -> None:
    seconds = units.walltime_seconds(spec.walltime)
    if seconds < 60:
        raise SpecError(f"walltime {spec.walltime!r} is under a minute")
    if seconds > MAX_WALLTIME_DAYS * 86400:
        raise SpecError(f"walltime {spec.walltime!r} is over {MAX_WALLTIME_DAYS} days")
    if spec.memory is not None and (units.memory_mb(spec.memory) or 0) > MAX_MEMORY_MB:
        raise SpecError(f"memory {spec.memory} per node is over the limit of {MAX_MEMORY_MB // 1024 ** 2}T")
    if spec.signal_seconds is not None and not 0 < spec.signal_seconds < seconds:
        raise SpecError(f"signal_seconds must be above 0 and below the walltime ({seconds} s), "
                        f"not {spec.signal_seconds}")
    if spec.checkpoint_every is not None and spec.checkpoint_every < settings.CHECKPOINT_EVERY_RANGE[0]:
        raise SpecError(f"checkpoint_every must be at least 1 second, not {spec.checkpoint_every}")
    if spec.requeue < 0:
        raise SpecError(f"requeue must be 0 or more, not {spec.requeue}")
    if spec.gpus_per_node is not None and spec.gpus_per_node < 0:
        raise SpecError(f"gpus_per_node must be 0 or more, not {spec.gpus_per_node}")
    if spec.launch_kind == "single" and spec.nodes > 1 and not scheduler.on_this_host:
        multi_node = ", ".join(m for m, kind in MAPPINGS.items() if kind != "single")
        raise SchedulerMismatchError(f"mapping {spec.mapping} runs on one node; with --nodes {spec.nodes} use "
                                     f"one of: {multi_node}")
    _validate_requests(spec, scheduler)
    directive = scheduler.directive
    for line in spec.extra_directives:
        if directive is None:
            raise SchedulerMismatchError(f"the {spec.scheduler} scheduler reads no directives; remove {line!r}")
        if not line.startswith(directive + " ") or "\n" in line or "\r" in line:
            raise SchedulerMismatchError(f"extra directive {line!r} must be one line starting with "
                                         f"'{directive} '")


def _validate_requests(spec: JobSpec, scheduler: type[schedulers.Scheduler]) -> None:
    """Refuse a request that ``scheduler`` would drop: one it neither passes on nor declares it ignores."""
    for name in REQUESTS:
        value = getattr(spec, name)
        if value is None or value is False or name in scheduler.options | scheduler.ignored:
            continue
        owners = [cls.title for cls in schedulers.classes() if name in cls.options]
        what = f"a {' and '.join(owners)} option" if owners else "a request"
        remedy = f"write it as a raw directive, e.g. --directive '{scheduler.directive} ...'" if scheduler.directive \
            else "leave it out"
        raise SchedulerMismatchError(f"{name} is {what} that the {scheduler.title} scheduler does not support; "
                                     f"{remedy}")


def _validate_text(spec: JobSpec) -> None:
    names = "use letters, digits and _ . , + @ - (not starting with , or -)"
    for name in ("partition", "account", "qos"):
        _pattern(name, getattr(spec, name), _NAME, names)
    _pattern("constraint", spec.constraint, _CONSTRAINT, "use letters, digits and _ . , & | * ! ( ) [ ] : = + -")
    _pattern("gres", spec.gres, _GRES, "use letters, digits and _ . , : = + -, e.g. gpu:2")
    _pattern("job_name", spec.job_name, _JOB_NAME,
             "start with a letter, then up to 63 letters, digits and _ . + -")
    _pattern("redis_bind", spec.redis_bind, _HOST, "use an IP address, host name or interface name")
    _pattern("after", spec.after, _JOB_ID, "a job id")
    _pattern("continues", spec.continues, _ROOT, "an absolute path of plain characters")
    _pattern("directory", spec.directory, _ROOT, "an absolute path of plain characters")
    for name in ("python", "venv", "conda", "container"):
        value = getattr(spec, name)
        if value is not None and (not value or "\0" in value):
            raise SpecError(f"{name} must be a non-empty string without NUL characters")
    for module in spec.modules:
        if not module or any(c.isspace() for c in module):
            raise SpecError(f"module {module!r}: give one module per --module (no spaces)")
    for line in spec.setup:
        if "\0" in line:
            raise SpecError("setup lines must not contain NUL characters")
