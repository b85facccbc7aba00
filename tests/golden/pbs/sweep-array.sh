#!/bin/bash
#PBS -N word_count
#PBS -S /bin/bash
#PBS -l select=2:ncpus=2:mpiprocs=2:mem=2gb
#PBS -l place=scatter
#PBS -l walltime=00:30:00
#PBS -J 0-2%2
#PBS -o /scratch/user/d4p-results/word_count-sweep-0123abcd/tasks/
#PBS -e /scratch/user/d4p-results/word_count-sweep-0123abcd/tasks/
#PBS -k oed
#PBS -q workq
#PBS -A proj1
#PBS -W depend=afterany:1234[].server
# d4p-hpc sweep word_count: 3 task(s) as one job array, each a job of 2 node(s) x 2 task(s) x 1 CPU(s).
# Element i runs the job script of task d4p_tasks[i] (its folder under /scratch/user/d4p-results/word_count-sweep-0123abcd/tasks/).
# Made by `d4p-hpc submit --sweep` or `d4p-hpc resume SWEEP --failed`: change the sweep rather than this file.

umask 077
d4p_tasks=(4 5 7)
d4p_index=${PBS_ARRAY_INDEX:?"this is a PBS job array script: submit it with d4p-hpc submit --sweep"}
d4p_task=${d4p_tasks[$d4p_index]:?"d4p-hpc: this array has no element $d4p_index"}
d4p_dir=/scratch/user/d4p-results/word_count-sweep-0123abcd/tasks/"$d4p_task"
# a task that COMPLETED is not run again when the scheduler starts its element twice (PBS re-runs
# the subjobs that ran when its server restarted)
if grep -qs '"state": "COMPLETED"' "$d4p_dir/state/finished"; then
  echo "d4p-hpc: task $d4p_task of the sweep has COMPLETED already: it is not run again" >&2
  exit 0
fi
exec bash "$d4p_dir/job.sh"
