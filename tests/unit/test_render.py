"""Rendered job scripts: golden files for every scheduler x mapping, bash syntax, directive rules."""

import difflib
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from d4p_hpc import schedulers, supervisor, units
from d4p_hpc.results import Layout
from d4p_hpc.submission import render
from d4p_hpc.submission.launch import ShellVar
from d4p_hpc.supervisor import SAFE_MODULE
from d4p_hpc.submission.spec import MAPPINGS, JobSpec

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
RESOURCES = {"slurm": dict(partition="debug", account="proj1", memory="2G"),
             "pbs": dict(partition="workq", account="proj1", memory="2G"), "local": {}}


def golden_spec(scheduler: str, mapping: str, **extra) -> JobSpec:
    nodes = 1 if MAPPINGS[mapping] == "single" else 2
    values = dict(graph="/home/user/graphs/word_count.py", results_root="/scratch/user/d4p-results",
                  python="python3", walltime="00:30:00", iterations=10, scheduler=scheduler, mapping=mapping,
                  nodes=nodes, tasks_per_node=2, **RESOURCES[scheduler])
    return JobSpec(**{**values, **extra})


def rich_spec(scheduler: str, mapping: str) -> JobSpec:
    extra = dict(modules=["python/3.11", "openmpi"], venv="/home/user/venv", setup=["export OMP_NUM_THREADS=1"],
                 container="/images/d4p.sif", gpus_per_node=1, exclusive=True, cpus_per_task=4,
                 attr="graph", launcher_args=["--mpi=pmix"] if scheduler == "slurm" else [])
    if scheduler == "slurm":
        extra.update(qos="high", constraint="intel", gres="gpu:1", extra_directives=["#SBATCH --mail-type=END"])
    if scheduler == "pbs":
        extra.update(extra_directives=["#PBS -m abe"])
    return golden_spec(scheduler, mapping, **extra)


# the package's own schedulers (a test's toy registers only while that test runs)
SCHEDULERS = schedulers.names()
COMBINATIONS = [(s, m) for s in SCHEDULERS for m in MAPPINGS]


def bash_n(script: str) -> None:
    result = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + script


@pytest.mark.parametrize("scheduler, mapping", COMBINATIONS)
def test_golden(scheduler, mapping, update_golden):
    script = render.render_script(golden_spec(scheduler, mapping))
    path = GOLDEN / scheduler / f"{mapping}.sh"
    if update_golden:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script)
        return
    assert path.exists(), f"no golden file {path}: run pytest --update-golden"
    expected = path.read_text()
    if script != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), script.splitlines(True), str(path), "rendered"))
        pytest.fail(f"{path} differs from the rendered script (if the change is intended, run "
                    f"`pytest tests/unit/test_render.py --update-golden`):\n{diff}")


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_golden_of_a_job_that_continues_a_run(scheduler, update_golden):
    """The successor of a job stopped at its walltime (``d4p-hpc resume``, or ``--requeue`` from inside
    the job): the same directory, a dependency on the job it continues, the run resumed, and one
    resubmission fewer left."""
    spec = golden_spec(scheduler, "mpi", requeue=2, checkpoint_every=300,
                       continues="/scratch/user/d4p-results/word_count-1234", after="1234")
    script = render.render_script(spec)
    path = GOLDEN / scheduler / "continued.sh"
    if update_golden:
        path.write_text(script)
        return
    assert script == path.read_text(), f"{path} differs: run pytest tests/unit/test_render.py --update-golden"
    assert "d4p_results=/scratch/user/d4p-results/word_count-1234\n" in script
    assert "--checkpoint --checkpoint-every 300 --resume" in script
    assert '--from-job --exit-code "$rc"' in script
    dependency = {"slurm": "#SBATCH --dependency=afterany:1234", "pbs": "#PBS -W depend=afterany:1234",
                  "local": 'kill -0 "$D4P_AFTER_PID"'}[scheduler]
    assert dependency in script


