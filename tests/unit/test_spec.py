"""JobSpec validation: bad values are refused before rendering, with the valid ones named."""

import pytest

from d4p_hpc import units
from d4p_hpc.errors import SpecError
from d4p_hpc.submission.spec import FIELDS, MAPPINGS, JobSpec, default_job_name

GRAPH = "/home/user/graphs/word_count.py"


def spec(**kw):
    return JobSpec(graph=GRAPH, results_root="/scratch/d4p", **kw)


def test_defaults_and_derived_values():
    s = spec(nodes=2, tasks_per_node=3, mapping="mpi", scheduler="slurm")
    assert s.job_name == "word_count"
    assert s.total_tasks == 6
    assert s.walltime_seconds == 3600
    assert s.warning_seconds == 60
    assert str(s.results_dir("42")) == "/scratch/d4p/word_count-42"


@pytest.mark.parametrize("walltime, seconds", [
    ("30", 1800), ("00:30:00", 1800), ("2:00:00", 7200), ("1-02:03:04", 93784), ("48:00:00", 172800)])
def test_walltime_formats(walltime, seconds):
    assert spec(walltime=walltime).walltime_seconds == seconds


@pytest.mark.parametrize("walltime", ["1:2", "00:61:00", "1-2", "abc", "", "-5", "0"])
def test_bad_walltime_lists_the_formats(walltime):
    with pytest.raises(SpecError, match="MM|HH:MM:SS|under a minute|below 60"):
        spec(walltime=walltime)


def test_warning_is_at_most_half_a_short_walltime_and_configurable():
    assert spec(walltime="1").warning_seconds == 30
    assert spec(walltime="10", signal_seconds=120).warning_seconds == 120
    with pytest.raises(SpecError, match="below the walltime"):
        spec(walltime="1", signal_seconds=60)


@pytest.mark.parametrize("given, normalised", [("4G", "4G"), ("4gb", "4G"), ("500", "500M"), ("2 T", "2T"),
                                               ("1024k", "1024K")])
def test_memory_is_normalised(given, normalised):
    assert spec(memory=given).memory == normalised


@pytest.mark.parametrize("field, value, valid", [
    ("mapping", "dynredis", ", ".join(MAPPINGS)),
    ("scheduler", "lsf", "slurm, pbs, local"),
    ("launcher", "aprun", "srun, mpiexec"),
])
def test_unknown_names_list_the_valid_ones(field, value, valid):
    with pytest.raises(SpecError) as err:
        spec(**{field: value, "scheduler": "slurm"} if field != "scheduler" else {field: value})
    assert valid in str(err.value)


@pytest.mark.parametrize("field", ["partition", "account", "qos", "constraint", "gres", "job_name"])
@pytest.mark.parametrize("value", ["a b", "x;y", "$(id)", "a\nb", "'q'", "`id`", ""])
def test_directive_values_are_validated_not_quoted(field, value):
    with pytest.raises(SpecError, match=field):
        spec(scheduler="slurm", **{field: value})


def test_valid_directive_values():
    s = spec(scheduler="slurm", partition="gpu,debug", account="proj-1", qos="high", constraint="[rack1|rack2]&intel",
             gres="gpu:tesla:2", job_name="My_job.v2", gpus_per_node=2, exclusive=True)
    assert s.constraint == "[rack1|rack2]&intel"


def test_results_root_must_be_directive_safe():
    for root in ("relative/dir", "/with space", "/per%cent", "/host:path"):
        with pytest.raises(SpecError, match="results_root"):
            JobSpec(graph=GRAPH, results_root=root)


def test_single_node_mappings_refuse_several_nodes_except_locally():
    with pytest.raises(SpecError, match="mpi, dyn_redis, dyn_auto_redis, hybrid_redis"):
        spec(scheduler="slurm", mapping="multi", nodes=2)
    assert spec(scheduler="local", mapping="multi", nodes=2).total_tasks == 2


def test_slurm_only_options_are_refused_for_pbs():
    for name in ("qos", "constraint", "gres"):
        with pytest.raises(SpecError, match=f"^{name} is a Slurm option that the PBS scheduler does not support; "
                                            "write it as a raw directive, e.g. --directive '#PBS ...'$"):
            spec(scheduler="pbs", **{name: "x"})


def test_the_local_scheduler_accepts_and_ignores_cluster_requests():
    # a profile written for the cluster still runs a trial job here (README, "Local")
    assert spec(scheduler="local", partition="debug", account="proj", qos="high", memory="2G",
                exclusive=True).qos == "high"


def test_extra_directives_must_match_the_scheduler():
    assert spec(scheduler="pbs", extra_directives=["#PBS -m abe"]).extra_directives == ("#PBS -m abe",)
    for line in ("#PBS -m abe", "--mail-type=END", "#SBATCH --x\n#SBATCH --y"):
        with pytest.raises(SpecError, match="#SBATCH"):
            spec(scheduler="slurm", extra_directives=[line])
    with pytest.raises(SpecError, match="no directives"):
        spec(scheduler="local", extra_directives=["#SBATCH -x"])


def test_inputs_are_exclusive_and_checked():
    with pytest.raises(SpecError, match="at most one"):
        spec(iterations=3, data="{}")
    with pytest.raises(SpecError, match="not valid JSON"):
        spec(data="{oops")
    with pytest.raises(SpecError, match="absolute"):
        spec(input_file="inputs.json")
    with pytest.raises(SpecError, match="Python variable"):
        spec(attr="graph; rm")


def test_paths_and_counts():
    with pytest.raises(SpecError, match="absolute"):
        JobSpec(graph="graph.py")
    with pytest.raises(SpecError, match="nodes must be at least 1"):
        spec(nodes=0)
    with pytest.raises(SpecError, match="one module per"):
        spec(modules=["gcc openmpi"])


def test_the_spec_checks_types_and_converts_no_strings():
    # strings are config.coerce's to convert (files, environment, command line)
    assert spec(modules=["a", "b"]).modules == ("a", "b")
    for name, value in (("nodes", "4"), ("nodes", True), ("exclusive", "yes"), ("modules", "gcc"), ("job_name", 3)):
        with pytest.raises(SpecError, match=f"^{name} must be"):
            spec(**{name: value})


def test_units_of_what_schedulers_print():
    assert units.memory_mb("2000K") == 2000 / 1024 and units.memory_mb("1234kb") == 1234 / 1024
    assert units.memory_mb("4G") == 4096 and units.memory_mb("500") == 500 and units.memory_mb("") is None
    assert units.clock_seconds("1-02:03:04") == 93784 and units.clock_seconds("01:02.5") == 62.5
    assert units.clock_seconds("Unknown") is None
    assert units.epoch("2024-01-02T03:04:05+00:00") == 1704164645 and units.epoch("garbage") is None


def test_round_trip_and_unknown_keys():
    s = spec(modules=["a"], mapping="hybrid_redis", nodes=2, scheduler="pbs")
    assert JobSpec.from_dict(s.to_dict()) == s
    with pytest.raises(SpecError, match="unknown job spec key"):
        JobSpec.from_dict({**s.to_dict(), "partiton": "x"})


def test_every_field_has_help():
    assert all(f.metadata.get("help") for f in FIELDS.values())


def test_job_name_from_graph():
    assert default_job_name("/x/2-step graph.py") == "j2-step_graph"
