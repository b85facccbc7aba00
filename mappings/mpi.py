"""``mpi``: one process per MPI rank, across nodes (``mpiexec``, ``mpirun`` or ``srun``).

Every rank loads the graph and computes the same plan from the world size.
Batches travel with synchronous sends (``Issend``): a send completes only when
the receiver takes it, so a slow rank holds back its senders instead of
filling their memory, and a few sends stay in flight to hide latency. Idle
ranks poll with a short back-off rather than a blocking probe, which in Open
MPI spins a core that a working rank could use.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from d4p_hpc.errors import UsageError
from d4p_hpc.mappings.runner import Aborted, Outcome, RunContext, begin, combine, end, run_process

TAG_DATA = 11
TAG_ABORT = 12
MAX_IN_FLIGHT = 8
MAX_BACKOFF = 0.002
# set by an MPI launcher in every rank (Open MPI, MPICH/Hydra, PMIx e.g. srun --mpi=pmix, PMI2)
WORLD_VARS = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK", "MPI_LOCALNRANKS")


def inside_mpi_world() -> bool:
    """True when this process was started by an MPI launcher (so it must not start one)."""
    return any(v in os.environ for v in WORLD_VARS)


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

    def send(self, proc: int, payload: bytes) -> None:
        req = self.comm.Issend([payload, self.MPI.BYTE], dest=proc, tag=TAG_DATA)
        self.pending.append((req, payload))
        while self.pending and (len(self.pending) > MAX_IN_FLIGHT or self.pending[0][0].Test()):
            self._wait(self.pending[0][0])
            self.pending.popleft()

    def _wait(self, req: Any) -> None:
        delay = 0.0
        while not req.Test():
            if self.comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=TAG_ABORT):
                raise Aborted()
            time.sleep(delay)
            delay = min(MAX_BACKOFF, delay * 2 or 2e-5)

    def recv(self, block: bool) -> bytearray | None:
        status = self.MPI.Status()
        delay = 0.0
        while not self.comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=self.MPI.ANY_TAG, status=status):
            if not block:
                return None
            time.sleep(delay)
            delay = min(MAX_BACKOFF, delay * 2 or 2e-5)
        buf = bytearray(status.Get_count(self.MPI.BYTE))
        self.comm.Recv([buf, self.MPI.BYTE], source=status.Get_source(), tag=status.Get_tag())
        if status.Get_tag() == TAG_ABORT:
            raise Aborted()
        return buf

    def finish_sends(self) -> None:
        for req, _payload in self.pending:
            self._wait(req)
        self.pending.clear()

    def abort_others(self) -> None:
        me = self.comm.Get_rank()
        for rank in range(self.comm.Get_size()):
            if rank != me:
                self.pending.append((self.comm.Isend([bytearray(1), self.MPI.BYTE], dest=rank, tag=TAG_ABORT), None))


def run(ctx: RunContext) -> dict:
    """Run this rank's share; rank 0 returns the run record, other ranks ``{"secondary": True, ...}``."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    # ranks started without --results each made up a default directory: rank 0's wins
    results, used = comm.bcast((str(ctx.results), (ctx.results / "run.json").exists()), root=0)
    if used:
        raise UsageError(f"{results} already holds a run; give a new --results directory")
    ctx.results = Path(results)
    t0 = begin(ctx) if rank == 0 else 0.0
    comm.Barrier()
    transport = MpiTransport(comm, MPI)
    outcome = run_process(ctx, rank, transport, on_stop=lambda _o: transport.abort_others())
    if outcome.state == "COMPLETED":
        try:
            transport.finish_sends()
        except Aborted:
            outcome = Outcome("FAILED")  # the failed rank's own outcome carries the error
    outcomes = comm.gather(outcome, root=0)
    if rank == 0:
        return end(ctx, t0, combine(outcomes))
    return {"secondary": True, "state": outcome.state, "exit_code": outcome.exit_code}


def exit(code: int) -> None:  # noqa: A001 - the mapping hook the CLI calls last
    """Leave the rank. After a failure a peer may wait forever on a send nobody will take,
    so MPI_Finalize could hang: leave without it, and the launcher ends the other ranks."""
    sys.stdout.flush()
    sys.stderr.flush()
    if code:
        os._exit(code)
    sys.exit(0)
