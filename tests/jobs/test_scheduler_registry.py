"""A new scheduler is one class plus one template: a toy one, registered here, renders, submits,
reads back and refuses what it does not support, with no other change to d4p-hpc."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.runs import EXAMPLES, independent_word_counts, processes_mentioning

from d4p_hpc import schedulers, supervisor
from d4p_hpc.errors import SpecError
from d4p_hpc.jobs import state as jobs
from d4p_hpc.results import Layout, output_items, read_run
from d4p_hpc.schedulers import Scheduler, SchedulerState, Submission
from d4p_hpc.submission import config
from d4p_hpc.submission.render import check_syntax, render_script
from d4p_hpc.submission.spec import JobSpec
from d4p_hpc.submission.submit import submit

WORD_COUNT = str(EXAMPLES / "word_count.py")
PID_FILE = Path("state") / "toy.pid"
NODE_FILE = Path("state") / "toy.nodes"

TEMPLATE = """\
{% extends "common/job.sh.j2" %}
{% block directives %}
#TOY --name={{ spec.job_name }}
#TOY --slots={{ spec.total_tasks }}
#TOY --walltime={{ spec.walltime_seconds|clock }}
{% if spec.partition %}
#TOY --pool={{ spec.partition }}
{% endif %}
{% if spec.memory %}
#TOY --mem={{ spec.memory }}
{% endif %}
{% for line in spec.extra_directives %}
{{ line }}
{% endfor %}
{% endblock %}

{% block job %}
d4p_job_id=${TOY_JOB_ID:?"this is a toy job script: submit it with d4p-hpc submit --scheduler toy"}
{% endblock %}

{% block timer %}
{% include "common/timer.sh.j2" %}
{% endblock %}
"""


class Toy(Scheduler):
    """Runs the job script here, with bash, as a background process; knows a job by its pid file."""

    name = "toy"
    title = "Toy"
    template = "toy/job.sh.j2"
    directive = "#TOY"
    nodefile = "TOY_NODEFILE"
    on_this_host = True
    options = frozenset({"partition", "memory"})
    command = "toy-submit"
    priority = 30

    def submit(self, script: str, job: Submission) -> str:
        job_id = f"toy-{secrets.token_hex(3)}"
        layout = Layout(job.results_dir(job_id))
        directory = layout.directory
        layout.state.mkdir(parents=True)
        layout.script.write_text(script)
        (directory / NODE_FILE).write_text("localhost\n" * job.tasks)
        env = dict(os.environ, TOY_JOB_ID=job_id, TOY_NODEFILE=str(directory / NODE_FILE))
        stdout, stderr = layout.scheduler_logs
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            proc = subprocess.Popen(["bash", str(layout.script)], env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True)
        (directory / PID_FILE).write_text(f"{proc.pid}\n")
        return job_id

    def query(self, jobs: dict[str, Path]) -> dict[str, SchedulerState]:
        return {job_id: SchedulerState("RUNNING", "", "R") for job_id, directory in jobs.items()
                if _running(int((directory / PID_FILE).read_text()))}

    def cancel(self, job_id: str, results_dir: Path) -> None:
        supervisor.stop_group(int((results_dir / PID_FILE).read_text()))


def _running(pid: int) -> bool:
    try:  # the job is this test's child: reap it once it has ended
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:  # reaped already
        return False


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy scheduler, registered, with its template in tmp_path; unregistered afterwards."""
    templates = tmp_path / "toy-templates"
    (templates / "toy").mkdir(parents=True)
    (templates / "toy" / "job.sh.j2").write_text(TEMPLATE)
    monkeypatch.setattr(Toy, "template_path", (str(templates),))
    schedulers.register(Toy)
    yield Toy
    schedulers.unregister(Toy.name)


def toy_spec(tmp_path, **kw) -> JobSpec:
    values = dict(graph=WORD_COUNT, results_root=str(tmp_path / "results"), scheduler="toy", python=sys.executable,
                  walltime="00:30:00")
    return JobSpec(**{**values, **kw})


