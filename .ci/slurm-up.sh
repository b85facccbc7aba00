#!/bin/bash
# .ci/slurm-up.sh - bring up an emulated multi-node Slurm cluster on ONE machine (root).
#
# Adapted from the proven testbed in shared/reference/slurm-testbed (up.sh, NETNS mode):
#   * munged with a private key + socket, slurmctld, and one `slurmd -N nodeI` per node
#     (Debian's Slurm 22.05 is built with multiple-slurmd support);
#   * every node runs in its own network + UTS + mount namespace: veth on a bridge, own
#     address 10.77.0.(10+I), own 127.0.0.1, `hostname` = nodeI, a private /etc/hosts that
#     resolves node1..N (the host's /etc/hosts is NOT modified).  The filesystem is shared:
#     jobs see the repo, /root/.pyenv, /tmp... exactly as on the host;
#   * no slurmdbd: finished jobs stay visible in squeue/scontrol for MinJobAge (15 min), and
#     `sacct -c` reads the jobcomp/filetxt file;
#   * proctrack/cgroup (cgroup v1 freezer) when the host has it, else proctrack/linuxproc.
# Idempotent: a previous instance recorded in $D is stopped first (slurm-down.sh), then all
# state/config/logs are wiped and regenerated.  Never kills anything by name.
#
# Writes $D/env.sh (source it: SLURM_CONF and the D4P_SLURM_* facts below) and links
# /etc/slurm/slurm.conf -> $D/etc/slurm.conf so plain `sbatch`/`sinfo` work with no env.
#
# Tunables (environment):
#   D4P_SLURM_DIR        state/config/logs (default /tmp/d4p-slurm; keep it short: the munge
#                        socket path must stay < 108 chars)
#   D4P_SLURM_NODES      number of nodes (default 4)     D4P_SLURM_CPUS  CPUs per node (4)
#   D4P_SLURM_MEM        RealMemory MB per node (2000)
#   D4P_SLURM_CTLD_PORT  slurmctld port on the host (16917)  D4P_SLURM_NODE_PORT slurmd port (17001)
#   D4P_SLURM_SUBNET     /24 for the nodes (10.77.0: .1 = host side of the bridge, .(10+I) = nodeI)
#   D4P_SLURM_PREFIX     name prefix: bridge <p>0, netns <p>-nodeI, veth <p>-hI (default d4p)
#   D4P_SLURM_CGROUP     auto (default) | 1 (proctrack/cgroup, v1 freezer required) | 0 (linuxproc)
#   D4P_SLURM_KILLWAIT   KillWait seconds (default 5)
#   D4P_SLURM_MAX_ARRAY_SIZE  MaxArraySize (default 4: a sweep's arrays are split, as on a real cluster)
#   D4P_SLURM_LINK_ETC   1 (default) link /etc/slurm/slurm.conf; 0 = do not touch /etc
#   D4P_SLURM_WARMUP     1 (default) run a warm-up job on all nodes (first job is then fast)
#   D4P_SLURM_FIRST_JOB_ID  FirstJobId (default 1 for the default dir, else a number derived
#                        from D4P_SLURM_DIR): with proctrack/cgroup two clusters on one host
#                        share /sys/fs/cgroup/freezer/slurm_nodeI/uid_0/job_<id>, so concurrent
#                        clusters (developers sharing a machine) must not reuse job ids
set -euo pipefail

