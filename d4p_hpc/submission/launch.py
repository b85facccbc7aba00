"""How a job starts its mapping: the command lines of the launch step, for every scheduler.

A mapping is launched in one of three ways (:data:`d4p_hpc.submission.spec.MAPPINGS`):

``single``
    one ``d4p-hpc run`` process on the first node, with ``-n`` processes;
``mpi``
    one rank per task: ``srun`` on Slurm, ``mpiexec`` with the scheduler's node
    file on PBS and on the local scheduler;
``redis``
    the per-job Redis supervisor on the first node, a worker per task on every
    node (``srun``/``mpiexec``; forked processes on the local scheduler), and
    the driver on the first node.

What a scheduler offers (its launchers, its node-file variable, whether its jobs
run on this host) is its class's to say (:mod:`d4p_hpc.schedulers`).

On a cluster ``mpiexec`` is the script's function ``d4p_mpiexec``
(``templates/common/mpiexec.sh.j2``): a node file alone does not say how many
ranks go on each node (Open MPI >= 4 counts a line without ``slots=`` as all of
that node's cores, and put every rank of a 2-node job on the first), so the
job asks its ``mpiexec`` which MPI it belongs to and places the ranks itself.

The command lines are data; ``templates/common/{run,redis}.sh.j2`` turn them into
shell, quoting every word. A :class:`ShellVar` word stands for a variable the
script sets, such as the results directory that only exists once the job id is
known.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from d4p_hpc import mappings, schedulers
from d4p_hpc.supervisor import SAFE_MODULE
from d4p_hpc.submission.spec import JobSpec


@dataclass(frozen=True)
class ShellVar:
    """A word of a command line that is the value of shell variable ``name``."""

    name: str


RESULTS = ShellVar("d4p_results")
CONNECTION = ShellVar("d4p_redis_conn")
CONTAINER = ShellVar("d4p_container")
# shell function of templates/common/redis.sh.j2 starting a copy per node-file line
FORK = "d4p_fork"
# shell function of templates/common/mpiexec.sh.j2: mpiexec with explicit placement per node
MPIEXEC = "d4p_mpiexec"


@dataclass(frozen=True)
class LaunchPlan:
    """The command lines of a job's launch step.

    Attributes
    ----------
    kind
        ``single``, ``mpi`` or ``redis``.
    run
        The ``d4p-hpc run`` command (the driver, for ``redis``), with its launcher.
    server
        ``redis``: the per-job Redis supervisor.
    workers
        ``redis``: the workers, with their launcher.
    mpiexec
        Whether a command uses ``mpiexec`` (the script then allows it to run as root).
    placed
        Whether it is :data:`MPIEXEC`, which the script then defines.
    """

    kind: str
    run: tuple
    server: tuple = ()
    workers: tuple = ()
    mpiexec: bool = False
    placed: bool = False


def plan(spec: JobSpec) -> LaunchPlan:
    """The launch step of ``spec``."""
    run = (*SAFE_MODULE, "d4p_hpc", "run", spec.graph, "-m", spec.mapping, "-n", str(spec.total_tasks),
           *run_options(spec))
    if spec.launch_kind == "single":
        return LaunchPlan("single", (*python(spec), *run, "--results", RESULTS))
    if spec.launch_kind == "mpi":
        prefix = spread(spec, mpi=True)
        return LaunchPlan("mpi", (*prefix, *python(spec), *run, "--results", RESULTS),
                          mpiexec=prefix[0] in ("mpiexec", MPIEXEC), placed=prefix[0] == MPIEXEC)
    bind = spec.redis_bind or ("127.0.0.1" if schedulers.scheduler_class(spec.scheduler).on_this_host else "0.0.0.0")
    prefix = spread(spec, mpi=False)
    return LaunchPlan(
        "redis",
        run=(*python(spec), *run, "--redis-connection", CONNECTION, "--external-workers", "--results", RESULTS),
        server=(*python(spec), *SAFE_MODULE, mappings.REDIS_SERVER, "--results", RESULTS, "--bind", bind,
                "--clients", str(mappings.connections(spec.total_tasks)),
                "--relay-clients", str(mappings.connections(spec.total_tasks, spec.nodes))),
        workers=(*prefix, *python(spec), *SAFE_MODULE, mappings.REDIS_WORKER, "--connection", CONNECTION),
        mpiexec=prefix[0] in ("mpiexec", MPIEXEC), placed=prefix[0] == MPIEXEC)


def python(spec: JobSpec, check: bool = False) -> tuple:
    """The interpreter, inside the container image when there is one.

    ``check``: for :func:`check`, which runs before the results root exists, so it binds only
    what the check reads (the graph, the inputs, the run it continues).
    """
    if not spec.container:
        return (spec.python,)
    results = [spec.continues] if check and spec.continues else [] if check else [spec.results_root]
    binds = dict.fromkeys(results + [os.path.dirname(spec.graph)]
                          + ([os.path.dirname(spec.input_file)] if spec.input_file else []))
    return (CONTAINER, "exec", *(a for path in binds for a in ("--bind", path)), spec.container, spec.python)


def check(spec: JobSpec) -> tuple:
    """``d4p-hpc run --check`` as the job would run it: its interpreter, graph, inputs and size.

    It loads the graph, checks the inputs and the mapping, and what the mapping needs
    (:meth:`d4p_hpc.mappings.Mapping.check`: told :func:`launcher`), and runs nothing.
    """
    command = (*python(spec, check=True), *SAFE_MODULE, "d4p_hpc", "run", spec.graph, "-m", spec.mapping,
               "-n", str(spec.total_tasks), *run_options(spec), "--check")
    # the checkpoint must fit the graph and inputs: refused before the queue, not in it
    return (*command, "--results", spec.continues) if spec.continues else command


def launcher(spec: JobSpec) -> str:
    """The program the job starts its ranks or workers with; empty when it forks them (or starts none)."""
    if spec.launch_kind == "single":
        return ""
    first = spread(spec, mpi=spec.launch_kind == "mpi")[0]
    return {FORK: "", MPIEXEC: "mpiexec"}.get(first, first)


def spread(spec: JobSpec, mpi: bool) -> tuple:
    """The launcher that starts one copy of a command per task, on every node of the job."""
    scheduler = schedulers.scheduler_class(spec.scheduler)
    launcher = spec.launcher or scheduler.launchers[0]
    if scheduler.on_this_host and not mpi:
        return (FORK,)
    if launcher == "srun":
        # srun no longer inherits --cpus-per-task from the job (Slurm >= 22.05), and a job
        # submitted with --export=NONE would hand the tasks an empty environment. No
        # --kill-on-bad-exit: at the walltime signal ranks exit 138 while rank 0 still writes.
        # Workers (not ranks) go on without a lost node's (--no-kill): their tasks are redone elsewhere.
        return ("srun", f"--nodes={spec.nodes}", f"--ntasks={spec.total_tasks}",
                f"--ntasks-per-node={spec.tasks_per_node}", f"--cpus-per-task={spec.cpus_per_task}",
                "--export=ALL", *(() if mpi else ("--no-kill",)), *spec.launcher_args)
    # the "nodes" of a job on this host are slots of it: nothing to place
    return ("mpiexec" if scheduler.on_this_host else MPIEXEC, "-n", str(spec.total_tasks),
            *(["--hostfile", ShellVar(scheduler.nodefile)] if scheduler.nodefile else []), *spec.launcher_args)


def run_options(spec: JobSpec) -> tuple:
    options = ["--attr", spec.attr] if spec.attr else []
    if spec.iterations is not None:
        options += ["-i", str(spec.iterations)]
    if spec.data is not None:
        options += ["-d", spec.data]
    if spec.input_file is not None:
        options += ["-f", spec.input_file]
    if spec.checkpoints:
        options.append("--checkpoint")
    if spec.checkpoint_every:
        options += ["--checkpoint-every", str(spec.checkpoint_every)]
    if spec.continues:
        options.append("--resume")
    return tuple(options)


def resume(spec: JobSpec) -> tuple:
    """The command a job with ``--requeue`` runs at a walltime stop to submit its successor."""
    return (spec.python, *SAFE_MODULE, "d4p_hpc", "resume", RESULTS, "--from-job")
