"""``d4p-hpc report``: a run of every mapping, and Slurm jobs over two nodes, opened in real
headless Chromium (DevTools protocol): a screenshot that is not blank, no console error, no
network request, and the PE names and figures of metrics.json in the DOM. Also the time
series the report draws (bounded in size) and the efficiency line against Slurm's sacct."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers.browser import distinct_pixels, open_page
from helpers.clusters import SLEEP, finished
from helpers.runs import cli, explain, read_json

from d4p_hpc.jobs import state as jobs
from d4p_hpc.results import last_samples, read_series
from d4p_hpc.mappings.runtime import sampler

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Chromium (apt-get install chromium)")

MAPPINGS = ["simple", "multi", "mpi", "dyn_multi", "dyn_auto_multi", "dyn_redis", "dyn_auto_redis", "hybrid_redis"]
FAST_SAMPLES = {"D4P_HPC_SAMPLE_SECONDS": "0.2", "D4P_TEST_SLEEP": "0.004"}


def check_page(html, directory):
    """The report at ``html`` opens offline, draws something, and shows metrics.json's figures."""
    page = open_page(html.resolve().as_uri())
    assert page.console_errors == []
    assert page.requests == [html.resolve().as_uri()], page.requests
    assert distinct_pixels(page.png) > 32, "the screenshot is blank"
    metrics = read_json(directory / "metrics.json")
    run = read_json(directory / "run.json")
    assert run["state"] in page.dom
    assert f"{metrics['items']:,}" in page.dom
    for pe, m in metrics["pes"].items():
        assert pe in page.dom
        assert f"{m['items_in']:,}" in page.dom and f"{m['busy_seconds']:.2f}" in page.dom
    for proc in metrics["process_list"]:
        assert f"process {proc['process']} ({proc['host']})" in page.dom
    return page


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_report_of_a_run_opens_offline_with_its_figures(tmp_path, where_graph, mapping):
    if mapping == "mpi" and not shutil.which("mpiexec"):
        pytest.skip("needs mpiexec")
    if "redis" in mapping and not shutil.which("redis-server"):
        pytest.skip("needs redis-server")
    graph = where_graph
    results = tmp_path / "run"
    done = cli("run", graph, "-m", mapping, "-n", 2, "-i", 400, "--results", results, env=FAST_SAMPLES)
    assert done.returncode == 0, explain(done)
    series = read_series(results)
    procs = {p["process"] for p in read_json(results / "metrics.json")["process_list"]}
    assert set(series) == procs
    # every process leaves its final counts; the busy ones a sample every 0.2 s besides
    assert all(samples for _head, samples in series.values())
    assert max(len(samples) for _head, samples in series.values()) >= 3
    made = cli("report", results, "-o", tmp_path / "report.html")
    assert made.returncode == 0, explain(made)
    page = check_page(tmp_path / "report.html", results)
    assert "Throughput per PE" in page.dom and "Resident memory per process" in page.dom
    if mapping.startswith("dyn_auto"):
        assert "Worker pool size" in page.dom
    if mapping.startswith("dyn") or mapping == "hybrid_redis":
        assert "Backlog (tasks queued" in page.dom


def test_png_plots_and_default_location(tmp_path, where_graph):
    graph = where_graph
    results = tmp_path / "run"
    assert cli("run", graph, "-m", "dyn_auto_multi", "-n", 2, "-i", 200, "--results", results,
               env=FAST_SAMPLES).returncode == 0
    made = cli("report", results, "--png")
    assert made.returncode == 0, explain(made)
    written = [line.split(" ", 1)[1] for line in made.stdout.splitlines()]
    assert written[0] == str(results / "report.html")
    pngs = sorted(p.name for p in results.glob("report-*.png"))
    assert pngs == sorted(f"report-{k}.png" for k in ("graph", "throughput", "busy", "backlog", "pool", "rss",
                                                        "timeline"))
    for name in pngs:
        assert distinct_pixels((results / name).read_bytes()) > 8, f"{name} is blank"


def test_png_without_chromium_is_refused_before_anything_is_written(tmp_path, where_graph):
    results = tmp_path / "run"
    assert cli("run", where_graph, "-i", 3, "--results", results).returncode == 0
    done = cli("report", results, "--png", env={"PATH": os.path.dirname(sys.executable)})
    assert done.returncode == 2 and done.stderr.startswith("Error: --png needs Chromium"), explain(done)
    assert not (results / "report.html").exists()


