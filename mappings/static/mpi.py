"""``mpi``: one process per MPI rank, across nodes (``mpiexec``, ``mpirun`` or ``srun``).

Every rank loads the graph and computes the same plan from the world size.
Batches travel with synchronous sends (``Issend``): a send completes only when
the receiver takes it, so a slow rank holds back its senders instead of
filling their memory, and a few sends stay in flight to hide latency. Idle
ranks poll with a back-off (:class:`Backoff`) rather than a blocking probe, and
meet at the start and end through a polled ``Ibarrier`` before each collective:
Open MPI's blocking calls spin a core, and ranks outnumbering the cores (128 on
32 emulated nodes of 2 cores) then starve the working ranks and the node's
daemons until the scheduler declares the node failed (#21).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from d4p_hpc import liveness
from d4p_hpc import results as rd
from d4p_hpc import supervisor
from d4p_hpc.errors import RunFailed, UsageError
from d4p_hpc.mappings.runtime.prepare import lock
from d4p_hpc.mappings.runtime.hosting import show_calls
from d4p_hpc.mappings.runtime.process import Aborted, die_with_parent
from d4p_hpc.mappings.runtime.runner import Outcome, RunContext, begin, combine, end, run_process

TAG_DATA = 11
TAG_ABORT = 12
MAX_IN_FLIGHT = 8
#: a rank whose PE calls os._exit notes it in the results directory's parts, as this and its rank number
EXIT_NOTE = "exit-"
#: the sleeps between two polls of a waiting rank grow to this at once (a message in a busy stream) ...
MAX_BACKOFF = 0.002
#: ... then, once it has waited PATIENCE seconds, with the time waited, to a tenth of it, up to this:
#: 20 wake-ups a second for a rank with nothing to do, where polling every 2 ms costs some 2 % of a
#: core per rank (benchmarks/mpi_scale.py)
IDLE_BACKOFF = 0.05
PATIENCE = 0.05
# how long the launcher waits, once mpiexec has ended, for rank 0 to finish writing run.json
RECORD_WAIT = 10.0
#: the pid of the process that started mpiexec (self_launch) and holds the run's lock, for rank 0
LAUNCHER = "D4P_HPC_MPI_LAUNCHER"


def launcher_argv(n: int) -> list[str]:
    """``mpiexec -n N`` with the flags this MPI needs to run here (Open MPI: as root, more ranks than cores)."""
    mpiexec = shutil.which("mpiexec") or shutil.which("mpirun")
    if mpiexec is None:
        raise UsageError("the mpi mapping needs mpiexec on PATH: install Open MPI or MPICH "
                         "(e.g. apt-get install openmpi-bin), or load your cluster's MPI module")
    argv = [mpiexec, "-n", str(n)]
    if _is_open_mpi(mpiexec):
        argv.append("--oversubscribe")
        if os.geteuid() == 0:
            argv.append("--allow-run-as-root")
    return argv


def processes(requested: int | None) -> int | None:
    """The ranks the plan is for inside an MPI world: the world's size (outside one: no opinion)."""
    if not supervisor.inside_mpi_world():
        return None
    return _mpi().COMM_WORLD.Get_size()


#: prctl's PR_SET_TIMERSLACK, and the slack (ns) while MPI_Init waits
PR_SET_TIMERSLACK = 29
INIT_SLACK_NS = 5_000_000


