"""``benchmarks/broker_cost.py``, the base of the README's broker model, still runs against today's
broker: its steps drive the real ``RedisBroker`` (take, commit, the owned-entry merge, heartbeats), so
a change to them that the script no longer fits must show here, not in the next measurement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers.dynamic import needs_redis

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "broker_cost.py"


@needs_redis
def test_the_broker_cost_script_measures_every_step_and_models_both_mappings(tmp_path):
    out = tmp_path / "b.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--repeat", "3", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = json.loads(out.read_text())["steps_us"]
    assert {"produce 128", "consume 15000", "beat", "own 1", "own 32", "group 15000 over 1024"} <= set(steps)
    assert proc.stdout.count("workers at 1 ms") == 3 + 6, proc.stdout  # dyn_redis 3 sizes, hybrid 3 x 2
