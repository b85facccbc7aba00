#!/bin/bash

# d4p-hpc job word_count: mapping dyn_redis, 2 node(s) x 2 task(s) x 1 CPU(s).
# It writes <results root>/word_count-<job id>/ (job.sh, spec.json, state/, run.json,
# metrics.json, outputs/, logs/), which `d4p-hpc status|logs|results DIR` read.
# Made by `d4p-hpc render`/`submit`: change the job spec rather than this file.

# results and the per-job Redis password are nobody else's business on a shared cluster
umask 077
d4p_job_id=${D4P_JOB_ID:?"this script is for the local scheduler: run it with d4p-hpc submit --scheduler local"}
d4p_results=/scratch/user/d4p-results/word_count-"$d4p_job_id"
# the run records which job each of its segments ran in
export D4P_HPC_JOB_ID="$d4p_job_id"
mkdir -p -- "$d4p_results/state" || exit 1
# (a shell reading the script from stdin has no file to copy; submit wrote job.sh then)
[ ! -f "$0" ] || [ "$0" -ef "$d4p_results/job.sh" ] || cp -- "$0" "$d4p_results/job.sh"
printf '%s\n' '{
  "sources": {},
  "spec": {
    "account": null,
    "after": null,
    "attr": null,
    "checkpoint_every": null,
    "conda": null,
    "constraint": null,
    "container": null,
    "continues": null,
    "cpus_per_task": 1,
    "data": null,
    "directory": null,
    "exclusive": false,
    "extra_directives": [],
    "gpus_per_node": null,
    "graph": "/home/user/graphs/word_count.py",
    "gres": null,
    "input_file": null,
    "iterations": 10,
    "job_name": "word_count",
    "launcher": null,
    "launcher_args": [],
    "mapping": "dyn_redis",
    "memory": null,
    "modules": [],
    "nodes": 2,
    "partition": null,
    "python": "python3",
    "qos": null,
    "redis_bind": null,
    "requeue": 0,
    "results_root": "/scratch/user/d4p-results",
    "scheduler": "local",
    "setup": [],
    "signal_seconds": null,
    "tasks_per_node": 2,
    "venv": null,
    "walltime": "00:30:00"
  }
}' >"$d4p_results/spec.json"

# --- state markers: state/started now, state/finished (state, exit code, reason) at exit ---
d4p_mark() {  # NAME JSON-FIELDS [FOLDER]: write FOLDER/NAME atomically (default: state/)
  local into=${3:-$d4p_results/state}
  printf '{"time": "%s", "epoch": %s, %s}\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(date +%s)" "$2" \
    >"$into/.$1" && mv -f -- "$into/.$1" "$into/$1"
}
d4p_mine() {  # print the folder of this job's markers: state/, or its segment if a resume archived it
  # (a job whose end was inferred while its exit trap still ran: its successor owns state/ now)
  local markers=$d4p_results/state segment own="\"job_id\": \"$d4p_job_id\""
  if [ ! -e "$markers/submitted" ] || grep -qsF -- "$own" "$markers/submitted"; then
    printf '%s\n' "$markers"
    return 0  # (a bare return in an EXIT trap gives the script's exit code)
  fi
  for segment in "$markers/segments"/[0-9]*/; do
    if grep -qsF -- "$own" "${segment}submitted"; then
      printf '%s\n' "${segment%/}"
      return 0
    fi
  done
  return 1
}
d4p_mark started "\"job_id\": \"$d4p_job_id\", \"host\": \"$(hostname)\", \"pid\": $$"

d4p_stage="environment set-up"
d4p_child=     # the run, once started: SIGUSR1 is passed on to it
d4p_signal=    # the first stop signal received (USR1: walltime is near)
d4p_services=  # background processes, stopped at exit, latest first
d4p_run_rc=    # exit code of the run, once it ended

d4p_on_signal() {  # SIG: note the first stop signal; pass SIGUSR1 on to the run, which keeps its outputs
  [ -n "$d4p_signal" ] || d4p_signal=$1
  # a cancel's SIGTERM comes from the scheduler to every process of the job on this node (Slurm: on every
  # node; PBS without TM support: maybe to none elsewhere, where the run stops its workers through Redis),
  # but SIGUSR1 to this shell only
  [ "$1" != USR1 ] || [ -z "$d4p_child" ] || kill -s USR1 "$d4p_child" 2>/dev/null
}
trap 'd4p_on_signal TERM' TERM
trap 'd4p_on_signal INT' INT
trap 'd4p_on_signal USR1' USR1

d4p_wait() {  # PID: wait for it through trapped signals; return its exit code
  local rc again
  while :; do
    wait "$1"; rc=$?
    [ "$rc" -gt 128 ] || return "$rc"
    kill -0 "$1" 2>/dev/null && continue
    # the wait was cut short by a signal as the process ended: ask again for its real code
    wait "$1" 2>/dev/null; again=$?
    [ "$again" -eq 127 ] || rc=$again
    return "$rc"
  done
}

d4p_run() {  # run the workflow command "$@" in the foreground and keep its exit code
  d4p_stage="run"
  [ -z "$d4p_signal" ] || return 0
  "$@" &
  d4p_child=$!
  # a signal that came while the run was being started has missed it
  [ -z "$d4p_signal" ] || kill -s "$d4p_signal" "$d4p_child" 2>/dev/null
  d4p_wait "$d4p_child"
  d4p_run_rc=$?
  d4p_child=
}

d4p_stop() {  # PID: SIGTERM, and SIGKILL if it is still there after 10 s
  local i
  kill -TERM "$1" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null
  wait "$1" 2>/dev/null
}

