"""A PE's ``checkpoint()`` or ``restore()`` that raises fails the run naming that PE: in run.json's
``error.pe`` and in the one reason ``status`` gives, under a static and a dynamic mapping."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from helpers.runs import cli, d4p_hpc_cmd, explain, kill_group, read_json, wait_for

HOOKS = '''
import os
import time

from dispel4py.base import IterativePE, ProducerPE
from dispel4py.workflow_graph import WorkflowGraph


class Numbers(ProducerPE):
    def __init__(self):
        ProducerPE.__init__(self)
        self.k = 0

    def _process(self, inputs):
        self.k += 1
        time.sleep(0.01)
        return self.k

    def checkpoint(self):
        if os.environ.get("HOOK_FAIL") == "checkpoint":
            raise RuntimeError("the disk of my own is gone")
        return self.k

    def restore(self, state):
        if os.environ.get("HOOK_FAIL") == "restore":
            raise KeyError("no such state")
        self.k = state


class Double(IterativePE):
    def _process(self, x):
        return 2 * x


graph = WorkflowGraph()
graph.connect(Numbers(), "output", Double(), "input")
'''


@pytest.mark.parametrize("mapping", ["multi", "dyn_multi"])
def test_a_checkpoint_hook_that_raises_fails_the_run_naming_its_pe(tmp_path, mapping):
    graph = tmp_path / "hooks.py"
    graph.write_text(HOOKS)
    results = tmp_path / "r"
    done = cli("run", graph, "-m", mapping, "-n", 2, "-i", 300, "--checkpoint-every", 1, "--results", results,
               env={"HOOK_FAIL": "checkpoint"})
    assert done.returncode == 1, explain(done)
    error = read_json(results / "run.json")["error"]
    assert error["pe"] == "Numbers", error
    assert error["traceback"].strip().endswith("RuntimeError: the disk of my own is gone"), error
    status = cli("status", results)
    assert "PE Numbers raised RuntimeError: the disk of my own is gone" in status.stdout, explain(status)


def test_a_restore_hook_that_raises_fails_the_resumed_run_naming_its_pe(tmp_path):
    graph = tmp_path / "hooks.py"
    graph.write_text(HOOKS)
    results = tmp_path / "r"
    proc = subprocess.Popen([*d4p_hpc_cmd(), "run", str(graph), "-m", "multi", "-n", "2", "-i", "300",
                             "--checkpoint-every", "1", "--results", str(results)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: list(results.glob("checkpoints/*/complete.json")) or proc.poll() is not None, 60)
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGUSR1)
        proc.communicate(timeout=60)
    finally:
        kill_group(proc.pid)
    assert proc.returncode == 138, proc.returncode
    done = cli("run", graph, "-m", "multi", "-n", 2, "-i", 300, "--results", results, "--resume",
               env={"HOOK_FAIL": "restore"})
    assert done.returncode == 1, explain(done)
    error = read_json(results / "run.json")["error"]
    assert error["pe"] == "Numbers" and error["traceback"].strip().endswith("KeyError: 'no such state'"), error
