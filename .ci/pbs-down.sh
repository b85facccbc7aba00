#!/bin/bash
# .ci/pbs-down.sh - stop the OpenPBS testbed that .ci/pbs-up.sh started and undo its system
# changes (jobs, daemons, namespaces, /etc/hosts block, job user); keeps the build for the next run.
# Safe to run when nothing is up.  Env: D4P_PBS_TESTBED, PBSLAB_DIR, as for pbs-up.sh.
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TESTBED=${D4P_PBS_TESTBED:-$REPO/../shared/reference/pbs-testbed}
exec bash "$TESTBED/down.sh"