def _mpi() -> Any:
    """mpi4py's MPI module, imported (MPI_Init) with a coarse timer slack. Open MPI 4.1 waits for its
    PMIx fences in an ``opal_progress(); usleep(100)`` loop: 10,000 wake-ups a second per rank, which
    starve the launcher's PMIx servers when ranks outnumber cores (128 ranks on 32 emulated nodes of
    2 cores never got through MPI_Init; with 5 ms of slack they all did in 7 s, and at 16 ranks it costs
    nothing measurable). The slack stretches each sleep to about 5 ms, and only for the import: the
    ranks' own back-off (:class:`Backoff`, from 20 us) needs the default after. Linux only; elsewhere
    a plain import."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        coarse = libc.prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(INIT_SLACK_NS), 0, 0, 0) == 0
    except (OSError, AttributeError):
        coarse = False
    try:
        from mpi4py import MPI
    finally:
        if coarse:
            libc.prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(0), 0, 0, 0)  # 0: this thread's default again
    return MPI


def _relaunch_argv(ctx: RunContext) -> list[str]:
    """``d4p-hpc run`` arguments that make every rank prepare this very run."""
    argv = ["run", ctx.graph_path, "-m", "mpi", "--results", str(ctx.results)]
    if ctx.attr is not None:
        argv += ["--attr", ctx.attr]
    if ctx.options.get("inputs_file"):
        argv += ["-f", ctx.options["inputs_file"]]  # by path: it may be large
    elif isinstance(ctx.raw_inputs, dict):
        argv += ["-d", json.dumps(ctx.raw_inputs)]
    else:
        argv += ["-i", str(ctx.raw_inputs)]
    if ctx.options.get("checkpoint_every"):
        # (below 1 s only by D4P_HPC_CHECKPOINT_EVERY_TEST, which the ranks read too)
        argv += ["--checkpoint-every", str(max(1.0, ctx.options["checkpoint_every"]))]
    if ctx.options.get("checkpoint"):
        argv.append("--checkpoint")
    if ctx.restored is not None:
        argv.append("--resume")
    return argv


def self_launch(ctx: RunContext) -> dict:
    """Run this run's ranks under ``mpiexec -n N`` and return the run record rank 0 wrote.

    A signal this process gets goes to mpiexec, which passes it on to every rank (Open MPI
    turns SIGINT into SIGTERM). The run then ends in that signal's state and exit code, also
    when it came before the ranks could record it or when a rank died of it.
    """
    import subprocess

    from d4p_hpc.supervisor import SAFE_MODULE

    results_dir = str(ctx.results)
    for stale in (ctx.results / rd.Layout.PARTS).glob(f"{EXIT_NOTE}*.json"):  # an earlier segment's
        stale.unlink(missing_ok=True)
    # this process holds the run's lock (taken in prepare) for its ranks
    env = dict(os.environ, D4P_HPC_QUIET="1", **{LAUNCHER: str(os.getpid())})
    launcher = subprocess.Popen(launcher_argv(ctx.processes) + [sys.executable, *SAFE_MODULE, "d4p_hpc"]
                                + _relaunch_argv(ctx), env=env)
    stops: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        stops.append(signum)
        launcher.send_signal(signum)

    supervisor.on_signals(forward)
    code = launcher.wait()
    supervisor.ignore_signals()  # the ranks have recorded the run's end: a late signal must not change it
    record = _settled_record(results_dir)
    stop = stops[0] if stops else None
    if record is None:
        rd.remove_created(ctx.created)  # nothing ran: a run refused at its start leaves nothing behind
        if stop is None and code == 2:  # the ranks refused it, and said why in their one Error: line
            raise SystemExit(2)
        if stop is None:
            raise RunFailed(f"mpiexec exited with {code} before the run started; see the messages above")
        stopped = RunFailed(f"{supervisor.STOPS[stop]} by signal {stop} before the run started: nothing ran")
        stopped.exit_code = supervisor.exit_code(stop)
        raise stopped
    failed_pe = (record.get("error") or {}).get("pe")
    if stop is not None and not failed_pe and record["state"] != "COMPLETED":
        record.update({"state": supervisor.STOPS[stop], "exit_code": supervisor.exit_code(stop)})
    elif code < 0 and not failed_pe and record["state"] != "COMPLETED":
        # mpiexec itself was killed: its ranks stopped (they die with it), nobody cancelled the run
        record.update({"state": "FAILED", "exit_code": 1,
                       "error": {"pe": None, "process": None,
                                 "traceback": f"mpiexec was killed by signal {-code}; its ranks stopped"}})
    elif record["state"] == "RUNNING":
        # a rank died without a word (killed, crashed, os._exit in a PE): the run did not finish
        why, pe, rank = f"mpiexec exited with code {code} before the run finished", None, None
        for rank, pe in _exits(ctx):
            why = f"rank {rank} exited with exit code {code}: PE {pe} called os._exit"
            break
        record.update({"state": "FAILED", "exit_code": 1, "error": {"pe": pe, "process": rank, "traceback": why}})
    else:
        return record
    record["ended"] = record.get("ended") or rd.now()
    rd.write_json(rd.Layout(results_dir).run, record)
    return record


class _ExitNote:
    """:func:`~d4p_hpc.mappings.runtime.hosting.show_calls`' cell for a rank, whose launcher shares no
    memory with it: the PE that calls ``os._exit`` is noted in the results directory."""

    def __init__(self, ctx: RunContext, rank: int) -> None:
        self.path = ctx.results / rd.Layout.PARTS / f"{EXIT_NOTE}{rank:05d}.json"
        self.plan = ctx.plan

    @property
    def value(self) -> int:
        return -1

    @value.setter
    def value(self, index: int) -> None:
        if index >= 0:
            try:
                rd.write_json(self.path, {"pe": self.plan.pes[index].key})
            except Exception:  # noqa: BLE001 - the exit goes on whatever: a note is all this is
                pass


def _exits(ctx: RunContext) -> list[tuple[int, str]]:
    """(rank, PE) of each rank whose PE called ``os._exit`` (see :class:`_ExitNote`)."""
    found = []
    for path in sorted((ctx.results / rd.Layout.PARTS).glob(f"{EXIT_NOTE}*.json")):
        note = rd.read_json(path) if path.is_file() else None
        if isinstance(note, dict) and isinstance(note.get("pe"), str):
            found.append((int(path.stem[len(EXIT_NOTE):]), note["pe"]))
    return found


def _settled_record(results_dir: str, wait: float = RECORD_WAIT) -> dict | None:
    """Rank 0's record once it is written: mpiexec may end (killed, or by a signal sent to the
    whole group) a moment before rank 0 has recorded how the run ended, and that record must
    not overwrite the launcher's correction of it."""
    deadline = time.monotonic() + wait
    record = rd.read_run(results_dir)
    # (not once rank 0 is gone, say after a rank's os._exit: nothing more will come, and the user waited)
    while record is not None and record.get("state") == "RUNNING" and time.monotonic() < deadline \
            and liveness.run_alive(record) is not False:
        time.sleep(0.1)
        record = rd.read_run(results_dir)
    return dict(record) if record is not None else None