D=${D4P_SLURM_DIR:-/tmp/d4p-slurm}
NODES=${D4P_SLURM_NODES:-4}
CPUS=${D4P_SLURM_CPUS:-4}
MEM=${D4P_SLURM_MEM:-2000}
CTLD_PORT=${D4P_SLURM_CTLD_PORT:-16917}
NODE_PORT=${D4P_SLURM_NODE_PORT:-17001}
SUBNET=${D4P_SLURM_SUBNET:-10.77.0}
PFX=${D4P_SLURM_PREFIX:-d4p}
CGROUP=${D4P_SLURM_CGROUP:-auto}
KILLWAIT=${D4P_SLURM_KILLWAIT:-5}
PARTITION=debug
if [ "$D" = /tmp/d4p-slurm ]; then FIRST_JOB_ID=${D4P_SLURM_FIRST_JOB_ID:-1}
else FIRST_JOB_ID=${D4P_SLURM_FIRST_JOB_ID:-$(( ($(cksum <<<"$D" | cut -d' ' -f1) % 600 + 10) * 100000 ))}; fi  # < MaxJobId 67043328
CLUSTER=d4p
CONF=$D/etc/slurm.conf
MSOCK=$D/munge/run/munge.socket
CTL_ADDR=$SUBNET.1
export SLURM_CONF=$CONF

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs() { local d=$(( $(now_ms) - $1 )); printf '%d.%03d' $((d / 1000)) $((d % 1000)); }
log() { printf '[slurm-up %s] %s\n' "$(date +%T.%3N)" "$*"; }
die() { printf '[slurm-up] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (daemons run as root; netns needs CAP_NET_ADMIN+CAP_SYS_ADMIN)"
for b in munged munge unmunge slurmctld slurmd sinfo scontrol sbatch squeue ss ip nsenter unshare hostname; do
  command -v "$b" >/dev/null || die "missing binary: $b (run .ci/install.sh)"
done
[ "$NODES" -ge 1 ] && [ "$NODES" -le 80 ] || die "D4P_SLURM_NODES must be 1..80"
case $D in /?*) ;; *) die "D4P_SLURM_DIR must be an absolute path other than / (got '$D')" ;; esac
# this script rm -rf's sub-directories of $D: insist on a dedicated directory
if [ -d "$D" ] && [ ! -e "$D/.d4p-slurm" ] && [ -n "$(ls -A "$D")" ]; then
  die "$D exists, is not empty and has no .d4p-slurm marker - refusing to wipe it"
fi
case $CGROUP in
  auto) if [ -d /sys/fs/cgroup/freezer ] && grep -q ' /sys/fs/cgroup/freezer cgroup ' /proc/mounts; then CGROUP=1; else CGROUP=0; fi ;;
  1) [ -d /sys/fs/cgroup/freezer ] || die "D4P_SLURM_CGROUP=1 needs cgroup v1 with the freezer controller mounted" ;;
  0) ;;
  *) die "D4P_SLURM_CGROUP must be auto, 0 or 1" ;;
esac
mkdir -p "$D" && touch "$D/.d4p-slurm"