d4p_finish() {
  local rc=$? state reason pid into lost
  trap '' TERM INT USR1
  for pid in $d4p_services; do d4p_stop "$pid"; done
  if [ -n "$d4p_run_rc" ]; then
    rc=$d4p_run_rc
    case $rc in
      0) state=COMPLETED reason= ;;
      130 | 143) state=CANCELLED reason="the run was stopped by a signal" ;;
      138) state=TIMEOUT reason="the run stopped at the pre-walltime signal" ;;
      *) state=FAILED reason="the run exited with code $rc" ;;
    esac
  else
    state=FAILED reason="$d4p_stage failed (exit code $rc)"
  fi
  if [ "$state" != COMPLETED ] && [ -n "$d4p_signal" ]; then
    case $d4p_signal in
      USR1) state=TIMEOUT reason="walltime: stopped at the pre-walltime signal" rc=${d4p_run_rc:-138} ;;
      *) state=CANCELLED reason="stopped by SIG$d4p_signal during the $d4p_stage" rc=${d4p_run_rc:-143} ;;
    esac
  fi
  # a node lost: only the launcher says which (srun: "srun: error: Node failure on NODE"; on the job's
  # stderr, and the workers' log). Ranks, and a job that runs no workers, are stopped as by a cancel;
  # workers (srun --no-kill) go on without it, and the others redo its tasks
  if lost=$(grep -ho 'Node failure on [^ ]*' -- "$d4p_results/job.err" \
      "$d4p_results/logs/workers.log" 2>/dev/null | tail -n 1) && [ -n "$lost" ]; then
    case $state in
      CANCELLED) state=FAILED reason="node failure: ${lost#Node failure on } was lost, and the job stopped with it" ;;
      COMPLETED) reason="node ${lost#Node failure on } was lost; the workers on the other nodes redid its tasks" ;;
      *) reason="node ${lost#Node failure on } was lost; $reason" ;;
    esac
  fi
  if into=$(d4p_mine); then
    d4p_mark finished "\"state\": \"$state\", \"exit_code\": $rc, \"reason\": \"$reason\"" "$into"
  else
    echo "d4p-hpc: job $d4p_job_id ended $state, but $d4p_results now holds another job: its end is not recorded there" >&2
  fi
  exit "$rc"
}
trap d4p_finish EXIT

# --- walltime: the scheduler sends no warning, so a timer sends SIGUSR1 60 s before
# the limit (the run keeps its outputs and stops) and, at it, SIGTERM to the job's processes ---
(
  trap 'kill "$d4p_sleep" 2>/dev/null; exit 0' TERM
  sleep 1740 & d4p_sleep=$!
  wait "$d4p_sleep" || exit 0
  # only to this script: once it is gone (SIGKILLed), its pid may be another process's
  read -r d4p_stat </proc/$BASHPID/stat && set -- ${d4p_stat##*) } && [ "$2" = $$ ] || exit 0
  kill -USR1 $$
  sleep 60 & d4p_sleep=$!
  wait "$d4p_sleep" || exit 0
  kill -TERM 0
) &
d4p_services="$! $d4p_services"

# --- the run: a per-job Redis on this (the first) node, a worker per task on every node, the driver here ---
d4p_stage="Redis start-up"
d4p_redis_conn="$d4p_results/redis.json"
python3 -c 'import sys;sys.path[:1]==['"'"''"'"']and sys.path.pop(0);import runpy;runpy.run_module(sys.argv.pop(1),run_name='"'"'__main__'"'"',alter_sys=True)' d4p_hpc.mappings.redis.server --results "$d4p_results" --bind 127.0.0.1 --clients 28 --relay-clients 26 &
d4p_redis=$!
d4p_services="$d4p_redis $d4p_services"
# workers read the connection file, which the server writes once Redis answers
until [ -s "$d4p_redis_conn" ]; do
  kill -0 "$d4p_redis" 2>/dev/null || exit 1
  [ -z "$d4p_signal" ] || exit 1
  sleep 0.2
done

d4p_stage="worker start-up"
d4p_fork() {  # one copy of "$@" per line of the node file, stopped together
  local pids='' _host pid
  while read -r _host; do "$@" & pids="$pids $!"; done <"$D4P_NODEFILE"
  trap 'kill -TERM $pids 2>/dev/null' TERM INT
  for pid in $pids; do d4p_wait "$pid"; done
}
# their stderr (and the launcher's) is copied to logs/workers.log: the driver watches it and the
# launcher, and fails the run, naming the cause, if a worker cannot join or all of them are gone
d4p_fork python3 -c 'import sys;sys.path[:1]==['"'"''"'"']and sys.path.pop(0);import runpy;runpy.run_module(sys.argv.pop(1),run_name='"'"'__main__'"'"',alter_sys=True)' d4p_hpc.mappings.redis.worker --connection "$d4p_redis_conn" 2> >(tee -a -- "$d4p_results/logs/workers.log" >&2) &
d4p_services="$! $d4p_services"
export D4P_WORKERS_PID=$! D4P_WORKERS_LOG="$d4p_results/logs/workers.log"

d4p_run python3 -c 'import sys;sys.path[:1]==['"'"''"'"']and sys.path.pop(0);import runpy;runpy.run_module(sys.argv.pop(1),run_name='"'"'__main__'"'"',alter_sys=True)' d4p_hpc run /home/user/graphs/word_count.py -m dyn_redis -n 4 -i 10 --redis-connection "$d4p_redis_conn" --external-workers --results "$d4p_results"
