#!/bin/bash
# .ci/install.sh - install everything CI (and a developer) needs on Debian 12, as root:
#   1. Debian packages: Slurm 22.05 (slurmctld, slurmd, client), munge, Open MPI (+ headers),
#      redis-server, iproute2 / util-linux (netns emulation), procps
#   2. make sure no system redis-server is left listening on 6379 (tests start their own)
#   3. python3 -m pip install -e '.[test]' from the repo root
# Idempotent: safe to run again; the apt phase is skipped when every package is already
# installed (D4P_CI_FORCE_APT=1 forces `apt-get update` + install anyway).
# Env: D4P_CI_SKIP_PIP=1 skips phase 3 (e.g. to prepare a machine before the package exists).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive
PY=${PYTHON:-python3}

log() { printf '[install %s] %s\n' "$(date +%T)" "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs() { local d=$(( $(now_ms) - $1 )); printf '%d.%03d' $((d / 1000)) $((d % 1000)); }

[ "$(id -u)" = 0 ] || die "must run as root"
command -v apt-get >/dev/null || die "needs a Debian/Ubuntu system (apt-get)"

T_ALL=$(now_ms)

# ---- 1. Debian packages --------------------------------------------------------------------
PKGS=(
  slurm-wlm slurmctld slurmd slurm-client   # Slurm 22.05 (Debian 12), multiple-slurmd build
  munge                                     # auth for Slurm (private key/socket, see slurm-up.sh)
  openmpi-bin libopenmpi-dev                # mpiexec + libmpi for the mpi4py wheel; PMIx via deps
  redis-server redis-tools                  # redis-server binary for the Redis mappings/tests
  iproute2 util-linux procps                # ip netns/veth/bridge, nsenter/unshare, ps/pgrep
  hostname ca-certificates git              # `hostname` inside the node namespaces; clones
  graphviz                                  # `dot` for `d4p-hpc graph -o x.svg/.png`
  chromium                                  # the job report is checked in headless Chromium
  shellcheck                                # lint of every golden job script
)
T=$(now_ms)
missing=()
for p in "${PKGS[@]}"; do
  st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$st" = installed ] || missing+=("$p")
done
if [ ${#missing[@]} = 0 ] && [ "${D4P_CI_FORCE_APT:-0}" != 1 ]; then
  log "apt: all ${#PKGS[@]} packages already installed - skipped"
else
  log "apt: installing (missing: ${missing[*]:-none, forced})"
  # Keep the packages' maintainer scripts from starting daemons (munge with the system key,
  # slurmctld/slurmd without a config, redis on 6379): there is no systemd here and the
  # project starts its own private instances.  Only if no policy-rc.d exists already.
  POLICY=/usr/sbin/policy-rc.d; OWN_POLICY=0
  if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# temporary, written by d4p-hpc .ci/install.sh\nexit 101\n' > "$POLICY"
    chmod 755 "$POLICY"; OWN_POLICY=1
  fi
  cleanup_policy() { [ "$OWN_POLICY" = 1 ] && rm -f "$POLICY"; return 0; }
  trap cleanup_policy EXIT
  t=$(now_ms)
  apt-get update -q >/dev/null || apt-get update   # (re-run verbosely on failure)
  log "apt-get update: $(secs "$t") s"
  t=$(now_ms)
  apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 "${PKGS[@]}" \
    > /tmp/d4p-ci-apt.log 2>&1 || { tail -50 /tmp/d4p-ci-apt.log; die "apt-get install failed (full log: /tmp/d4p-ci-apt.log)"; }
  log "apt-get install: $(secs "$t") s ($(grep -c '^Setting up' /tmp/d4p-ci-apt.log || true) packages set up)"
  cleanup_policy; trap - EXIT
fi
for b in slurmctld slurmd srun sbatch squeue scontrol sacct munged mpiexec redis-server redis-cli ip nsenter unshare ss pgrep; do
  command -v "$b" >/dev/null || die "binary $b missing after apt-get install"
done
log "phase apt: $(secs "$T") s  ($(dpkg-query -W -f='${Version}' slurmd) slurm, $(dpkg-query -W -f='${Version}' openmpi-bin) openmpi, redis $(redis-server --version | awk '{print $3}' | sed 's/^v=//'))"

# ---- 2. no system redis on 6379 -------------------------------------------------------------
T=$(now_ms)
stop_system_redis() {
  local pf pid
  if command -v service >/dev/null && [ -x /etc/init.d/redis-server ]; then
    service redis-server stop >/dev/null 2>&1 || true
  fi
  for pf in /run/redis/redis-server.pid /var/run/redis/redis-server.pid; do
    [ -s "$pf" ] || continue
    pid=$(cat "$pf")
    # only the Debian service's own server (pid from its pidfile, cmdline check), never by name
    if tr '\0' ' ' 2>/dev/null < "/proc/$pid/cmdline" | grep -q 'redis-server'; then
      log "stopping system redis-server (pid $pid from $pf)"
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
}
stop_system_redis
if ss -Htln 2>/dev/null | awk '{print $4}' | grep -qE '[:.]6379$'; then
  log "WARNING: something still listens on TCP 6379 (not ours, left alone): $(ss -Htlnp 'sport = :6379' 2>/dev/null | tr -s ' ' | head -2)"
else
  log "no redis on 6379"
fi
log "phase redis-check: $(secs "$T") s"

# ---- 3. the project, editable, with test extras ---------------------------------------------
T=$(now_ms)
if [ "${D4P_CI_SKIP_PIP:-0}" = 1 ]; then
  log "pip: skipped (D4P_CI_SKIP_PIP=1)"
else
  cd "$REPO"
  "$PY" -m pip install -q --no-input --disable-pip-version-check -e '.[test]' \
    || die "pip install -e '.[test]' failed in $REPO"
  "$PY" -c 'import d4p_hpc, mpi4py, redis, pytest; from mpi4py import MPI; print("python ok:", d4p_hpc.__file__, "mpi4py", mpi4py.__version__, MPI.Get_library_version().rstrip("\0").splitlines()[0])' \
    || die "installed package does not import"
fi
log "phase pip: $(secs "$T") s"
log "install total: $(secs "$T_ALL") s"
