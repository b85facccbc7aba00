"""Crash points, enumerated (the ALICE/CrashMonkey way): a run killed at any durable step of its
checkpoints or of its resume, then resumed, gives the outputs of one uninterrupted run, each item once.

Every durable step (write and fsync of a temporary file, rename, fsync of a directory, link,
unlink, truncate, removal of a tree) goes through :mod:`d4p_hpc.durable`, which counts the steps of
all the processes of a run and crashes it at step N (``D4P_HPC_CRASH_AT``; see its docstring). For
simple, multi, mpi and hybrid_redis, a run lost with its node just after its first checkpoint (the
base) is resumed with checkpoints every 0.2 s, crashed at N = 1, 2, ...: every step of the resume's
own work (removing what is newer than its checkpoint, cutting the outputs back) and of its first
checkpoint, then a sample of the later steps, and on until a run ends without reaching N. Every
point is crashed as a lost node, and some as a lost process too (:data:`PROCESS_EVERY`):

* ``node``: every process of the run SIGKILLed at once, then every output file cut back to its
  size at its last fsync (the trace says it): what a lost node's page cache takes with it;
* ``process``: the one process that reaches step N leaves (``os._exit``); the others see it die,
  and multi's or the Redis driver's own handling of a lost process follows (a simple run's one
  process, or an mpi rank, whose loss makes mpiexec end the run, adds little to a lost node).

Then the run is resumed until it completes, and its outputs must equal those of an uninterrupted
``simple`` run as multisets, with nothing a crash left behind. A second pass crashes the resume
itself at each of its own steps (from a segment killed in the middle of its second checkpoint: a
checkpoint to remove, outputs to cut back), and resumes again.

``multi`` runs a second graph too, whose root's calls are spread over its two instances
(tests/data/g_spread_count.py): calls handed over and not yet made are items in flight.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.dynamic import needs_redis
from helpers.runs import DATA, EXAMPLES, d4p_hpc_cmd, diff, outputs, read_json, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("crash-points")]

ITEMS = 100
PROCESSES = {"simple": 1, "multi": 2, "mpi": 2, "hybrid_redis": 2}
#: 100 lines take 2 s: a base stopped early, and a resumed segment of a few checkpoints
SLOW = {"LONG_COUNT_SECONDS": "0.02"}
OFTEN = {"D4P_HPC_CHECKPOINT_EVERY_TEST": "0.2"}
#: crash points after the resumed segment's first checkpoint: at most this many, evenly spread
SAMPLED = 3
#: every how many points a crash is also a lost process (see the module docstring)
PROCESS_EVERY = {"multi": 3, "hybrid_redis": 3}
#: runs at once (each waits most of its time: LONG_COUNT_SECONDS, mpiexec starting)
PARALLEL = 5


@dataclass(frozen=True)
class Case:
    """A mapping and the graph it runs: ``inputs``, its arguments (graph attribute, inputs)."""

    mapping: str
    graph: Path = EXAMPLES / "long_count.py"
    inputs: tuple[str, ...] = ("-a", "graph", "-i", str(ITEMS))
    processes: int | None = None

    @property
    def argv(self) -> list[str]:
        return [str(self.graph), *self.inputs]

    @property
    def n(self) -> int:
        return self.processes or PROCESSES[self.mapping]


SPREAD = Case("multi", DATA / "g_spread_count.py",
              ("-d", '{"Emit": [' + ", ".join(f'{{"n": {n}}}' for n in range(ITEMS)) + "]}"), processes=3)


@dataclass
class Ended:
    """How one ``d4p-hpc run`` ended: its exit code, the durable steps its processes took, and
    whether it was crashed."""

    code: int
    steps: int
    crashed: bool
    stderr: str


def in_session(sid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                return True
    return False


def run(case: Case, results: Path, *extra: str, crash: tuple[int, str] | None = None,
        trace: Path | None = None) -> Ended:
    """``d4p-hpc run`` in a session of its own, counting its durable steps; returns once every
    process of the session is gone."""
    counter = results.with_name(results.name + ".steps")
    counter.write_text("")
    env = {**os.environ, **SLOW, **OFTEN, "D4P_HPC_CRASH_COUNTER": str(counter)}
    env.pop("D4P_HPC_QUIET", None)
    if crash is not None:
        env.update(D4P_HPC_CRASH_AT=str(crash[0]), D4P_HPC_CRASH_MODE=crash[1])
    if trace is not None:
        env["D4P_HPC_CRASH_TRACE"] = str(trace)
    argv = [*d4p_hpc_cmd(), "run", *case.argv, "-m", case.mapping, "-n", str(case.n), "--results", str(results),
            *extra]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
        wait_for(lambda: not in_session(proc.pid), 30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    steps = int(counter.read_text().split()[0]) if counter.read_text().strip() else 0
    return Ended(proc.returncode, steps, crash is not None and steps >= crash[0], err)


def sizes(results: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in (results / "outputs").glob("*/part-*")}


def lose_unsynced(results: Path, trace: Path, before: dict[str, int]) -> None:
    """Cut every output file back to what had reached the disk: its size at its last fsync (or
    truncate) in ``trace``, else its size ``before`` the run; a file never synced is removed."""
    synced: dict[str, int] = {}
    for line in trace.read_text().splitlines():
        words = line.split()
        if words[2] == "CRASH" or "/outputs/" not in words[3]:
            continue
        if words[2] in ("fsync", "truncate"):
            synced[words[3]] = int(words[4])
        elif words[2] == "unlink":
            synced[words[3]] = 0
    for path, size in sizes(results).items():
        kept = synced.get(path, before.get(path, 0))
        if size > kept:
            if kept:
                os.truncate(path, kept)
            else:
                os.unlink(path)


def steps_of(trace: Path) -> list[tuple[int, str, str]]:
    """``(n, kind, path)`` of every step in ``trace``."""
    return [(int(w[0]), w[2], w[3]) for w in (line.split() for line in trace.read_text().splitlines())]


def completions(trace: Path) -> list[int]:
    """The steps at which a checkpoint became complete (its manifest's rename, and the fsync of its directory)."""
    steps = steps_of(trace)
    return [steps[k + 1][0] for k, (_n, kind, path) in enumerate(steps[:-1])
            if kind == "rename" and path.endswith("/complete.json")]


def first_own_checkpoint_step(trace: Path) -> int:
    """The first step of the resumed segment's first checkpoint: what comes before is the resume's own work."""
    return next(n for n, kind, path in steps_of(trace) if kind == "write" or (kind == "fsync" and "/outputs/" in path))


def leftovers(results: Path) -> list[str]:
    """Temporary files, trees being removed, and unfinished checkpoints a crash may have left."""
    found = [str(p) for p in (results / "checkpoints").rglob(".*") if not p.name.startswith(".begun")]
    found += [str(p) for p in results.glob(".*.tmp")]
    return found


def resume_to_the_end(case: Case, results: Path) -> None:
    for _ in range(3):
        ended = run(case, results, "--resume")
        assert "Traceback" not in ended.stderr, ended.stderr
        if ended.code == 0:
            return
        assert ended.code != 2, ended.stderr  # refused: there is always a checkpoint to resume from
    raise AssertionError(f"{results} did not complete in 3 resumes:\n{ended.stderr}")


def crash_and_resume(case: Case, start: Path, work: Path, n: int, mode: str, reference: dict) -> bool:
    """Copy ``start`` to ``work``, resume it crashed at step ``n``, resume it to its end and compare;
    return whether step ``n`` was reached."""
    shutil.copytree(start, work, symlinks=True)
    trace = work.with_name(work.name + ".trace")
    before = sizes(work)
    ended = run(case, work, "--resume", crash=(n, mode), trace=trace)
    # (a Redis worker whose driver has died prints a traceback as it finds Redis gone: not ours to test here)
    assert mode == "process" or "Traceback" not in ended.stderr, ended.stderr
    if ended.crashed and mode == "node":
        lose_unsynced(work, trace, before)
    if ended.crashed and (read_json(work / "run.json") or {}).get("state") != "COMPLETED":
        resume_to_the_end(case, work)
    else:  # not reached, or a Redis worker lost and replaced: the run went on without it
        assert ended.code == 0, ended.stderr
    got = outputs(work)
    assert got == reference, f"crashed at step {n} ({mode}): {diff(got, reference)}\n{trace.read_text()}"
    assert not leftovers(work), leftovers(work)
    return ended.crashed


def make_base(case: Case, results: Path, tmp: Path) -> None:
    """A run lost with its node just after its first checkpoint (most of its work left to resume):
    crashed at the first step, near the one a first run completed its first checkpoint at, that
    leaves a complete checkpoint (the steps before it vary: which outputs a process has written)."""
    probe = tmp / "probe"
    assert run(case, probe, "--checkpoint", trace=tmp / "probe.trace").code == 0
    first = completions(tmp / "probe.trace")[0]
    for at in range(max(1, first - 6), first + 12):
        shutil.rmtree(results, ignore_errors=True)
        trace = tmp / f"base-{at}.trace"
        if run(case, results, "--checkpoint", crash=(at, "node"), trace=trace).crashed and \
                list((results / "checkpoints").glob("*/complete.json")):
            lose_unsynced(results, trace, {})
            return
    raise AssertionError(f"no run of {case} was crashed after its first checkpoint")


def sample(low: int, high: int, count: int) -> list[int]:
    """At most ``count`` steps from ``low`` to ``high``, evenly spread."""
    if high < low:
        return []
    stride = max(1, (high - low + 1) // count)
    return list(range(low, high + 1, stride))[:count]


def sweep(case: Case, start: Path, tmp: Path, points: list[int], reference: dict, beyond: int | None) -> int:
    """Crash ``start``'s resume at each of ``points`` (see :func:`modes`), then, from step ``beyond``
    on, at each next step until a run ends without reaching it; returns the points reached."""
    jobs = [(n, mode) for n in points for mode in modes(case.mapping, n)]
    with ThreadPoolExecutor(PARALLEL) as pool:
        reached = list(pool.map(lambda job: crash_and_resume(case, start, tmp / f"{job[1]}-{job[0]}", *job,
                                                             reference), jobs))
    count = len({n for (n, _mode), hit in zip(jobs, reached, strict=True) if hit})
    n = beyond
    while n is not None and crash_and_resume(case, start, tmp / f"node-{n}", n, "node", reference):
        count += 1
        n += 1
    return count


def lost_process(mapping: str) -> str:
    every = PROCESS_EVERY.get(mapping)
    return "none a lost process" if every is None else f"1 in {every} a lost process too"


def modes(mapping: str, n: int) -> tuple[str, ...]:
    """Every point as a lost node; some as a lost process too."""
    return ("node", "process") if mapping in PROCESS_EVERY and n % PROCESS_EVERY[mapping] == 1 else ("node",)


def crashed_resume(case: Case, base: Path, tmp: Path, done: list[int]) -> tuple[Path, int]:
    """``base`` resumed and crashed as a lost node in the middle of its second checkpoint (or of its
    first), and the number of steps the next resume takes before its own first checkpoint. A
    process's outputs reach the disk at times that vary from run to run, so a step number may land
    just after a checkpoint completed, which leaves the next resume nothing to do: the next
    candidate is tried then."""
    middles = [(done[0] + done[1]) // 2 + 1] if len(done) > 1 else []
    for at in [*middles, done[0] - 3, done[0] - 2, done[0] - 1]:
        crashed = tmp / f"crashed-{at}"
        shutil.copytree(base, crashed, symlinks=True)
        before = sizes(crashed)
        trace = tmp / f"crashed-{at}.trace"
        if not run(case, crashed, "--resume", crash=(at, "node"), trace=trace).crashed:
            continue
        lose_unsynced(crashed, trace, before)
        calibration = tmp / f"calibration-{at}"
        shutil.copytree(crashed, calibration, symlinks=True)
        assert run(case, calibration, "--resume", trace=tmp / f"calibration-{at}.trace").code == 0
        own = first_own_checkpoint_step(tmp / f"calibration-{at}.trace") - 1
        if own >= 1:
            return crashed, own
    raise AssertionError(f"no crash of a resume of {case} left the next resume work of its own")


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """The outputs of one uninterrupted simple run of a case's graph with its inputs (once each)."""
    found: dict[tuple[str, ...], dict] = {}

    def of(case: Case) -> dict:
        key = tuple(case.argv)
        if key not in found:
            results = tmp_path_factory.mktemp("reference") / "r"
            done = subprocess.run([*d4p_hpc_cmd(), "run", *key, "--results", str(results)],
                                  env={**os.environ, **SLOW}, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            found[key] = outputs(results)
        return found[key]
    return of


@pytest.mark.parametrize("case", [Case("simple"), Case("multi"), Case("mpi"),
                                  pytest.param(Case("hybrid_redis"), marks=needs_redis), SPREAD],
                         ids=["simple", "multi", "mpi", "hybrid_redis", "multi-spread-root"])
def test_a_crash_at_any_durable_step_then_resume_gives_the_outputs_once(case, tmp_path, references,
                                                                         record_property):
    started = time.monotonic()
    reference = references(case)
    mapping = case.mapping
    base = tmp_path / "base"
    make_base(case, base, tmp_path)
    # the resumed segment, uninterrupted: where its own work ends and its checkpoints complete
    calibration = tmp_path / "calibration"
    shutil.copytree(base, calibration, symlinks=True)
    ended = run(case, calibration, "--resume", trace=tmp_path / "calibration.trace")
    assert ended.code == 0 and outputs(calibration) == reference, ended.stderr
    done = completions(tmp_path / "calibration.trace")
    assert done, "the resumed segment took no checkpoint"
    exhaustive = list(range(1, done[0] + 1))
    sampled = sample(done[0] + 1, ended.steps, SAMPLED)
    points = sweep(case, base, tmp_path, exhaustive + sampled, reference, beyond=ended.steps + 1)

    # the resume crashed too, from a segment killed in the middle of a checkpoint: a checkpoint to
    # remove, outputs to cut back
    crashed, own = crashed_resume(case, base, tmp_path, done)
    (tmp_path / "again").mkdir()
    resumes = sweep(case, crashed, tmp_path / "again", list(range(1, own + 2)), reference, beyond=None)

    seconds = time.monotonic() - started
    said = (f"{mapping}: {points} crash points of a resumed run ({len(exhaustive)} exhaustive: the resume's own "
            f"steps and its first checkpoint; {len(sampled)} sampled of the {ended.steps - done[0]} after; each a "
            f"lost node, {lost_process(mapping)}), {resumes} of the resume itself ({own} own steps), each resumed "
            f"to the outputs of an uninterrupted run, in {seconds:.0f} s")
    print(said)
    record_property("crash_points", said)
    assert points and resumes, said