def test_report_refuses_a_directory_without_a_run(tmp_path):
    done = cli("report", tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("Error: ") and "run.json" in done.stderr, explain(done)


class _Counters:
    def __init__(self):
        self.n = 0
        self.written = 0

    def stats(self):
        self.n += 1
        return [{"pe": "P", "instance": 0, "items_in": self.n, "items_out": self.n, "busy_seconds": 0.0}]


def test_time_series_stay_bounded_and_keep_the_last_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(sampler, "MAX_LINES", 50)
    counters = _Counters()
    s = sampler.Sampler(tmp_path / "00000.jsonl", 0, counters, counters, 1.0)
    for _ in range(1000):
        s.sample()
    s._fh.close()
    head, *lines = (tmp_path / "00000.jsonl").read_text().splitlines()
    samples = [json.loads(line) for line in lines]
    assert json.loads(head)["process"] == 0 and len(samples) <= 50
    assert samples[-1]["i"][0][2] == 1000, "the newest sample survives the thinning"
    ins = [x["i"][0][2] for x in samples]
    assert ins == sorted(ins) and s.every > 1.0


# --- jobs over two nodes of the test clusters (Slurm, and PBS where its testbed is up) -------------



def _sacct(job_id):
    out = subprocess.run(["sacct", "-c", "-j", job_id, "--noheader", "--parsable2", "-o", "JobID,AllocCPUS,Elapsed"],
                         capture_output=True, text=True, timeout=30).stdout
    row = next(line.split("|") for line in out.splitlines() if line.split("|")[0] == job_id)
    h, m, s = (int(x) for x in row[2].split(":"))
    return int(row[1]), h * 3600 + m * 60 + s


@pytest.mark.parametrize("mapping", ["mpi", "hybrid_redis"])
def test_report_and_efficiency_of_a_cluster_job(cluster, submit, tmp_path, mapping):
    # in the job's own environment: qsub, unlike sbatch, passes none of the submitter's
    job = submit(mapping=mapping, iterations=40, setup=[SLEEP, "export D4P_HPC_SAMPLE_SECONDS=0.2"])
    finished(job)
    hosts = {p["host"] for p in read_json(job.directory / "metrics.json")["process_list"]}
    assert len(hosts) >= 2, hosts
    made = cli("report", job.directory, "-o", tmp_path / "report.html")
    assert made.returncode == 0, explain(made)
    page = check_page(tmp_path / "report.html", job.directory)
    assert job.job_id in page.dom
    shown = cli("results", job.directory)
    line = shown.stdout.strip().splitlines()[-1]
    if cluster.name == "slurm":
        # Slurm's allocation and elapsed time (sacct -c: no accounting storage), our CPU seconds
        cores, elapsed = _sacct(job.job_id)
        cpu = sum(s["cpu"] for s in last_samples(job.directory).values())
        assert line.startswith(f"CPU efficiency {100 * cpu / (cores * elapsed):.0f}% of {cores} cores"), line
    else:
        assert line.startswith("CPU efficiency ") and " of 4 cores" in line, line
    assert jobs.find(str(job.directory), tmp_path).job_id == job.job_id


def test_efficiency_takes_the_figures_pbs_keeps(tmp_path, monkeypatch):
    from d4p_hpc.jobs import efficiency

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    answer = {"Jobs": {"7.server": {"resources_used": {"cput": "00:01:12", "mem": "524288kb", "walltime": "00:00:30"},
                                    "Resource_List": {"ncpus": 4, "mem": "2gb"}}}}
    (bin_dir / "qstat").write_text(f"#!/bin/sh\n[ \"$*\" = '-x -f -F json 7.server' ] || exit 1\n"
                                   f"echo '{json.dumps(answer)}'\n")
    (bin_dir / "qstat").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    run = tmp_path / "job"
    (run / "timeseries").mkdir(parents=True)
    (run / "spec.json").write_text(json.dumps({"spec": {"nodes": 1, "tasks_per_node": 4, "cpus_per_task": 1,
                                                        "memory": "2G"}}))
    (run / "metrics.json").write_text(json.dumps({"wall_seconds": 28.0, "process_list": []}))
    eff = efficiency.measure(run, "pbs", "7.server")
    assert (eff.cores, eff.wall_seconds, eff.cpu_seconds, eff.cpu_source) == (4, 30.0, 72.0, "qstat")
    assert eff.line() == "CPU efficiency 60% of 4 cores; memory 0.5 of 2 GB"