def test_the_toy_renders_its_own_directives_around_the_common_script(toy, tmp_path):
    script = render_script(toy_spec(tmp_path, mapping="mpi", nodes=2, tasks_per_node=2, partition="blue",
                                    memory="2g", extra_directives=["#TOY --mail=me"]))
    check_syntax(script)
    header = script.split("\n\n", 1)[0].splitlines()
    assert header == ["#!/bin/bash", "#TOY --name=word_count", "#TOY --slots=4", "#TOY --walltime=00:30:00",
                      "#TOY --pool=blue", "#TOY --mem=2G", "#TOY --mail=me"]
    assert 'd4p_job_id=${TOY_JOB_ID:?"this is a toy job script' in script
    # the launch step knows the toy's node file, and that its jobs run on this host (no placement)
    assert 'mpiexec -n 4 --hostfile "$TOY_NODEFILE"' in script and "d4p_mpiexec" not in script
    for codes, state in supervisor.shell_cases():
        assert f"      {codes}) state={state} " in script
    redis = render_script(toy_spec(tmp_path, mapping="dyn_redis", nodes=2))
    assert 'done <"$TOY_NODEFILE"' in redis and "--bind 127.0.0.1" in redis


def test_a_word_count_job_runs_through_the_toy_and_reads_back(toy, tmp_path, cli, isolated_config):
    spec = toy_spec(tmp_path, nodes=2, iterations=20)
    job_id, directory = submit(spec, render_script(spec))
    job = jobs.open_job(directory)
    assert (job.job_id, job.scheduler) == (job_id, "toy") and job_id.startswith("toy-")
    final = jobs.wait(job, poll=0.2, timeout=120)
    assert final.state == "COMPLETED", (final, (directory / "job.err").read_text())
    assert final.exit_code == 0 and read_run(directory)["processes"] == 2
    counts = {word: count for word, count in output_items(directory, "CountWords", "output")}
    assert counts == independent_word_counts(20)
    assert [p.name for p in jobs.log_files(job)][:2] == ["job.out", "job.err"]
    assert not processes_mentioning(str(directory))
    # the commands find it through the registry as well
    assert "COMPLETED" in cli("status", directory).output
    assert "CountWords.output: " in cli("results", directory).output


def test_what_the_toy_does_not_support_is_refused_before_anything_is_submitted(toy, tmp_path, cli,
                                                                              isolated_config):
    for request, owners in (("qos", "a Slurm option"), ("gres", "a Slurm option"),
                            ("account", "a Slurm and PBS option"), ("exclusive", "a Slurm and PBS option")):
        with pytest.raises(SpecError) as refused:
            toy_spec(tmp_path, **{request: True if request == "exclusive" else "x"})
        assert str(refused.value) == (f"{request} is {owners} that the Toy scheduler does not support; "
                                      "write it as a raw directive, e.g. --directive '#TOY ...'")
    with pytest.raises(SpecError, match=r"unknown launcher for toy 'srun'; valid: mpiexec$"):
        toy_spec(tmp_path, launcher="srun")
    with pytest.raises(SpecError, match="must be one line starting with '#TOY '"):
        toy_spec(tmp_path, extra_directives=["#SBATCH --mail-type=END"])
    root = tmp_path / "cli-results"
    result = cli("submit", WORD_COUNT, "--scheduler", "toy", "--qos", "high", "--results-root", root)
    assert result.exit_code == 2
    assert "Error: qos is a Slurm option that the Toy scheduler does not support" in result.output
    assert not root.exists() and not (tmp_path / "results").exists()


def test_the_toy_is_found_on_path_and_listed(toy, tmp_path, monkeypatch, isolated_config):
    assert schedulers.names() == ["toy", "slurm", "pbs", "local"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "toy-submit").write_text("#!/bin/sh\n")
    (bin_dir / "toy-submit").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert config.resolve({"graph": WORD_COUNT}).values["scheduler"] == "toy"


def test_a_name_is_registered_once_and_a_host_scheduler_needs_a_node_file(toy):
    with pytest.raises(ValueError, match="'toy' is registered already"):
        schedulers.register(type("Impostor", (Toy,), {}))
    with pytest.raises(ValueError, match="needs a nodefile"):
        schedulers.register(type("Nowhere", (Toy,), {"name": "nowhere", "nodefile": None}))
    assert schedulers.register(Toy) is Toy  # the same class again is no conflict


def test_no_scheduler_may_take_the_name_of_a_run_without_one():
    with pytest.raises(ValueError, match="'run' is not a scheduler's name"):
        schedulers.register(type("Runner", (Toy,), {"name": schedulers.RUN}))
    assert schedulers.RUN not in schedulers.names()


def test_the_toy_is_gone_after_its_tests():
    assert "toy" not in schedulers.names()
    with pytest.raises(SpecError, match=r"unknown scheduler 'toy'; valid: slurm, pbs, local$"):
        JobSpec(graph=WORD_COUNT, scheduler="toy")
