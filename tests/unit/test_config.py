"""Profiles: built-in < user file < project file < environment < command line."""

import sys

import pytest

from d4p_hpc.submission import config
from d4p_hpc.errors import SpecError


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def files(isolated_config, tmp_path):
    user = tmp_path / "home" / ".config" / "d4p-hpc" / "config.toml"
    project = isolated_config / "d4p-hpc.toml"
    return user, project


def test_built_in_defaults(isolated_config, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    r = config.resolve({"graph": "g.py"})
    assert r.values["scheduler"] == "local"
    assert r.values["results_root"] == str(isolated_config / "d4p-results")
    assert r.values["graph"] == str(isolated_config / "g.py")
    assert r.values["python"] == sys.executable
    assert r.sources["walltime"] == config.BUILT_IN
    assert r.spec().mapping == "multi"


@pytest.mark.parametrize("commands, found", [(("sbatch", "qsub"), "slurm"), (("qsub",), "pbs"), ((), "local")])
def test_the_default_scheduler_is_the_one_on_path(isolated_config, tmp_path, monkeypatch, commands, found):
    # Slurm comes first: Slurm sites often have a qsub wrapper too
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for command in commands:
        (bin_dir / command).write_text("#!/bin/sh\n")
        (bin_dir / command).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert config.resolve({"graph": "g.py"}).values["scheduler"] == found


def test_precedence(files, monkeypatch):
    user, project = files
    write(user, 'partition = "user"\naccount = "user"\nqos = "user"\nnodes = 2\n')
    write(project, 'account = "project"\nqos = "project"\n')
    monkeypatch.setenv("D4P_HPC_QOS", "env")
    r = config.resolve({"graph": "/g.py", "nodes": 3})
    assert (r.values["partition"], r.values["account"], r.values["qos"], r.values["nodes"]) == \
        ("user", "project", "env", 3)
    assert r.sources["partition"].startswith("user config")
    assert r.sources["account"].startswith("project config")
    assert r.sources["qos"] == "environment"
    assert r.sources["nodes"] == "command line"


def test_profiles(files, monkeypatch):
    user, project = files
    write(user, 'profile = "cpu"\n[profiles.cpu]\npartition = "standard"\nmodules = ["python/3.11"]\n'
                '[profiles.gpu]\npartition = "gpu"\ngpus_per_node = 2\n')
    write(project, '[profiles.gpu]\naccount = "proj"\n')
    assert config.resolve({}).values["partition"] == "standard"
    r = config.resolve({}, profile="gpu")
    assert (r.values["partition"], r.values["account"], r.values["gpus_per_node"]) == ("gpu", "proj", 2)
    assert r.sources["account"].endswith("[profiles.gpu]")
    monkeypatch.setenv("D4P_HPC_PROFILE", "gpu")
    assert config.resolve({}).profile == "gpu"
    with pytest.raises(SpecError, match="profiles found: cpu, gpu"):
        config.resolve({}, profile="bigmem")


def test_unknown_key_lists_valid_keys(files):
    _, project = files
    write(project, 'partiton = "x"\n')
    with pytest.raises(SpecError, match=r"unknown key 'partiton' in project config .*valid keys: graph, mapping"):
        config.resolve({})


def test_bad_toml_and_bad_types(files):
    _, project = files
    write(project, 'nodes = "two"\n')
    with pytest.raises(SpecError, match="nodes .*whole number"):
        config.resolve({})
    write(project, 'nodes = \n')
    with pytest.raises(SpecError, match="cannot read"):
        config.resolve({})


def test_relative_paths_are_relative_to_their_file(files, tmp_path):
    user, project = files
    write(user, 'results_root = "runs"\nvenv = "~/venvs/d4p"\n')
    r = config.resolve({})
    assert r.values["results_root"] == str(user.parent / "runs")
    assert r.values["venv"] == str(tmp_path / "home" / "venvs" / "d4p")


def test_environment_values_are_typed(isolated_config, monkeypatch):
    monkeypatch.setenv("D4P_HPC_NODES", "4")
    monkeypatch.setenv("D4P_HPC_EXCLUSIVE", "true")
    monkeypatch.setenv("D4P_HPC_MODULES", "gcc,openmpi")
    monkeypatch.setenv("D4P_HPC_SLURM", "1")  # not a job key: ignored
    r = config.resolve({})
    assert (r.values["nodes"], r.values["exclusive"], r.values["modules"]) == (4, True, ("gcc", "openmpi"))


def test_python_defaults_to_python3_inside_an_environment(isolated_config):
    assert config.resolve({"venv": "/opt/venv"}).values["python"] == "python3"
    assert config.resolve({"python": "/usr/bin/python3.12"}).values["python"] == "/usr/bin/python3.12"


def test_results_root_follows_the_profile(files):
    _, project = files
    write(project, '[profiles.x]\nresults_root = "/scratch/x"\n')
    assert str(config.results_root("x")) == "/scratch/x"


def test_coercion_from_strings():
    assert config.coerce("nodes", "4") == 4
    assert config.coerce("exclusive", "yes") is True
    assert config.coerce("modules", "gcc, openmpi") == ("gcc", "openmpi")
    assert config.coerce("setup", '["export A=1,2", "ulimit -c 0"]') == ("export A=1,2", "ulimit -c 0")
    with pytest.raises(SpecError, match="whole number"):
        config.coerce("nodes", "four", "environment")
    with pytest.raises(SpecError, match="true or false"):
        config.coerce("exclusive", "maybe")
    with pytest.raises(SpecError, match="list of strings"):
        config.coerce("modules", 3)
