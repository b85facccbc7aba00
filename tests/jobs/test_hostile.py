"""Hostile values: every string field of the spec, set to a random token and to shell metacharacters.

A token must reach the script. A hostile value is either refused by the spec
(directive values, names, enumerations) or quoted: the script passes
``bash -n``, running it creates nothing outside the job's results directory,
and values that are command-line words reach the command unchanged.
"""

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from helpers.runs import wait_pid

from d4p_hpc.submission import render
from d4p_hpc.errors import SpecError
from d4p_hpc.schedulers import local
from d4p_hpc.submission.spec import FIELDS, JobSpec, field_type

HOSTILE = ["it's", 'say "hi"', "`touch pwned`", "$(touch pwned)", "; touch pwned", "a\ntouch pwned",
           "$HOME", "*", "--help", "&& touch pwned &", "\\", "x' ; touch pwned ; '"]
# fields holding shell code by design: written as given, and tested for that below
CODE = {"setup"}
# fields a hostile value cannot get through: checked before rendering
VALIDATED = {"mapping", "attr", "scheduler", "memory", "walltime", "partition", "account", "qos", "constraint",
             "gres", "job_name", "results_root", "launcher", "redis_bind", "continues", "directory", "after"}
# fields that are quoted but refuse some values: module names with spaces, directives with newlines
PARTLY_VALIDATED = {"modules", "extra_directives"}
# fields whose value is one word of the run's command line, seen by the fake interpreter
ARGV_WORD = {"graph", "data", "input_file"}
STRING_FIELDS = [n for n in FIELDS if field_type(n) in (str, tuple) and n not in CODE]


def make_spec(field: str, value: str, tmp: Path, fake: str) -> JobSpec:
    """A spec whose ``field`` carries ``value`` (inside a file name or JSON where the field needs that)."""
    graph = tmp / "graph.py"
    graph.touch()
    kw = dict(graph=str(graph), results_root=str(tmp / "results"), python=fake, scheduler="local",
              mapping="multi", walltime="10")
    if field == "graph":
        path = tmp / f"g{value.replace('/', '_')}.py"
        path.touch()
        kw["graph"] = str(path)
    elif field == "input_file":
        path = tmp / f"in{value.replace('/', '_')}.json"
        path.write_text("{}")
        kw["input_file"] = str(path)
    elif field == "data":
        kw["data"] = json.dumps({"Words": [value]})
    elif field in ("results_root", "continues", "directory"):
        kw[field] = str(tmp / value)
    elif field in ("venv", "container"):
        kw[field] = str(tmp / value)
    elif field == "extra_directives":
        kw.update(scheduler="slurm", extra_directives=[f"#SBATCH --comment={value}"])
    elif field == "launcher_args":
        kw.update(mapping="mpi", launcher_args=[value])
    elif field == "redis_bind":
        kw.update(mapping="dyn_redis", redis_bind=value)
    elif field in ("qos", "constraint", "gres"):
        kw.update(scheduler="slurm", **{field: value})
    elif field_type(field) is tuple:
        kw[field] = [value]
    else:
        kw[field] = value
    return JobSpec(**kw)


def expected_word(field: str, spec: JobSpec) -> str:
    return {"graph": spec.graph, "data": spec.data, "input_file": spec.input_file}[field]


def run_script(spec: JobSpec, script: str, tmp: Path) -> Path:
    """Run the script as the local runner would; returns its results directory."""
    job_id = f"t{secrets.token_hex(3)}"
    path = tmp / f"job-{job_id}.sh"
    path.write_text(script)
    nodefile = tmp / "nodefile"
    nodefile.write_text("localhost\n")
    sandbox = tmp / "sandbox"
    sandbox.mkdir(exist_ok=True)
    env = dict(os.environ, D4P_JOB_ID=job_id, SLURM_JOB_ID=job_id, D4P_NODEFILE=str(nodefile))
    pid = local.start(path, env, sandbox, tmp / f"{job_id}.out", tmp / f"{job_id}.err")
    wait_pid(pid, timeout=60)
    return spec.results_dir(job_id)


def files_under(root: Path) -> set:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize("field", STRING_FIELDS)
def test_a_token_reaches_the_script(field, tmp_path, fake_python):
    token = "t" + secrets.token_hex(6)
    try:
        spec = make_spec(field, token, tmp_path, fake_python.path)
    except SpecError:
        assert field in {"mapping", "scheduler", "memory", "walltime", "launcher"}, f"{field} refused a plain token"
        return
    assert token in render.render_script(spec)


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize("field", STRING_FIELDS)
def test_hostile_values_are_refused_or_harmless(field, value, tmp_path, fake_python):
    try:
        spec = make_spec(field, value, tmp_path, fake_python.path)
    except SpecError:
        assert field in VALIDATED | PARTLY_VALIDATED, f"{field} refused {value!r}, though it is quoted"
        return
    assert field not in VALIDATED or not set(value) & set(" ;$`'\"\n\\"), f"{field} accepted {value!r}"
    script = render.render_script(spec)
    result = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    before = files_under(tmp_path)
    results_dir = run_script(spec, script, tmp_path)
    allowed = {results_dir, Path(spec.results_root)}
    created = {p for p in files_under(tmp_path) - before
               if not allowed & {p, *p.parents} and fake_python.log not in p.parents and p.parent != tmp_path}
    assert not created, f"the script created {created}"
    assert not any(p.name == "pwned" for p in files_under(tmp_path))
    if field in ARGV_WORD:
        run_calls = [c for c in fake_python.calls() if c[:3] == ["-m", "d4p_hpc", "run"]]
        assert run_calls and expected_word(field, spec) in run_calls[0], run_calls


def test_setup_lines_are_shell_code_written_as_given(tmp_path, fake_python):
    spec = JobSpec(graph=str(tmp_path / "g.py"), results_root=str(tmp_path / "r"), python=fake_python.path,
                   setup=['export GREETING="hello $USER"', "touch made-by-setup"], walltime="10")
    script = render.render_script(spec)
    assert 'export GREETING="hello $USER"\ntouch made-by-setup\n' in script
    run_script(spec, script, tmp_path)
    assert (tmp_path / "sandbox" / "made-by-setup").exists()