T0=$(now_ms)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# a failed bring-up stops what it started (logs are kept in $D/log for the post-mortem)
STARTED=0
on_exit() {
  local rc=$?
  set +e
  if [ "$rc" != 0 ] && [ "$STARTED" = 1 ]; then
    printf '[slurm-up] bring-up failed (rc=%s); last log lines:\n' "$rc" >&2
    tail -n 5 "$D"/log/*.log "$D/munge/log/munged.log" 2>/dev/null | sed 's/^/    /' >&2 || true
    D4P_SLURM_DIR=$D bash "$HERE/slurm-down.sh" >&2 || true
  fi
}
trap on_exit EXIT

# ---- 0. stop a previous instance (by recorded PIDs) and wipe state -------------------------
if [ -f "$D/run/pids" ] || [ -f "$D/run/netns" ] || [ -f "$D/run/cgroups" ]; then
  [ -f "$HERE/slurm-down.sh" ] || die "a previous instance is recorded in $D/run but $HERE/slurm-down.sh is missing"
  log "previous instance recorded -> running slurm-down.sh"
  D4P_SLURM_DIR=$D bash "$HERE/slurm-down.sh" || true
fi
rm -rf "$D/munge" "$D/etc" "$D/state" "$D/log" "$D/run" "$D/tmp"
mkdir -p "$D/etc" "$D/state/ctld" "$D/log" "$D/run" "$D/jobs"
chmod 755 "$D"   # munged requires every path component of its socket dir to be o+x
: > "$D/run/pids"
STARTED=1

# ---- 1. port / name clashes --------------------------------------------------------------------
if ss -Htln 2>/dev/null | awk '{print $4}' | sed 's/.*://' | grep -qx "$CTLD_PORT"; then
  die "TCP port $CTLD_PORT already in use (set D4P_SLURM_CTLD_PORT)"
fi
# namespaces/bridge with our prefix that no record covers (state dir wiped, or the machine's
# processes were stopped without slurm-down.sh): reclaimed when no process lives in them
stale=
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$PFX-node[0-9]+\$" || true); do
  [ -n "$(ip netns pids "$ns" 2>/dev/null)" ] \
    && die "netns $ns is not recorded in $D/run and has processes in it (another cluster with prefix '$PFX'? set D4P_SLURM_PREFIX)"
  stale="$stale $ns"
done
ip link show "${PFX}0" >/dev/null 2>&1 && stale="$stale ${PFX}0"
if [ -n "$stale" ]; then
  log "reclaiming stale, unrecorded, unused:$stale"
  for x in $stale; do
    case $x in "${PFX}0") ip link del "$x" ;; *) ip netns del "$x" ;; esac || die "cannot remove stale $x"
  done
fi
ip -br addr | grep -q " $SUBNET\." && die "subnet $SUBNET.0/24 already in use on this host (set D4P_SLURM_SUBNET)"

# ---- 2. munge: private key + socket --------------------------------------------------------------
mkdir -p "$D/munge/etc" "$D/munge/run" "$D/munge/lib" "$D/munge/log"
chmod 755 "$D/munge" "$D/munge/run"      # socket dir must be world-executable
chmod 700 "$D/munge/etc" "$D/munge/lib" "$D/munge/log"
dd if=/dev/urandom of="$D/munge/etc/munge.key" bs=1024 count=1 status=none
chmod 400 "$D/munge/etc/munge.key"
munged --key-file="$D/munge/etc/munge.key" --socket="$MSOCK" \
       --pid-file="$D/munge/run/munged.pid" --log-file="$D/munge/log/munged.log" \
       --seed-file="$D/munge/lib/munged.seed"
for _ in $(seq 100); do [ -S "$MSOCK" ] && [ -s "$D/munge/run/munged.pid" ] && break; sleep 0.05; done
[ -s "$D/munge/run/munged.pid" ] || die "munged did not start (see $D/munge/log/munged.log)"
echo "munged $(cat "$D/munge/run/munged.pid")" >> "$D/run/pids"
munge -S "$MSOCK" -n | unmunge -S "$MSOCK" >/dev/null || die "munge self-test failed (see $D/munge/log/munged.log)"
log "munged up (pid $(cat "$D/munge/run/munged.pid"))"

# ---- 3. network: bridge + one netns per node ----------------------------------------------------
ip link add "${PFX}0" type bridge
echo "bridge ${PFX}0" > "$D/run/netns"
ip addr add "$CTL_ADDR/24" dev "${PFX}0"
ip link set "${PFX}0" up
{ cat /etc/hosts; echo "# --- d4p-hpc emulated Slurm nodes (.ci/slurm-up.sh) ---"; echo "$CTL_ADDR d4p-ctl"; } > "$D/etc/hosts"
# no route out of the namespaces (no NAT): make DNS fail fast instead of 10 s timeouts
printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' > "$D/etc/resolv.conf"
: > "$D/etc/nodes"
for i in $(seq 1 "$NODES"); do
  ns=$PFX-node$i
  ip netns add "$ns" || die "ip netns add $ns failed (need CAP_SYS_ADMIN)"
  echo "netns $ns" >> "$D/run/netns"
  ip link add "$PFX-h$i" type veth peer name eth0 netns "$ns"
  echo "veth $PFX-h$i" >> "$D/run/netns"
  ip link set "$PFX-h$i" master "${PFX}0" up
  ip -n "$ns" addr add "$SUBNET.$((10 + i))/24" dev eth0
  ip -n "$ns" link set lo up
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via "$CTL_ADDR"
  echo "$SUBNET.$((10 + i)) node$i" >> "$D/etc/hosts"
  echo "node$i $SUBNET.$((10 + i))" >> "$D/etc/nodes"
done
log "network: bridge ${PFX}0 $CTL_ADDR/24, netns $PFX-node[1-$NODES] = $SUBNET.[11-$((10 + NODES))]"

# ---- 4. configs ----------------------------------------------------------------------------------
NODELIST="node[1-$NODES]"; [ "$NODES" = 1 ] && NODELIST=node1
ADDRLIST="$SUBNET.[11-$((10 + NODES))]"; [ "$NODES" = 1 ] && ADDRLIST=$SUBNET.11
: > "$D/etc/plugstack.conf"     # independent of /etc/slurm/plugstack.conf
cat > "$D/etc/taskprolog.sh" <<'EOF'
#!/bin/sh
# Slurm TaskProlog: each stdout line "export NAME=VALUE" goes into the environment of every
# task (batch script and srun tasks).  CI runs as root, and Open MPI's mpirun/mpiexec refuse
# to run as root without these two.
echo "export OMPI_ALLOW_RUN_AS_ROOT=1"
echo "export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
EOF
chmod 755 "$D/etc/taskprolog.sh"
PROCTRACK=proctrack/linuxproc; [ "$CGROUP" = 1 ] && PROCTRACK=proctrack/cgroup

cat > "$CONF" <<EOF
# Generated by d4p-hpc .ci/slurm-up.sh: emulated $NODES-node cluster on one host
# (multiple slurmd, one network/UTS/mount namespace per node).  Regenerated at every bring-up.
ClusterName=$CLUSTER
SlurmctldHost=localhost($CTL_ADDR)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MSOCK
# -- paths (%n = node name: the slurmds must not share files) --
StateSaveLocation=$D/state/ctld
SlurmdSpoolDir=$D/state/slurmd-%n
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd-%n.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$D/etc/plugstack.conf
MailProg=/bin/true
# TmpFS per node: the PMIx plugin creates <TmpFS>/spmix_appdir_<uid>_<job>.<step>; with the
# default /tmp all emulated nodes collide ("File exists") and srun --mpi=pmix fails.
TmpFS=$D/tmp/%n
TaskProlog=$D/etc/taskprolog.sh
# proctrack/cgroup (v1 freezer) kills everything a job started, even daemonized processes;
# proctrack/linuxproc only tracks the process tree (a double-forked daemon escapes scancel).
ProctrackType=$PROCTRACK
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
# -- scheduling --
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# nodes may declare more CPUs than the host has (otherwise INVAL "Low CPUs")
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
# default batch_sched_delay=3 makes every sbatch job wait for a 3 s scheduler tick
SchedulerParameters=batch_sched_delay=0
MpiDefault=pmix
ReturnToService=2
# SIGTERM -> SIGKILL grace on cancel/timeout; no grace minutes past the time limit
KillWait=$KILLWAIT
OverTimeLimit=0
InactiveLimit=0
# finished jobs stay visible to squeue -t all / scontrol show job for 15 min
MinJobAge=900
# job arrays: indices 0..3 only, so that the tests see a sweep split into several arrays
MaxArraySize=${D4P_SLURM_MAX_ARRAY_SIZE:-4}
FirstJobId=$FIRST_JOB_ID
# -- accounting: no slurmdbd; \`sacct -c\` reads the job completion file --
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$D/log/jobcomp.log
# -- nodes --
NodeName=$NODELIST NodeHostname=$NODELIST NodeAddr=$ADDRLIST Port=$NODE_PORT CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

if [ "$CGROUP" = 1 ]; then
  printf 'CgroupPlugin=cgroup/v1\nCgroupMountpoint=/sys/fs/cgroup\nCgroupAutomount=no\n' > "$D/etc/cgroup.conf"
  # slurmd creates /sys/fs/cgroup/<controller>/slurm_<node>/...; slurm-down.sh rmdir's them
  for i in $(seq 1 "$NODES"); do echo "slurm_node$i"; done > "$D/run/cgroups"
fi

NODENAMES=$(seq -f 'node%g' 1 "$NODES" | tr '\n' ' '); NODENAMES=${NODENAMES% }
NODEADDRS=$(awk '{printf "%s%s=%s", (NR>1?" ":""), $1, $2}' "$D/etc/nodes")
cat > "$D/env.sh" <<EOF
# d4p-hpc emulated Slurm cluster (.ci/slurm-up.sh).  Source me:  . $D/env.sh
export SLURM_CONF=$CONF
export D4P_SLURM_DIR=$D
export D4P_SLURM_PARTITION=$PARTITION
export D4P_SLURM_NODES="$NODENAMES"
export D4P_SLURM_NODE_ADDRS="$NODEADDRS"
export D4P_SLURM_CTL_ADDR=$CTL_ADDR
export D4P_SLURM_PROCTRACK=$PROCTRACK
EOF

if [ "${D4P_SLURM_LINK_ETC:-1}" = 1 ]; then
  mkdir -p /etc/slurm
  if [ -e /etc/slurm/slurm.conf ] && [ ! -L /etc/slurm/slurm.conf ]; then
    mv /etc/slurm/slurm.conf /etc/slurm/slurm.conf.pre-d4p
    log "moved the existing /etc/slurm/slurm.conf to /etc/slurm/slurm.conf.pre-d4p"
  fi
  ln -sfn "$CONF" /etc/slurm/slurm.conf
  echo "/etc/slurm/slurm.conf $CONF" > "$D/run/etclink"
  log "linked /etc/slurm/slurm.conf -> $CONF"
fi

# ---- 5. daemons ----------------------------------------------------------------------------------
slurmctld -f "$CONF" || die "slurmctld failed to start (see $D/log/slurmctld.log)"
for _ in $(seq 100); do [ -s "$D/run/slurmctld.pid" ] && break; sleep 0.05; done
[ -s "$D/run/slurmctld.pid" ] || die "no slurmctld pid file (see $D/log/slurmctld.log)"
echo "slurmctld $(cat "$D/run/slurmctld.pid")" >> "$D/run/pids"
for _ in $(seq 200); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.05; done
scontrol ping | grep -q UP || die "slurmctld not responding (see $D/log/slurmctld.log)"
log "slurmctld up (pid $(cat "$D/run/slurmctld.pid"), port $CTLD_PORT, $PROCTRACK)"

for i in $(seq 1 "$NODES"); do
  n=node$i
  mkdir -p "$D/state/slurmd-$n" "$D/tmp/$n"
  # nsenter --net (not `ip netns exec`, which remounts /sys and hides /sys/fs/cgroup); a new
  # UTS ns for the hostname and a new mount ns (slave: later host mounts still propagate in)
  # for the private /etc/hosts + resolv.conf.  slurmd daemonizes; its children (slurmstepd,
  # the jobs) inherit the namespaces.
  nsenter --net="/run/netns/$PFX-$n" unshare --uts --mount --propagation slave sh -c \
    "hostname $n && mount --bind '$D/etc/hosts' /etc/hosts && mount --bind '$D/etc/resolv.conf' /etc/resolv.conf && exec slurmd -f '$CONF' -N $n" \
    || die "slurmd -N $n (netns $PFX-$n) failed (see $D/log/slurmd-$n.log)"
done
for i in $(seq 1 "$NODES"); do
  n=node$i
  for _ in $(seq 100); do [ -s "$D/run/slurmd-$n.pid" ] && break; sleep 0.05; done
  [ -s "$D/run/slurmd-$n.pid" ] || die "no pid file for slurmd $n (see $D/log/slurmd-$n.log)"
  echo "slurmd-$n $(cat "$D/run/slurmd-$n.pid")" >> "$D/run/pids"
done
log "$NODES slurmd started"

# ---- 6. wait until every node is idle ------------------------------------------------------------
ok=0; states=
for _ in $(seq 600); do   # <= 60 s
  states=$(sinfo -h -N -o '%N=%T' 2>/dev/null | tr '\n' ' ')
  if [ "$(sinfo -h -N -t idle -o '%N' 2>/dev/null | wc -l)" = "$NODES" ]; then ok=1; break; fi
  sleep 0.1
done
[ $ok = 1 ] || { sinfo -N -l || true; die "nodes not idle after 60 s: $states"; }
log "all $NODES nodes idle after $(secs "$T0") s"

# ---- 7. warm-up job over all nodes ---------------------------------------------------------------
# slurmctld's first scheduling pass happens ~3 s after it starts: without this the first test
# job takes ~3 s.  It also proves munge credentials + step launch on every node.
if [ "${D4P_SLURM_WARMUP:-1}" = 1 ]; then
  wj=$(sbatch --parsable -N "$NODES" -J d4p-warmup -o /dev/null --wrap 'srun --mpi=none true') \
    || die "warm-up sbatch failed"
  st=
  for _ in $(seq 600); do
    st=$(squeue -h -t all -j "$wj" -o %T 2>/dev/null)
    case $st in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED) break ;; esac
    sleep 0.05
  done
  [ "$st" = COMPLETED ] || die "warm-up job $wj ended as '$st' (see $D/log/)"
  log "warm-up job $wj COMPLETED on $NODELIST"
fi
log "cluster ready in $(secs "$T0") s"
sinfo
echo "source $D/env.sh   # SLURM_CONF=$CONF; nodes: $NODEADDRS"
