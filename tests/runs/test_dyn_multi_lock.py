"""dyn_multi's accounting lives in shared memory, changed under one lock. A worker SIGKILLed while it
holds that lock never gives it back (no stop signal can be held back from a SIGKILL): the driver,
which waits for that lock to commit and to stop the run, must not wait for ever. Once a worker has
died, it stops the run without the lock and ends FAILED (CI saw a run hang there once, under load).

The lock is taken by a real forked process that then dies without releasing it, as a SIGKILLed
worker does; the driver's side is the real broker.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

from helpers.runs import DATA

from d4p_hpc.mappings.dynamic.dyn_multi import LOCK_WAIT, LocalBroker
from d4p_hpc.mappings.runtime.prepare import prepare
from d4p_hpc.mappings.runtime.process import Aborted


def _hold_and_die(lock) -> None:
    lock.acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_holding_the_lock_does_not_hang_the_driver(tmp_path):
    ctx = prepare(str(DATA / "g_long.py"), None, "dyn_multi", 2, 10, tmp_path / "r")
    mp = multiprocessing.get_context("fork")
    broker = LocalBroker(mp, ctx.plan, 2)
    worker = mp.Process(target=_hold_and_die, args=(broker.lock,))
    worker.start()
    worker.join(30)
    assert worker.exitcode == -signal.SIGKILL
    broker.gone = lambda: worker.exitcode not in (None, 0)

    said: list = []

    def driver() -> None:
        try:
            broker.commit(None, {}, {}, 0.0)
        except Aborted:
            said.append("aborted")
        said.append(broker.stop("CANCELLED"))  # stopped without the lock its holder took with it

    # a thread, so that a driver waiting for ever fails this test instead of hanging the suite
    thread = threading.Thread(target=driver, daemon=True)
    thread.start()
    thread.join(60 * LOCK_WAIT)
    assert not thread.is_alive(), "the driver waits for a lock a dead worker holds"
    assert said == ["aborted", True] and broker.state() == "STOPPED"
    broker.close()
