"""The Python API in Jupyter, with a real ipykernel (issue 19): the example notebooks run cell by
cell, and a local job outlives the kernel that submitted it when that kernel is killed.

``examples/notebook.ipynb`` is executed by nbclient as a user runs it: it submits
``examples/word_count.py`` to the local scheduler, follows it with the live line, shows the job
and its report inline and checks its outputs against a count it makes itself; then
``examples/notebook_attach.ipynb``, in a fresh kernel started in another folder with no results
root, attaches to the job by its id alone (the user's index of jobs) and reads the same outputs.
The test reads what each cell showed (the messages the kernel sent, recorded as they came: the
live line is one display updated in place) and checks the job's directory itself against an
independent count.

The kernels run ``sys.executable`` (the test's own Python, which has d4p_hpc): a kernelspec
written for it by ``ipykernel.kernelspec.install`` into a folder of this module and read from
there alone, so no ``python3`` kernelspec of the machine (another Python, another d4p_hpc) can be
picked; the notebook prints the interpreter it runs, and the test checks it. Each kernel gets a
home of its own and no ``D4P_HPC_*`` variable (as ``isolated_config``), and the session's
``XDG_STATE_HOME``, so the kernels and the test share one index of jobs.

The kernel killed: a kernel started with ``jupyter_client.KernelManager`` submits a job of
``examples/long_count.py`` that takes seconds; once the job is RUNNING the kernel's process alone
gets SIGKILL (as when a notebook server dies). The job goes on to COMPLETED with the right
outputs, a new kernel attaches to it by id and reads them, and nothing of the job is left running.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.runs import EXAMPLES, canon, independent_word_counts, outputs, processes_mentioning, read_json, \
    wait_for

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client import KernelManager  # noqa: E402  (after the skips: jupyter_client comes with nbclient)
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402

pytestmark = pytest.mark.xdist_group("notebooks")  # one worker runs the notebooks its tests read
KERNEL = "d4p-test"
#: seconds per line of examples/long_count.py, and its lines: about 10 s of work on one process
LONG_SECONDS = 0.25
LONG_LINES = 40
STATES = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")


@pytest.fixture(scope="module")
def kernels(tmp_path_factory) -> Path:
    """A folder whose only kernelspec, ``d4p-test``, runs ipykernel in the test's own Python."""
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("jupyter")
    install(kernel_name=KERNEL, display_name="d4p-hpc tests", prefix=str(prefix))
    folder = prefix / "share" / "jupyter" / "kernels"
    spec = KernelSpecManager(kernel_dirs=[str(folder)]).get_kernel_spec(KERNEL)
    assert spec.argv[0] == sys.executable, f"the kernelspec runs {spec.argv}, not {sys.executable}"
    return folder


