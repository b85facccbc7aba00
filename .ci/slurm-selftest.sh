#!/bin/bash
# .ci/slurm-selftest.sh - smoke tests of the emulated cluster brought up by .ci/slurm-up.sh,
# for what d4p-hpc relies on:
#   basics   sinfo/sbatch/srun without SLURM_CONF (via /etc/slurm/slurm.conf), exit codes,
#            4 distinct nodes (hostname, address), srun from the host
#   (a)      jobs see the repo and the python install (d4p_hpc, mpi4py, redis), and new paths
#   (b)      redis in a job on node1: bound to 0.0.0.0 reachable from node2 (and from the host
#            at node1's address); bound to 127.0.0.1 NOT reachable from node2 / the host
#   (c)      mpi4py over 2 nodes x 2 ranks via `srun --mpi=pmix` and `mpiexec` in the allocation
#   (d)      scancel kills the batch shell, its steps on all nodes, and (proctrack/cgroup)
#            daemonized processes; `sacct -c` shows the job
#   (e)      KillWait / OverTimeLimit / MinJobAge; finished jobs visible in squeue/scontrol
#   (f)      `--signal=B:USR1@50 -t 1`: the batch shell gets USR1, the job ends TIMEOUT
#            (takes ~1.5 min; runs in the background while the rest runs;
#             D4P_SELFTEST_QUICK=1 skips it)
# Usage: bash .ci/slurm-selftest.sh     (exit 0 = all passed; prints "N passed, N failed")
set -uo pipefail
D=${D4P_SLURM_DIR:-/tmp/d4p-slurm}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ -f "$D/env.sh" ] || { echo "no cluster: $D/env.sh missing (run .ci/slurm-up.sh)"; exit 1; }
# shellcheck disable=SC1090,SC1091
. "$D/env.sh"
timeout 15 scontrol ping 2>/dev/null | grep -q UP || { echo "no cluster: slurmctld of $SLURM_CONF does not answer"; exit 1; }
QUICK=${D4P_SELFTEST_QUICK:-0}
W=$D/jobs/selftest; rm -rf "$W"; mkdir -p "$W"; cd "$W" || exit 1
PASS=0; FAIL=0; SKIP=0
ok()   { echo "PASS: $*"; PASS=$((PASS+1)); }
bad()  { echo "FAIL: $*"; FAIL=$((FAIL+1)); }
skip() { echo "SKIP: $*"; SKIP=$((SKIP+1)); }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
el() { local d=$(( $(now_ms) - $1 )); printf '%d.%02d' $((d / 1000)) $(((d % 1000) / 10)); }
# wait until a job is finished; echo its final state
wait_job() { local j=$1 t=${2:-120} s
  [ -n "$j" ] || { echo NO_JOB_ID; return; }
  for _ in $(seq $((t * 20))); do
    s=$(squeue -h -t all -j "$j" -o %T 2>/dev/null)
    case $s in PENDING|RUNNING|COMPLETING|CONFIGURING|SUSPENDED|"") sleep 0.05 ;; *) echo "$s"; return ;; esac
  done; echo WAIT_TIMEOUT; }
wait_running() { for _ in $(seq 400); do [ "$(squeue -h -j "$1" -o %T 2>/dev/null)" = RUNNING ] && return 0; sleep 0.05; done; return 1; }
wait_file() { for _ in $(seq $((${2:-30} * 20))); do [ -s "$1" ] && return 0; sleep 0.05; done; return 1; }
alive() { local s; s=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1; [ "$s" != Z ]; }
T_ALL=$(now_ms)

# ---- (f) submitted first: it needs ~1.5 min of wall time, the rest runs meanwhile -----------
if [ "$QUICK" != 1 ]; then
  cat > sig.sbatch <<'EOF'
#!/bin/bash
#SBATCH -t 1
#SBATCH --signal=B:USR1@50
#SBATCH -J d4p-selftest-signal
echo "START $(date +%s%N)"
trap 'echo "USR1 $(date +%s%N)"' USR1
trap 'echo "TERM $(date +%s%N)"; exit 143' TERM
while :; do sleep 0.5 & wait $!; done
EOF
  SIGJ=$(sbatch --parsable -o "sig-%j.out" sig.sbatch); SIG_SUB=$(date +%s%N)