def _is_open_mpi(mpiexec: str) -> bool:
    import subprocess
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "Open MPI" in out or "OpenRTE" in out


class MpiTransport:
    """Pickled batches between ranks; ABORT messages stop every rank."""

    def __init__(self, comm: Any, mpi: Any) -> None:
        self.comm = comm
        self.MPI = mpi
        self.pending: deque = deque()

    def send(self, proc: int, payload: bytes, block: bool = True) -> bool:
        req = self.comm.Issend([payload, self.MPI.BYTE], dest=proc, tag=TAG_DATA)
        self.pending.append((req, payload, block))
        # (not blocking: a few more sends in flight; their receivers take them when they come to it)
        self._settle()
        if block:
            # only sends that may block count, not a checkpoint's controls, which go to earlier ranks too:
            # one of those may wait, itself, for us to take what it sends, so waiting for it could
            # never end. Data flows to later ranks only: a send of data is taken in the end.
            backoff = Backoff(patient=False)  # a sender held back by a busy receiver: it takes it soon
            while sum(entry[2] for entry in self.pending) > MAX_IN_FLIGHT:
                if not self._settle():
                    self._aborted()
                    backoff.sleep()
        return True

    def _settle(self) -> bool:
        """Let go of the sends their receivers have taken; whether any was."""
        before = len(self.pending)
        self.pending = deque(entry for entry in self.pending if not entry[0].Test())
        return len(self.pending) < before

    def _aborted(self) -> None:
        if self.comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=TAG_ABORT):
            raise Aborted()

    def _wait(self, req: Any) -> None:
        backoff = Backoff(patient=False)
        while not req.Test():
            self._aborted()
            backoff.sleep()

    def recv(self, block: bool, timeout: float | None = None) -> bytearray | None:
        status = self.MPI.Status()
        backoff = Backoff()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=self.MPI.ANY_TAG, status=status):
            if not block or (deadline is not None and time.monotonic() >= deadline):
                return None
            backoff.sleep()
        buf = bytearray(status.Get_count(self.MPI.BYTE))
        self.comm.Recv([buf, self.MPI.BYTE], source=status.Get_source(), tag=status.Get_tag())
        if status.Get_tag() == TAG_ABORT:
            raise Aborted()
        return buf

    def finish_sends(self) -> None:
        for req, _payload, _block in self.pending:
            self._wait(req)
        self.pending.clear()

    def abort_others(self) -> None:
        me = self.comm.Get_rank()
        for rank in range(self.comm.Get_size()):
            if rank != me:
                self.pending.append((self.comm.Isend([bytearray(1), self.MPI.BYTE], dest=rank, tag=TAG_ABORT), None,
                                     False))