def test_shellcheck_is_clean_on_every_golden_script():
    """Beyond `bash -n`: quoting and word-splitting mistakes in the templates (Debian shellcheck)."""
    import shutil

    if shutil.which("shellcheck") is None:
        reason = "shellcheck is not installed (apt-get install shellcheck; .ci/install.sh does)"
        pytest.fail(reason) if os.environ.get("CI") else pytest.skip(reason)
    scripts = sorted(str(p) for p in GOLDEN.glob("*/*.sh"))
    assert len(scripts) == len(COMBINATIONS) + 4 * len(SCHEDULERS)  # + continued.sh and the 3 sweep scripts each
    result = subprocess.run(["shellcheck", "--shell=bash", "--severity=warning", *scripts],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]


SWEEP = Path("/scratch/user/d4p-results/word_count-sweep-0123abcd")


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("case", ["array", "one", "task"])
def test_golden_of_a_sweep(scheduler, case, update_golden):
    """A sweep's scripts: an array of three tasks (the second array of the sweep: it waits for the
    first, --max-parallel 2), an array of one (PBS refuses -J 0-0), and a task's own job script (its
    directory fixed in advance, its job id the array element's)."""
    from d4p_hpc.sweeps.submit import Array

    spec = golden_spec(scheduler, "hybrid_redis")
    if case == "task":
        script = render.render_script(golden_spec(scheduler, "hybrid_redis", directory=str(SWEEP / "tasks" / "7"),
                                                  setup=["export STATION='BH Z'"]))
    else:
        tasks = (4, 5, 7) if case == "array" else (3,)
        after = {"slurm": "1234", "pbs": "1234[].server"}.get(scheduler) if case == "array" else None
        array = Array(SWEEP, tasks, 2 if case == "array" else None, SWEEP / "arrays")
        script = render.render_array(JobSpec.from_dict({**spec.to_dict(), "after": after}), array)
    bash_n(script)
    path = GOLDEN / scheduler / f"sweep-{case}.sh"
    if update_golden:
        path.write_text(script)
        return
    assert script == path.read_text(), f"{path} differs: run pytest tests/unit/test_render.py --update-golden"
    if case == "task":
        assert f"d4p_results={SWEEP}/tasks/7\n" in script
        return
    assert f"d4p_tasks=({' '.join(map(str, tasks))})" in script
    assert 'exec bash "$d4p_dir/job.sh"' in script
    directive = {("slurm", "array"): "#SBATCH --array=0-2%2", ("slurm", "one"): "#SBATCH --array=0-0\n",
                 ("pbs", "array"): "#PBS -J 0-2%2", ("pbs", "one"): "#PBS -J 0-1:2\n"}.get((scheduler, case))
    assert directive is None or directive in script
    if after:
        assert after in script


@pytest.mark.parametrize("scheduler, mapping", COMBINATIONS)
@pytest.mark.parametrize("make", [golden_spec, rich_spec])
def test_bash_syntax_and_directives_first(scheduler, mapping, make):
    script = render.render_script(make(scheduler, mapping))
    bash_n(script)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    # qsub stops reading directives at the first command; sbatch too
    assert not any(re.match(r"#(SBATCH|PBS)\b", line) for line in lines[first_command:])


# ids must not be a bare "mpi": pytest-mpi skips tests with that keyword unless run with --with-mpi
@pytest.mark.parametrize("mapping", ["mpi", "dyn_redis", "hybrid_redis"], ids=lambda m: f"mapping-{m}")
def test_srun_always_gets_cpus_per_task(mapping):
    script = render.render_script(rich_spec("slurm", mapping))
    sruns = [line for line in script.splitlines() if "srun " in line and not line.lstrip().startswith("#")]
    assert sruns and all("--cpus-per-task=4" in line for line in sruns)


def test_pbs_launches_with_the_node_file_and_asks_for_chunks():
    script = render.render_script(rich_spec("pbs", "mpi"))
    assert 'mpiexec -n 4 --hostfile "$PBS_NODEFILE"' in script
    assert "#PBS -l select=2:ncpus=8:mpiprocs=2:mem=2gb:ngpus=1" in script
    assert "#PBS -l place=scatter:excl" in script
    assert "#PBS -l walltime=00:30:00" in script


