#!/usr/bin/env python3
"""Fake ``qsub``/``qstat``/``qdel`` for tests: ``fake_pbs.py COMMAND ARGS...``.

qsub reads the script from stdin and runs it with d4p-hpc's local runner, in
the environment PBS gives a job (PBS_JOBID, PBS_NODEFILE, PBS_O_WORKDIR...),
the node file listing this host once per ``mpiprocs`` slot of ``select``;
stdout/stderr go where ``#PBS -o``/``-e`` say (a directory: <job id>.OU / .ER, as OpenPBS names
them).
qstat answers ``-x -f -F json`` from the runner's process; qdel sends SIGTERM
to the job's process group. State lives in $FAKE_PBS_SPOOL.
"""
import json
import os
import re
import signal
import socket
import sys
from pathlib import Path

from d4p_hpc import liveness
from d4p_hpc.schedulers import local

SPOOL = Path(os.environ["FAKE_PBS_SPOOL"])
ARGS = sys.argv[2:]


def qsub() -> int:
    script = sys.stdin.read()
    number = 100 + len(list(SPOOL.glob("*.json")))
    job_id = f"{number}.fakepbs"
    directive = dict(re.findall(r"^#PBS (-\w) (.*)$", script, re.MULTILINE))
    name = directive.get("-N", "STDIN")
    chunks, _, rest = re.search(r"^#PBS -l select=(.*)$", script, re.MULTILINE)[1].partition(":")
    slots = int(chunks) * int(re.search(r"mpiprocs=(\d+)", rest)[1])
    nodefile = SPOOL / f"{job_id}.nodes"
    nodefile.write_text(f"{socket.gethostname()}\n" * slots)
    path = SPOOL / f"{job_id}.sh"
    path.write_text(script)
    status = SPOOL / f"{job_id}.status"
    wrapper = SPOOL / f"{job_id}.wrapper"
    wrapper.write_text(f'bash "{path}"; echo $? >"{status}"\n')
    out = directive.get("-o", "./").rstrip("/") + f"/{job_id}.OU"
    err = directive.get("-e", "./").rstrip("/") + f"/{job_id}.ER"
    env = dict(os.environ, PBS_JOBID=job_id, PBS_JOBNAME=name, PBS_NODEFILE=str(nodefile),
               PBS_O_WORKDIR=os.getcwd(), PBS_ENVIRONMENT="PBS_BATCH", PBS_QUEUE="workq",
               PBS_O_HOST=socket.gethostname())
    pid = local.start(wrapper, env, Path.home(), out, err)
    (SPOOL / f"{job_id}.json").write_text(json.dumps({"pid": pid}))
    print(job_id)
    return 0


def qstat() -> int:
    ids = [a for a in ARGS if not a.startswith("-") and a != "json"]
    jobs, code = {}, 0
    for job_id in ids:
        record = SPOOL / f"{job_id}.json"
        if not record.exists():
            print(f"qstat: Unknown Job Id {job_id}", file=sys.stderr)
            code = 153
            continue
        pid = json.loads(record.read_text())["pid"]
        status = SPOOL / f"{job_id}.status"
        if liveness.token(pid) is not None:  # it runs (not a zombie)
            jobs[job_id] = {"job_state": "R"}
        else:
            deleted = (SPOOL / f"{job_id}.deleted").exists()
            text = status.read_text().strip() if status.exists() else ""
            jobs[job_id] = {"job_state": "F", "Exit_status": 271 if deleted or not text else int(text)}
    if jobs:
        print(json.dumps({"timestamp": 0, "pbs_version": "fake", "Jobs": jobs}))
    return code


def qdel() -> int:
    job_id = ARGS[0]
    pid = json.loads((SPOOL / f"{job_id}.json").read_text())["pid"]
    (SPOOL / f"{job_id}.deleted").touch()
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit({"qsub": qsub, "qstat": qstat, "qdel": qdel}[sys.argv[1]]())
