#!/bin/bash
# A stand-in for the Python interpreter of job scripts, for tests of the scripts themselves.
# It records its arguments (one file per call, NUL-terminated words, in $D4P_FAKE_LOG/) and
# plays the part the arguments ask for:
#   -m d4p_hpc run ... --results DIR   writes D4P_FAKE_ITEMS items (default 3), one per
#                                      D4P_FAKE_SLEEP seconds, to DIR/outputs/Fake.output, then
#                                      DIR/run.json, and exits D4P_FAKE_EXIT (default 0); on
#                                      SIGUSR1 it stops early as TIMEOUT (exit 138), on SIGTERM
#                                      as CANCELLED (exit 143), like the real run
#   -m d4p_hpc.mappings.redis.server --results DIR   writes DIR/redis.json, waits for SIGTERM
#   -m d4p_hpc.mappings.redis.worker ...    waits for SIGTERM
if [ -n "${D4P_FAKE_LOG:-}" ]; then
  printf '%s\0' "$@" >"$(mktemp "$D4P_FAKE_LOG/argv.XXXXXX")"
fi
# job scripts start modules as `python -c BOOTSTRAP MODULE ARGS` (d4p_hpc.supervisor.SAFE_MODULE)
if [ "${1:-}" = -c ]; then set -- -m "${@:3}"; fi
results=
prev=
for arg in "$@"; do
  [ "$prev" != --results ] || results=$arg
  prev=$arg
done

finish() {  # STATE CODE
  printf '{"state": "%s", "exit_code": %s}\n' "$1" "$2" >"$results/run.json"
  exit "$2"
}

case "$1 $2" in
  "-m d4p_hpc")
    mkdir -p "$results/outputs/Fake.output" "$results/logs"
    echo "fake run on $(hostname)" >"$results/logs/00000.log"
    trap 'finish TIMEOUT 138' USR1
    trap 'finish CANCELLED 143' TERM
    for ((i = 1; i <= ${D4P_FAKE_ITEMS:-3}; i++)); do
      echo "$i" >>"$results/outputs/Fake.output/part-00000.jsonl"
      sleep "${D4P_FAKE_SLEEP:-0}" & wait $!
    done
    if [ "${D4P_FAKE_EXIT:-0}" = 0 ]; then finish COMPLETED 0; else finish FAILED "$D4P_FAKE_EXIT"; fi
    ;;
  "-m d4p_hpc.mappings.redis.server")
    trap 'exit 0' TERM
    echo '{"host": "127.0.0.1", "port": 1, "password": "x"}' >"$results/redis.json"
    while :; do sleep 0.1 & wait $!; done
    ;;
  "-m d4p_hpc.mappings.redis.worker")
    trap 'exit 0' TERM
    while :; do sleep 0.1 & wait $!; done
    ;;
  *)
    echo "fake interpreter: unexpected arguments: $*" >&2
    exit 2
    ;;
esac