fi

# ---- basics -----------------------------------------------------------------------------------
# client commands without SLURM_CONF work through the /etc/slurm/slurm.conf link (if made)
if [ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$SLURM_CONF" ]; then NOENV="env -u SLURM_CONF"; else NOENV=; fi
echo "== sinfo${NOENV:+ (no SLURM_CONF: via /etc/slurm/slurm.conf)}"
$NOENV sinfo -N -o '%N %P %T %c %m' || true
if [ -n "$NOENV" ]; then
  [ "$($NOENV sinfo -h -N -p "$D4P_SLURM_PARTITION" | wc -l)" = "$(wc -w <<<"$D4P_SLURM_NODES")" ] \
    && ok "sinfo without SLURM_CONF: $(wc -w <<<"$D4P_SLURM_NODES") nodes in partition $D4P_SLURM_PARTITION" || bad "sinfo without SLURM_CONF"
else skip "client commands without SLURM_CONF (/etc/slurm/slurm.conf is not linked to this cluster)"; fi

for i in 1 2; do
  t=$(now_ms); j=$($NOENV sbatch --parsable -o "triv-%j.out" --wrap 'hostname; echo "SLURM_CONF=$SLURM_CONF"'); s=$(wait_job "$j")
  FIRSTJ=${FIRSTJ:-$j}
  [ "$s" = COMPLETED ] && ok "trivial sbatch${NOENV:+ (no env)} job $j $s in $(el "$t") s on $(head -1 triv-"$j".out)" || bad "trivial job $j: $s"
done
j=$(sbatch --parsable -o "fail-%j.out" --wrap 'exit 3'); s=$(wait_job "$j")
ec=$(scontrol show job "$j" | grep -o ' ExitCode=[0-9:]*' | head -1)
[ "$s" = FAILED ] && [ "$ec" = " ExitCode=3:0" ] && ok "failing job -> $s$ec" || bad "failing job: $s$ec"

t=$(now_ms)
j=$(sbatch --parsable -N 4 -o "n4-%j.out" --wrap 'srun -l bash -c "echo \$SLURMD_NODENAME \$(hostname) \$(ip -4 -o addr show eth0 | awk '"'"'{print \$4}'"'"')"')
s=$(wait_job "$j")
if [ "$s" = COMPLETED ] && [ "$(awk '$2==$3' n4-"$j".out | wc -l)" = 4 ] && [ "$(awk '{print $4}' n4-"$j".out | sort -u | wc -l)" = 4 ]; then
  ok "4-node job ($(el "$t") s): $(sort n4-"$j".out | awk '{printf "%s=%s ", $3, $4}')"
else bad "4-node job: $s"; cat n4-"$j".out; fi
out=$(srun -N 2 -l hostname 2>&1 | sort | tr '\n' ' ')
[ "$out" = "0: node1 1: node2 " ] && ok "srun from the host: $out" || bad "srun from the host: $out"

# ---- (a) repo + python install visible on the nodes --------------------------------------------
# imports run from / (not from the repo), so they prove the INSTALLED package (pip -e) is seen
host_imp=$(cd / && python3 -c 'import d4p_hpc; print(d4p_hpc.__file__)' 2>&1 | tail -1)
cat > imp.sh <<'EOF'
#!/bin/bash
echo "CWD $(hostname) $PWD"
cd / && python3 -c 'import os, sys, d4p_hpc, mpi4py, redis; print("IMPORT", os.uname().nodename, sys.executable, d4p_hpc.__file__)'
EOF
chmod +x imp.sh
j=$(cd "$REPO" && sbatch --parsable -N 2 -o "$W/imp-%j.out" --wrap "srun $W/imp.sh")
s=$(wait_job "$j")
if [ "$s" = COMPLETED ] && [ "$(grep -c "CWD node[12] $REPO\$" imp-"$j".out)" = 2 ] \
   && [ "$(grep -c "IMPORT node[12] .* $host_imp\$" imp-"$j".out)" = 2 ] && [ "${host_imp#"$REPO"/}" != "$host_imp" ]; then
  ok "(a) jobs on node1+node2 start in $REPO and import the installed d4p_hpc ($host_imp), mpi4py, redis"
elif [ "${host_imp#"$REPO"/}" = "$host_imp" ]; then
  bad "(a) on the host, d4p_hpc outside the repo is not this repo's editable install (run .ci/install.sh): $host_imp"
else bad "(a) import in job: $s"; cat imp-"$j".out; fi
NEW=$(mktemp -d "$D/jobs/newpath.XXXXXX"); echo 'X = 42' > "$NEW/d4p_newmod.py"
out=$(cd "$NEW" && srun -N 2 -l python3 -c 'import d4p_newmod; print(d4p_newmod.X)' 2>&1 | sort | tr '\n' ' ')
rm -rf "$NEW"
[ "$out" = "0: 42 1: 42 " ] && ok "(a) a directory created after bring-up is visible on the nodes" || bad "(a) new path: $out"

# ---- (b) redis in a job: 0.0.0.0 vs 127.0.0.1 ---------------------------------------------------
cat > redis.sbatch <<'EOF'
#!/bin/bash
#SBATCH -N 2
#SBATCH -J d4p-selftest-redis
set -u
W=$PWD
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("",0)); print(s.getsockname()[1])'; }
P_ALL=$(freeport); P_LO=$(freeport)
RDIR=$(mktemp -d)
redis-server --bind 0.0.0.0 --protected-mode no --port "$P_ALL" --save '' --appendonly no --dir "$RDIR" >"$RDIR/all.log" 2>&1 &
R1=$!
redis-server --bind 127.0.0.1 --port "$P_LO" --save '' --appendonly no --dir "$RDIR" >"$RDIR/lo.log" 2>&1 &
R2=$!
trap 'kill $R1 $R2 2>/dev/null; wait $R1 $R2 2>/dev/null; rm -rf "$RDIR"; echo redis-stopped' EXIT
until redis-cli -p "$P_ALL" ping 2>/dev/null | grep -q PONG && redis-cli -p "$P_LO" ping 2>/dev/null | grep -q PONG; do sleep 0.05; done
H=$(hostname)
echo "SERVER host=$H all=$P_ALL lo=$P_LO"
# raw socket probe (redis-py retries refused connections for ~5 s by default)
probe='import socket, sys
h, p = sys.argv[1], int(sys.argv[2])
try:
    s = socket.create_connection((h, p), timeout=3); s.sendall(b"PING\r\n")
    print("reachable" if s.recv(64).startswith(b"+PONG") else "bad-reply")
