#!/bin/bash
# .ci/slurm-down.sh - stop the emulated Slurm cluster started by .ci/slurm-up.sh, using what it
# recorded in $D/run (PIDs, namespaces, cgroups, /etc link).  Never kills by name.
# Order: cancel jobs -> slurmd -> leftover slurmstepd of THIS cluster -> slurmctld -> munged ->
# processes still inside our node namespaces (escaped from jobs) -> netns/veth/bridge ->
# empty cgroup dirs -> /etc/slurm/slurm.conf link.  Logs are kept ($D/log); slurm-up.sh wipes.
# Safe to run when nothing is up.  Env: D4P_SLURM_DIR (default /tmp/d4p-slurm).
set -uo pipefail

D=${D4P_SLURM_DIR:-/tmp/d4p-slurm}
PIDS=$D/run/pids
export SLURM_CONF=$D/etc/slurm.conf
log() { printf '[slurm-down %s] %s\n' "$(date +%T.%3N)" "$*"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
T0=$(now_ms)

# alive = exists and is not a zombie (PID 1 of this VM may reap late)
alive() { local s; s=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1; [ -n "$s" ] && [ "$s" != Z ]; }
# only signal a PID whose command line still names the expected program (PID-reuse guard)
is_prog() { tr '\0' ' ' 2>/dev/null < "/proc/$1/cmdline" | grep -q -- "$2"; }
stop_pid() {  # name pid prog
  local name=$1 pid=$2 prog=$3
  if ! alive "$pid"; then log "$name ($pid) not running"; return 0; fi
  if ! is_prog "$pid" "$prog"; then log "$name ($pid) is not $prog any more - skipped"; return 0; fi
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 150); do alive "$pid" || { log "$name ($pid) stopped"; return 0; }; sleep 0.1; done
  log "$name ($pid) did not stop after 15 s -> SIGKILL"; kill -KILL "$pid" 2>/dev/null
}
pid_of() { awk -v n="$1" '$1==n{print $2}' "$PIDS"; }

if [ ! -f "$PIDS" ] && [ ! -f "$D/run/netns" ] && [ ! -f "$D/run/cgroups" ] && [ ! -f "$D/run/etclink" ]; then
  log "nothing recorded in $D/run - nothing to stop"; exit 0
fi
touch "$PIDS"

# 1. cancel all jobs while the controller is up; wait (<= 15 s) for them to end
ctld_pid=$(pid_of slurmctld)
if [ -n "$ctld_pid" ] && alive "$ctld_pid" && timeout 10 scontrol ping 2>/dev/null | grep -q UP; then
  jobs=$(squeue -h -t PD,R,CG,S,CF -o %i 2>/dev/null | tr '\n' ' ')
  if [ -n "${jobs// /}" ]; then
    log "cancelling jobs: $jobs"; scancel $jobs 2>/dev/null
    for _ in $(seq 150); do [ -z "$(squeue -h -t PD,R,CG,S,CF -o %i 2>/dev/null)" ] && break; sleep 0.1; done
  fi
fi

# 2. slurmd's
while read -r name pid; do
  case $name in slurmd-*) stop_pid "$name" "$pid" slurmd ;; esac
done < "$PIDS"

# 3. slurmstepd's that outlive slurmd (by design): ours if they hold an fd on $D/log/...
for p in /proc/[0-9]*; do
  pid=${p#/proc/}
  is_prog "$pid" slurmstepd || continue
  if ls -l "$p/fd" 2>/dev/null | grep -q -- "$D/log/"; then stop_pid slurmstepd "$pid" slurmstepd; fi
done

# 4. controller, munge
[ -n "$ctld_pid" ] && stop_pid slurmctld "$ctld_pid" slurmctld
p=$(pid_of munged); [ -n "$p" ] && stop_pid munged "$p" munged
rm -f "$PIDS"

# 5. network namespaces / veths / bridge.  Anything still inside one of OUR node namespaces
#    escaped a job (e.g. a daemonized server under proctrack/linuxproc): it was started by this
#    cluster, so it is reported and stopped (TERM, then KILL after 3 s) before the netns goes.
if [ -f "$D/run/netns" ]; then
  while read -r kind name; do
    [ "$kind" = netns ] || continue
    left=$(ip netns pids "$name" 2>/dev/null | tr '\n' ' ')
    [ -n "${left// /}" ] || continue
    log "WARNING: processes left in netns $name (escaped their job): $(for q in $left; do printf '%s[%s] ' "$q" "$(tr '\0' ' ' 2>/dev/null < "/proc/$q/cmdline" | cut -c1-60)"; done)"
    kill -TERM $left 2>/dev/null
    for _ in $(seq 30); do
      live=; for q in $left; do alive "$q" && live="$live $q"; done
      [ -z "$live" ] && break; sleep 0.1
    done
    [ -n "$live" ] && { log "SIGKILL$live"; kill -KILL $live 2>/dev/null; }
  done < "$D/run/netns"
  while read -r kind name; do
    case $kind in
      netns) ip netns del "$name" 2>/dev/null && log "netns $name deleted" ;;
      veth)  ip link del "$name" 2>/dev/null ;;   # usually already gone with its netns
    esac
  done < "$D/run/netns"
  while read -r kind name; do
    [ "$kind" = bridge ] && ip link del "$name" 2>/dev/null && log "bridge $name deleted"
  done < "$D/run/netns"
  rm -f "$D/run/netns"
fi

# 6. empty per-node cgroup directories left by proctrack/cgroup
if [ -f "$D/run/cgroups" ]; then
  while read -r cg; do
    for d in /sys/fs/cgroup/*/"$cg"; do
      [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
      [ -d "$d" ] && log "WARNING: cgroup $d not removed (not empty?)"
    done
  done < "$D/run/cgroups"
  rm -f "$D/run/cgroups"
fi

# 7. /etc/slurm/slurm.conf link (only if it still points at our config)
if [ -f "$D/run/etclink" ]; then
  read -r link target < "$D/run/etclink"
  if [ -L "$link" ] && [ "$(readlink "$link")" = "$target" ]; then
    rm -f "$link"; log "removed link $link"
    [ -e "$link.pre-d4p" ] && mv "$link.pre-d4p" "$link" && log "restored $link from $link.pre-d4p"
  fi
  rm -f "$D/run/etclink"
fi
d=$(( $(now_ms) - T0 ))
log "cluster down in $((d / 1000)).$(printf '%03d' $((d % 1000))) s (logs kept in $D/log)"