def test_slurm_directives():
    script = render.render_script(rich_spec("slurm", "hybrid_redis"))
    for directive in ("--nodes=2", "--ntasks-per-node=2", "--cpus-per-task=4", "--time=00:30:00",
                      "--signal=B:USR1@60", "--mem=2G", "--partition=debug", "--account=proj1", "--qos=high",
                      "--constraint=intel", "--gres=gpu:1", "--gpus-per-node=1", "--exclusive", "--mail-type=END"):
        assert f"#SBATCH {directive}\n" in script
    assert "--time=1-01:00:00" in render.render_script(golden_spec("slurm", "mpi", walltime="1-01:00:00"))


def test_environment_setup_and_container():
    script = render.render_script(rich_spec("slurm", "multi"))
    assert "module load python/3.11 || exit\nmodule load openmpi || exit\n" in script
    assert ". /home/user/venv/bin/activate || exit" in script
    assert "export OMP_NUM_THREADS=1\n" in script
    safe = " ".join(render.quote(word) for word in SAFE_MODULE)
    assert ('"$d4p_container" exec --bind /scratch/user/d4p-results --bind /home/user/graphs /images/d4p.sif '
            f'python3 {safe} d4p_hpc run /home/user/graphs/word_count.py -m multi -n 2 --attr graph -i 10') in script


def test_job_commands_never_put_the_working_directory_first(tmp_path):
    """The bootstrap of every in-job command drops '' from sys.path before it imports anything."""
    (tmp_path / "inspect.py").write_text("raise SystemExit('shadowed')\n")
    (tmp_path / "runpy.py").write_text("raise SystemExit('shadowed')\n")
    done = subprocess.run([sys.executable, *SAFE_MODULE, "json.tool", "--help"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0 and "shadowed" not in done.stderr, done.stderr
    where = subprocess.run([sys.executable, *SAFE_MODULE, "inspect", "--help"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert "shadowed" not in where.stderr + where.stdout


def test_the_script_stops_as_the_supervisor_says(monkeypatch):
    monkeypatch.setattr(supervisor, "GRACE_SECONDS", 2.5)
    script = render.render_script(golden_spec("local", "dyn_redis"))
    assert "SIGKILL if it is still there after 2.5 s" in script and "for ((i = 0; i < 25; i++))" in script
    for codes, state in supervisor.shell_cases():
        assert f"\n      {codes}) state={state} reason=" in script
    assert "\n  trap '' TERM INT USR1\n" in script and "\ntrap 'd4p_on_signal USR1' USR1\n" in script


def test_quote_filter():
    assert render.quote(ShellVar("d4p_results")) == '"$d4p_results"'
    assert render.quote("a b'c") == "'a b'\"'\"'c'"
    assert render.argv(["echo", "$(x)", ShellVar("y")]) == "echo '$(x)' \"$y\""
    assert units.clock(93784, days=True) == "1-02:03:04" and units.clock(93784) == "26:03:04"


def test_missing_template_variables_are_errors():
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        render._environment().from_string("{{ nothing_here }}").render()


def test_templates_come_from_the_package():
    base = resources.files("d4p_hpc.templates")
    for scheduler in SCHEDULERS:
        assert (base / scheduler / "job.sh.j2").is_file()
    assert (base / "common" / "job.sh.j2").is_file()


def test_templates_take_the_names_of_the_results_directory_from_its_layout():
    names = [Layout.STATE + "/", Layout.WORKERS_LOG, f"d4p_mark {Layout.STARTED}", f"d4p_mark {Layout.FINISHED}",
             *(f"$d4p_results/{name}" for name in (Layout.SCRIPT, Layout.SPEC, Layout.REDIS, Layout.STATE,
                                                   Layout.LOGS, Layout.SCHEDULER_LOG))]
    for template in resources.files("d4p_hpc.templates").iterdir():
        for path in template.iterdir() if template.is_dir() else []:
            text = re.sub(r"\{#.*?#\}", "", path.read_text(), flags=re.DOTALL)  # its comments may name them
            assert not [name for name in names if name in text], path


def test_bad_setup_lines_are_caught():
    script = render.render_script(golden_spec("slurm", "multi", setup=["if true; then"]))
    with pytest.raises(Exception, match="not valid bash"):
        render.check_syntax(script)