except OSError as e:
    print("unreachable", type(e).__name__)'
echo "NODE2 all-via-hostname $(srun -N1 -n1 -w node2 --mpi=none python3 -c "$probe" "$H" "$P_ALL")"
echo "NODE2 redis-py $(srun -N1 -n1 -w node2 --mpi=none python3 -c 'import sys, redis; print(redis.Redis.from_url(sys.argv[1]).ping())' "redis://$H:$P_ALL/0")"
echo "NODE2 lo-via-hostname $(srun -N1 -n1 -w node2 --mpi=none python3 -c "$probe" "$H" "$P_LO")"
echo "NODE2 lo-via-127 $(srun -N1 -n1 -w node2 --mpi=none python3 -c "$probe" 127.0.0.1 "$P_LO")"
echo "NODE1 lo-via-127 $(python3 -c "$probe" 127.0.0.1 "$P_LO")"
# let the host probe node1's address too (handshake through the shared filesystem)
echo "$P_ALL $P_LO" > "$W/redis-ports"
for _ in $(seq 300); do [ -e "$W/redis-host-done" ] && break; sleep 0.05; done
EOF
rm -f redis-ports redis-host-done
t=$(now_ms); j=$(sbatch --parsable -o "redis-%j.out" redis.sbatch)
N1=${D4P_SLURM_NODE_ADDRS%% *}; N1=${N1#*=}
hostres=
if wait_file redis-ports 30; then
  read -r PA PL < redis-ports
  probe='import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); s.sendall(b"PING\r\n")
    print("reachable" if s.recv(64).startswith(b"+PONG") else "bad-reply")
except OSError as e:
    print("unreachable", type(e).__name__)'
  hostres="$(python3 -c "$probe" "$N1" "$PA") / $(python3 -c "$probe" "$N1" "$PL")"
fi
touch redis-host-done; s=$(wait_job "$j")
o=redis-$j.out
if [ "$s" = COMPLETED ] && grep -q 'SERVER host=node1' "$o" && grep -q 'NODE2 all-via-hostname reachable' "$o" && grep -q 'NODE2 redis-py True' "$o" \
   && grep -q 'NODE2 lo-via-hostname unreachable' "$o" && grep -q 'NODE2 lo-via-127 unreachable' "$o" \
   && grep -q 'NODE1 lo-via-127 reachable' "$o" && grep -q redis-stopped "$o"; then
  ok "(b) redis on node1: 0.0.0.0 reachable from node2 via 'node1', 127.0.0.1 not reachable from node2 ($(el "$t") s)"
else bad "(b) redis job $s"; cat "$o"; fi
[ "$hostres" = "reachable / unreachable ConnectionRefusedError" ] && ok "(b) from the host via $N1: 0.0.0.0-bound reachable, 127.0.0.1-bound refused" \
  || bad "(b) from the host via $N1: '$hostres'"

# ---- (c) MPI over 2 nodes: srun --mpi=pmix and mpiexec ------------------------------------------
cat > mpitest.py <<'EOF'
import os
from mpi4py import MPI
c = MPI.COMM_WORLD; r, s = c.rank, c.size
node = MPI.Get_processor_name()
got = c.sendrecv(r, dest=(r + 1) % s, source=(r - 1) % s); assert got == (r - 1) % s
if r == 0:
    c.send(list(range(5)), dest=s - 1, tag=7); assert c.recv(source=s - 1, tag=8) == [0, 2, 4, 6, 8]
elif r == s - 1:
    c.send([2 * x for x in c.recv(source=0, tag=7)], dest=0, tag=8)
val = c.bcast({"root": node} if r == 0 else None, root=0)
tot = c.allreduce(r)
nodes = c.gather(node, root=0)
if r == 0:
    assert tot == s * (s - 1) // 2 and val == {"root": nodes[0]}
    print(f"MPIOK size={s} nodes={nodes}", flush=True)
EOF
cat > mpi.sbatch <<'EOF'
#!/bin/bash
#SBATCH -N 2
#SBATCH --ntasks-per-node=2
#SBATCH -t 3
#SBATCH -J d4p-selftest-mpi
echo "[srun --mpi=pmix]"; timeout 60 srun --mpi=pmix python3 mpitest.py
echo "[mpiexec]";         timeout 60 mpiexec python3 mpitest.py
echo "[mpiexec -n 4]";    timeout 60 mpiexec -n 4 python3 mpitest.py
EOF
t=$(now_ms); j=$(sbatch --parsable -o "mpi-%j.out" mpi.sbatch); s=$(wait_job "$j")
n=$(grep -c "MPIOK size=4 nodes=\['node1', 'node1', 'node2', 'node2'\]" mpi-"$j".out)
[ "$s" = COMPLETED ] && [ "$n" = 3 ] && ok "(c) mpi4py size=4 on node1,node1,node2,node2 via srun --mpi=pmix, mpiexec, mpiexec -n 4 ($(el "$t") s)" \
  || { bad "(c) MPI job $s ($n/3 ok)"; cat mpi-"$j".out; }

# ---- (d) scancel kills the batch shell, steps on both nodes, daemonized processes ---------------
cat > cancel.sbatch <<'EOF'
#!/bin/bash
#SBATCH -N 2
#SBATCH -J d4p-selftest-cancel
W=$PWD
echo $$ > "$W/pid.batch"
srun --mpi=none bash -c 'echo $$ > "'"$W"'/pid.step.$SLURMD_NODENAME"; exec sleep 600' &
python3 - "$W/pid.daemon" <<'PY' &
import os, sys, time
if os.fork(): os._exit(0)
os.setsid()
if os.fork(): os._exit(0)
open(sys.argv[1], "w").write(str(os.getpid())); time.sleep(600)
PY
wait
EOF
rm -f pid.*
j=$(sbatch --parsable -o "cancel-%j.out" cancel.sbatch)
wait_running "$j"; wait_file pid.batch 20; wait_file pid.step.node1 20; wait_file pid.step.node2 20; wait_file pid.daemon 20
pids="batch=$(cat pid.batch) step1=$(cat pid.step.node1) step2=$(cat pid.step.node2) daemon=$(cat pid.daemon)"
t=$(now_ms); scancel "$j"; s=$(wait_job "$j" 30); t_state=$(el "$t")
left=; for kv in $pids; do p=${kv#*=}; for _ in $(seq 100); do alive "$p" || break; sleep 0.1; done; alive "$p" && left="$left ${kv%%=*}($p)"; done
t_dead=$(el "$t")
if [ "$s" = CANCELLED ] && [ -z "$left" ]; then
  ok "(d) scancel -> CANCELLED in $t_state s; batch shell, steps on node1+node2 and a double-forked daemon all gone after $t_dead s [$D4P_SLURM_PROCTRACK]"
elif [ "$s" = CANCELLED ] && [ "$left" = " daemon($(cat pid.daemon))" ] && [ "$D4P_SLURM_PROCTRACK" = proctrack/linuxproc ]; then
  ok "(d) scancel -> CANCELLED; batch shell and steps gone; the daemonized process survived (expected with proctrack/linuxproc)"
  kill "$(cat pid.daemon)" 2>/dev/null
else bad "(d) scancel: state=$s, still alive:$left"; fi
out=$(sacct -c -j "$j" -o JobID,JobName%24,State,ExitCode -n 2>&1 | tail -1)
grep -q CANCELLED <<<"$out" && ok "(d) sacct -c -j $j: $(tr -s ' ' <<<"$out")" || bad "sacct -c: $out"

# ---- (e) timing parameters, finished jobs still listed ------------------------------------------
cfg=$(scontrol show config | grep -E '^(KillWait|OverTimeLimit|MinJobAge|ProctrackType|MpiDefault) ' | tr -s ' ' | tr '\n' ';')
kw=$(scontrol show config | awk '$1=="KillWait"{print $3}'); mja=$(scontrol show config | awk '$1=="MinJobAge"{print $3}')
otl=$(scontrol show config | awk '$1=="OverTimeLimit"{print $3}')
[ "$kw" -le 10 ] && [ "$mja" -ge 600 ] && [ "$otl" = 0 ] && ok "(e) $cfg" || bad "(e) config: $cfg"
n=$(squeue -h -t all -o %i | wc -l)
scontrol show job "$FIRSTJ" 2>/dev/null | grep -q JobState=COMPLETED && [ "$n" -ge 8 ] && ok "(e) finished jobs still listed: squeue -t all shows $n jobs, scontrol show job $FIRSTJ: COMPLETED" || bad "(e) finished jobs listing ($n)"

# ---- (f) wait for the signal/timeout job ---------------------------------------------------------
if [ "$QUICK" != 1 ]; then
  echo "waiting for the --signal/TIMEOUT job $SIGJ (ends 60-90 s after start: slurmctld checks limits every 30 s)"
  s=$(wait_job "$SIGJ" 200); o=sig-$SIGJ.out
  st=$(awk '$1=="START"{print $2}' "$o"); u1=$(awk '$1=="USR1"{print $2}' "$o" | head -1); te=$(awk '$1=="TERM"{print $2}' "$o")
  rel() { [ -n "$1" ] && [ -n "$st" ] && echo "$(( ($1 - st) / 1000000 ))" || echo "?"; }
  msg="submitted->start $(( (st - SIG_SUB) / 1000000 )) ms; USR1 at +$(rel "$u1") ms; SIGTERM at +$(rel "$te") ms; state $s; $(scontrol show job "$SIGJ" | grep -o 'RunTime=[^ ]*')"
  if [ "$s" = TIMEOUT ] && [ -n "$u1" ] && [ "$(rel "$u1")" -ge 9000 ] && [ "$(rel "$u1")" -le 45000 ]; then
    ok "(f) --signal=B:USR1@50 -t 1: $msg"
  else bad "(f) signal/timeout: $msg"; cat "$o"; fi
else
  skip "(f) --signal/TIMEOUT (D4P_SELFTEST_QUICK=1)"
fi

echo "== selftest took $(el "$T_ALL") s"
echo "$PASS passed, $FAIL failed, $SKIP skipped"
[ "$FAIL" = 0 ]
