#!/bin/bash
#SBATCH --job-name=word_count
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:30:00
#SBATCH --signal=B:USR1@60
#SBATCH --no-requeue
#SBATCH --no-kill
#SBATCH --array=0-0
#SBATCH --output=/scratch/user/d4p-results/word_count-sweep-0123abcd/arrays/%A_%a.out
#SBATCH --error=/scratch/user/d4p-results/word_count-sweep-0123abcd/arrays/%A_%a.err
#SBATCH --mem=2G
#SBATCH --partition=debug
#SBATCH --account=proj1
# d4p-hpc sweep word_count: 1 task(s) as one job array, each a job of 2 node(s) x 2 task(s) x 1 CPU(s).
# Element i runs the job script of task d4p_tasks[i] (its folder under /scratch/user/d4p-results/word_count-sweep-0123abcd/tasks/).
# Made by `d4p-hpc submit --sweep` or `d4p-hpc resume SWEEP --failed`: change the sweep rather than this file.

umask 077
d4p_tasks=(3)
d4p_index=$SLURM_ARRAY_TASK_ID
d4p_task=${d4p_tasks[$d4p_index]:?"d4p-hpc: this array has no element $d4p_index"}
d4p_dir=/scratch/user/d4p-results/word_count-sweep-0123abcd/tasks/"$d4p_task"
# the scheduler opened the element's logs before it knew the task: they move into its results directory
for d4p_ext in out err; do
  d4p_log=/scratch/user/d4p-results/word_count-sweep-0123abcd/arrays/"${SLURM_ARRAY_JOB_ID}_$SLURM_ARRAY_TASK_ID.$d4p_ext"
  [ ! -f "$d4p_log" ] || mv -f -- "$d4p_log" "$d4p_dir/job.$d4p_ext"
done
# a task that COMPLETED is not run again when the scheduler starts its element twice (PBS re-runs
# the subjobs that ran when its server restarted)
if grep -qs '"state": "COMPLETED"' "$d4p_dir/state/finished"; then
  echo "d4p-hpc: task $d4p_task of the sweep has COMPLETED already: it is not run again" >&2
  exit 0
fi
exec bash "$d4p_dir/job.sh"