class Backoff:
    """The sleeps of a rank polling for something: from 20 µs, doubling up to :data:`MAX_BACKOFF`,
    then (``patient``, after :data:`PATIENCE`) a tenth of the time waited, up to :data:`IDLE_BACKOFF`: what the rank
    waits for is seen at most some 10 % (or 2 ms) later than it came, and a rank that waits long
    wakes rarely."""

    def __init__(self, patient: bool = True) -> None:
        self.delay = 0.0
        self.since = time.monotonic() if patient else None

    def sleep(self) -> None:
        time.sleep(self.delay)
        self.delay = min(MAX_BACKOFF, self.delay * 2 or 2e-5)
        waited = time.monotonic() - self.since if self.since is not None else 0.0
        if waited > PATIENCE:
            self.delay = min(IDLE_BACKOFF, max(self.delay, waited / 10))


def meet(comm: Any) -> None:
    """Wait, sleeping between polls, until every rank has come here: called before each collective,
    which then finds every rank in it and does not spin (ranks start seconds apart when they
    outnumber the cores, and rank 0 alone writes the run's record at the end)."""
    request = comm.Ibarrier()
    backoff = Backoff()
    while not request.Test():
        backoff.sleep()


def run(ctx: RunContext) -> dict:
    """Run this rank's share; rank 0 returns the run record, other ranks ``{"secondary": True, ...}``.
    Outside an MPI world, start the ranks (:func:`self_launch`) and return rank 0's record."""
    if not supervisor.inside_mpi_world():
        return self_launch(ctx)
    mpi = _mpi()
    comm = mpi.COMM_WORLD
    rank = comm.Get_rank()
    # a rank whose launcher (mpiexec, orted, slurmstepd) is killed must stop, not run on orphaned
    die_with_parent(os.getppid())
    # ranks started without --results each made up a default directory: rank 0's wins
    meet(comm)
    ctx.results = Path(comm.bcast(str(ctx.results), root=0))
    # rank 0 alone locks and creates the directory; if it cannot, every rank must learn it, not wait for ever
    t0, refused = 0.0, None
    if rank == 0:
        try:
            launcher = os.environ.get(LAUNCHER)
            lock(ctx.results, ctx.restored is not None, int(launcher) if launcher else None)
            t0 = begin(ctx)
        except UsageError as err:
            refused = str(err)
    meet(comm)
    refused = comm.bcast(refused, root=0)
    if refused:
        if rank:
            sys.exit(UsageError.exit_code)  # rank 0 says why
        raise UsageError(refused)
    transport = MpiTransport(comm, mpi)
    show_calls(_ExitNote(ctx, rank))
    outcome = run_process(ctx, rank, transport, on_stop=lambda _o: transport.abort_others())
    if outcome.state == "COMPLETED":
        try:
            transport.finish_sends()
        except Aborted:
            outcome = Outcome("FAILED")  # the failed rank's own outcome carries the error
    meet(comm)
    outcomes = comm.gather(outcome, root=0)  # the list on rank 0, None on the others
    record = end(ctx, t0, combine(outcomes)) if outcomes is not None else \
        {"secondary": True, "state": outcome.state, "exit_code": outcome.exit_code}
    # the others leave only once rank 0 has written the run's record: a rank leaving with a non-zero
    # code (138 at the walltime signal) makes mpiexec kill the rest at once
    meet(comm)
    return record


def exit(code: int) -> None:  # noqa: A001 - the mapping hook the CLI calls last
    """Leave the rank. After a failure a peer may wait forever on a send nobody will take,
    so MPI_Finalize could hang: leave without it, and the launcher ends the other ranks."""
    sys.stdout.flush()
    sys.stderr.flush()
    if code:
        os._exit(code)
    sys.exit(0)
