#!/bin/bash
# .ci/pbs-up.sh - build (once per machine: build.sh skips a finished build in 1 s) and start the
# real OpenPBS testbed beside the emulated Slurm: a server, scheduler and datastore on the host
# ("pbshead") and one pbs_mom per node, each in its own network namespace (pbsn1, pbsn2).
# The testbed lives outside this repo, in shared/reference/pbs-testbed beside the clone (CI copies
# shared/ there); D4P_PBS_TESTBED names another folder.  Writes $PBSLAB_DIR/env.sh (PBS_CONF_FILE,
# PATH with PBS's bin *last*: it ships an mpiexec of its own that would shadow Open MPI's).
# Env: D4P_PBS_TESTBED, PBSLAB_DIR (default /tmp/pbslab) and the testbed's own PBSLAB_* tunables.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TESTBED=${D4P_PBS_TESTBED:-$REPO/../shared/reference/pbs-testbed}
[ -f "$TESTBED/up.sh" ] || {
  echo "[pbs-up] ERROR: no PBS testbed at $TESTBED (set D4P_PBS_TESTBED to its folder)" >&2; exit 1; }
bash "$TESTBED/build.sh"
bash "$TESTBED/up.sh"