def user_env(home: Path, **extra: str | os.PathLike) -> dict[str, str]:
    """A kernel's environment: this one with a home of its own and no D4P_HPC_* job variables (what
    ``isolated_config`` does to the test's); XDG_STATE_HOME stays the session's."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("D4P_HPC_") and k not in ("D4P_HPC_SLURM", "D4P_HPC_PBS"))
           and not k.startswith(("D4P_NOTEBOOK_", "JUPYTER_", "IPYTHON"))}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    env.update({k: str(v) for k, v in extra.items()})
    assert env.get("XDG_STATE_HOME"), "conftest gives the session an index of jobs of its own"
    return env


class Recording(nbclient.NotebookClient):
    """nbclient's client on the ``d4p-test`` kernelspec, recording every display message as it came
    (the notebook keeps only the last state of an updated display)."""

    def __init__(self, nb, kernels: Path, **kw) -> None:
        super().__init__(nb, timeout=180, startup_timeout=120, kernel_name=KERNEL, **kw)
        self.kernels = kernels
        self.shown: list[tuple[int, str, dict]] = []

    def create_kernel_manager(self):
        self.km = self.kernel_manager_class(kernel_name=KERNEL, config=self.config,
                                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(self.kernels)]))
        return self.km

    def process_message(self, msg, cell, cell_index):
        if msg["msg_type"] in ("display_data", "update_display_data", "execute_result"):
            self.shown.append((cell_index, msg["msg_type"], msg["content"]))
        return super().process_message(msg, cell, cell_index)


@dataclass
class Executed:
    nb: object
    shown: list[tuple[int, str, dict]]

    def cell(self, tag: str):
        found = [c for c in self.nb.cells if tag in c.metadata.get("tags", [])]
        assert len(found) == 1, f"one cell tagged {tag} expected, found {len(found)}"
        return found[0]

    def index(self, tag: str) -> int:
        return self.nb.cells.index(self.cell(tag))

    def text(self, tag: str) -> str:
        """What the cell printed on stdout."""
        return "".join(o.get("text", "") for o in self.cell(tag).outputs
                       if o.output_type == "stream" and o.name == "stdout")

    def html(self, tag: str) -> str:
        return "".join(o.data.get("text/html", "") for o in self.cell(tag).outputs if "data" in o)


def execute(notebook: Path, kernels: Path, env: dict[str, str], cwd: Path) -> Executed:
    """Run every cell of ``notebook`` in a new kernel started in ``cwd`` with ``env``; fails on the first
    cell that raises, with its traceback."""
    nb = nbformat.read(notebook, as_version=4)
    client = Recording(nb, kernels, resources={"metadata": {"path": str(cwd)}})
    client.execute(env=env)
    return Executed(nb, client.shown)


@dataclass
class First:
    root: Path
    run: Executed
    saved: dict
    directory: Path


@pytest.fixture(scope="module")
def first(kernels, tmp_path_factory) -> First:
    """examples/notebook.ipynb run in a kernel whose working directory is a temporary folder."""
    root = tmp_path_factory.mktemp("notebooks")
    work = root / "work"
    work.mkdir()
    env = user_env(root / "home", D4P_NOTEBOOK_GRAPH=EXAMPLES / "word_count.py",
                   D4P_NOTEBOOK_RESULTS_ROOT=root / "results", D4P_NOTEBOOK_SAVED=root / "saved.json")
    run = execute(EXAMPLES / "notebook.ipynb", kernels, env, work)
    saved = json.loads((root / "saved.json").read_text())
    directories = list((root / "results").iterdir())
    assert len(directories) == 1, directories
    return First(root, run, saved, directories[0])


@pytest.fixture(scope="module")
def second(kernels, first) -> Executed:
    """examples/notebook_attach.ipynb in a fresh kernel, in another folder, given only the job id
    (and the saved counts to compare with)."""
    elsewhere = first.root / "elsewhere"
    elsewhere.mkdir()
    env = user_env(first.root / "home", D4P_NOTEBOOK_JOB_ID=first.saved["job_id"],
                   D4P_NOTEBOOK_SAVED=first.root / "saved.json")
    return execute(EXAMPLES / "notebook_attach.ipynb", kernels, env, elsewhere)


def nothing_left(*marks: str, timeout: float = 60) -> None:
    """Fail, naming them, if processes whose command line or working directory holds one of ``marks``
    (a test's folder, a job id: the kernels, the job's script and run) are still there after ``timeout`` s."""
    def left() -> dict[int, list[str]]:
        return {pid: argv for mark in marks for pid, argv in processes_mentioning(mark).items()}

    try:
        wait_for(lambda: not left(), timeout=timeout)
    except AssertionError:
        raise AssertionError(f"left running after {timeout} s: {left()}") from None


def errors(run: Executed) -> list:
    return [o for c in run.nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


def test_the_notebook_runs_every_cell_without_error_in_the_tests_python(first):
    assert errors(first.run) == []
    assert all(c.execution_count for c in first.run.nb.cells if c.cell_type == "code")
    from d4p_hpc import __version__

    assert first.run.text("setup").strip() == f"d4p-hpc {__version__} in {sys.executable}"


def test_the_job_is_followed_by_one_live_line_updated_in_place_to_its_end(first):
    wait = first.run.cell("wait")
    index = first.run.index("wait")
    shown = [(kind, content) for i, kind, content in first.run.shown if i == index]
    displays = [c for kind, c in shown if kind in ("display_data", "update_display_data")]
    assert shown[0][0] == "display_data" and all(kind == "update_display_data" for kind, _ in shown[1:-1]), \
        [kind for kind, _ in shown]
    ids = {c["transient"]["display_id"] for c in displays}
    assert len(ids) == 1, f"the line must be one display, updated: {ids}"
    lines = [c["data"]["text/html"] for c in displays]
    assert all(line.startswith("<pre") for line in lines), lines
    states = [line.split(">", 1)[1].split()[0] for line in lines]
    assert set(states) <= set(STATES), lines
    # (a line per state seen: how many depends on when the polls fell, so only their order is asserted)
    assert states[-1] == "COMPLETED" and set(states[:-1]) <= {"PENDING", "RUNNING"}, lines
    # the notebook keeps the one display, showing the end, and the state wait() returned
    kept = [o for o in wait.outputs if o.output_type == "display_data"]
    assert len(kept) == 1 and kept[0].data["text/html"] == lines[-1]
    results = [o for o in wait.outputs if o.output_type == "execute_result"]
    assert [o.data["text/plain"] for o in results] == ["'COMPLETED'"]


def test_the_job_as_the_last_expression_shows_its_table(first):
    job_id = first.saved["job_id"]
    shown = [o for o in first.run.cell("job").outputs if o.output_type == "execute_result"]
    assert len(shown) == 1
    table = shown[0].data["text/html"]
    assert table.startswith("<table class='d4p-hpc-jobs'>"), table
    for cell in (job_id, "word_count", "local", "COMPLETED", str(first.directory)):
        assert f"<td>{cell}</td>" in table, (cell, table)
    assert first.directory.name == f"word_count-{job_id}"
    assert job_id in shown[0].data["text/plain"]


def test_the_report_is_written_and_shown_inline(first):
    page = first.directory / "report.html"
    assert page.is_file() and page.stat().st_size > 0
    shown = [o for o in first.run.cell("report").outputs if o.output_type == "execute_result"]
    assert len(shown) == 1
    html = shown[0].data["text/html"]
    assert f"<code>{page}</code>" in html and '<iframe srcdoc="' in html, html[:300]
    assert "&lt;!DOCTYPE html&gt;" in html  # the page itself, escaped into the frame


def test_the_outputs_the_notebook_read_equal_an_independent_count(first):
    record = read_json(first.directory / "run.json")
    assert record["state"] == "COMPLETED" and record["graph"] == str(EXAMPLES / "word_count.py")
    expected = independent_word_counts(record["inputs"])
    assert record["inputs"] == 100 and len(expected) == 32
    assert first.saved["counts"] == dict(expected)
    assert outputs(first.directory) == {"CountWords.output": Counter(canon([w, n]) for w, n in expected.items())}
    assert first.run.text("check").strip() == f"all 32 word counts agree ({sum(expected.values())} words)"


def test_a_fresh_kernel_attaches_to_the_job_by_its_id_alone_and_reads_the_same_outputs(first, second):
    assert errors(second) == []
    job_id = first.saved["job_id"]
    # no results root was given and none is under its working directory: only the index knew the job
    assert not (first.root / "elsewhere" / "d4p-results").exists()
    entries = list((Path(os.environ["XDG_STATE_HOME"]) / "d4p-hpc" / "jobs").glob(f"{job_id}@*"))
    assert [Path(e.read_text()) for e in entries] == [first.directory]
    table = second.html("job")
    assert f"<td>{job_id}</td>" in table and f"<td>{first.directory}</td>" in table, table
    assert second.text("check").strip() == f"job {job_id} in {first.directory}: the same 32 word counts"


def test_nothing_of_the_notebooks_is_left_running(first, second):
    nothing_left(f"{first.root}{os.sep}", first.saved["job_id"])


# ---- the kernel killed while its job runs --------------------------------------------------------------------


def start_kernel(kernels: Path, env: dict[str, str], cwd: Path):
    """A real ipykernel on the ``d4p-test`` kernelspec, and a blocking client on it."""
    km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    km.start_kernel(env=env, cwd=str(cwd))
    kc = km.blocking_client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
    except BaseException:
        stop(km, kc)
        raise
    return km, kc


def stop(km, kc) -> None:
    kc.stop_channels()
    if km.is_alive():
        km.shutdown_kernel(now=True)
    km.cleanup_resources()


def run_code(kc, code: str) -> str:
    """Execute ``code`` in the kernel; its stdout, or fail with its traceback."""
    said: list[str] = []
    failed: list[str] = []

    def hook(msg):
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            said.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            failed.append("\n".join(msg["content"]["traceback"]))

    reply = kc.execute_interactive(code, timeout=180, output_hook=hook)
    assert reply["content"]["status"] == "ok" and not failed, "\n".join(failed) or reply["content"]
    return "".join(said)


def long_count_expected(lines: int) -> tuple[Counter, Counter]:
    """The totals of ``Count.output`` and the items of ``Slow.tagged`` for ``lines`` lines of
    examples/long_count.py, computed here from its CORPUS (read from its source, not imported)."""
    tree = ast.parse((EXAMPLES / "long_count.py").read_text())
    corpus = next(ast.literal_eval(n.value) for n in tree.body
                  if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "CORPUS")
    words = [(k + 1, word) for k in range(lines) for word in corpus[k % len(corpus)].split()]
    totals = Counter(word for _, word in words)
    return (Counter(canon([w, n]) for w, n in totals.items()), Counter(canon([k, w]) for k, w in words))


def test_a_local_job_outlives_its_kernel_killed_and_a_new_kernel_reads_it_by_id(kernels, isolated_config,
                                                                                 tmp_path, monkeypatch):
    import d4p_hpc

    monkeypatch.setenv("LONG_COUNT_SECONDS", str(LONG_SECONDS))  # the job inherits it from the kernel
    env = user_env(tmp_path / "home")
    km, kc = start_kernel(kernels, env, isolated_config)
    try:
        said = run_code(kc, "import sys\nimport d4p_hpc\n"
                            f"job = d4p_hpc.submit({str(EXAMPLES / 'long_count.py')!r}, attr='graph', "
                            f"scheduler='local', mapping='simple', iterations={LONG_LINES}, walltime='00:10:00')\n"
                            "print(sys.executable)\nprint(job.id)\n")
        executable, job_id = said.split()
        assert executable == sys.executable
        job = d4p_hpc.attach(job_id)
        # running: the scheduler says so, and the run has started (its record says RUNNING)
        wait_for(lambda: job.state == "RUNNING" and (read_json(job.directory / "run.json") or {}).get("state")
                 == "RUNNING", timeout=120)
        kernel = km.provisioner.process
        os.kill(kernel.pid, signal.SIGKILL)  # the kernel's process only, as when a notebook server dies
        assert kernel.wait(timeout=60) == -signal.SIGKILL
        assert not km.is_alive()
        assert job.state == "RUNNING", "the job must go on without the kernel that submitted it"
    finally:
        stop(km, kc)

    final = wait_for(lambda: (s := d4p_hpc.attach(job_id).status()).done and s, timeout=300)
    assert (final.state, final.reason) == ("COMPLETED", ""), final
    record = read_json(job.directory / "run.json")
    assert (record["state"], record["inputs"], record["exit_code"]) == ("COMPLETED", LONG_LINES, 0)
    totals, tagged = long_count_expected(LONG_LINES)
    assert outputs(job.directory) == {"Count.output": totals, "Slow.tagged": tagged}

    # a new kernel, in another folder (not under the results root): the id alone finds the job
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    km, kc = start_kernel(kernels, user_env(tmp_path / "home"), elsewhere)
    try:
        said = run_code(kc, "import json\nimport d4p_hpc\n"
                            f"job = d4p_hpc.attach({job_id!r})\nout = job.result(timeout=60)\n"
                            "print(json.dumps({'directory': str(job.directory), 'state': job.state, "
                            "'outputs': {k: list(v) for k, v in out.items()}}))\n")
    finally:
        stop(km, kc)
    seen = json.loads(said)
    assert (seen["directory"], seen["state"]) == (str(job.directory), "COMPLETED")
    assert {k: Counter(canon(x) for x in v) for k, v in seen["outputs"].items()} == \
        {"Count.output": totals, "Slow.tagged": tagged}

    assert not km.is_alive() and kernel.poll() is not None
    nothing_left(f"{tmp_path}{os.sep}", job_id)
