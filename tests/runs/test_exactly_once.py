"""Exactly once, through the command line: one writer at a time, and only whole checkpoints used.

Two ``run --resume`` of one directory started together: one proceeds, the other says in one line
who writes the directory, and the outputs are those of one uninterrupted run. A newest checkpoint
that is damaged (a part missing, cut short, garbage, empty, of another format, a manifest cut
short or not an object) is skipped, saying so in one line, for the one before; an output file
shorter than a checkpoint records (lost in a crash) skips that checkpoint too; with no whole
checkpoint left the resume is refused in one line and nothing is changed. What a kill during
the last checkpoint leaves (its begun saying ``final``, temporary files) does not touch the next
segment.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from helpers.runs import EXAMPLES, cli, d4p_hpc_cmd, diff, explain, outputs, read_json, wait_for

from d4p_hpc.mappings.checkpoint import store

pytestmark = pytest.mark.xdist_group("exactly-once")
GRAPH = EXAMPLES / "long_count.py"
ITEMS = 200
ENV = {"LONG_COUNT_SECONDS": "0.01"}
ARGS = ["-a", "graph", "-i", ITEMS, "-m", "multi", "-n", 2]
TRIES = 20


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    results = tmp_path_factory.mktemp("reference") / "r"
    done = cli("run", GRAPH, "-a", "graph", "-i", ITEMS, "--results", results, env=ENV)
    assert done.returncode == 0, explain(done)
    return outputs(results)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    """A multi run stopped at the walltime signal, with two complete checkpoints or more."""
    # the two kept checkpoints must record different output sizes (a test below tells them apart by
    # them): a loaded machine may make no progress between them, and then the run is made again
    for _attempt in range(3):
        results = tmp_path_factory.mktemp("stopped") / "r"
        argv = [*d4p_hpc_cmd(), "run", str(GRAPH), *map(str, ARGS), "--checkpoint", "--results", str(results)]
        proc = subprocess.Popen(argv, env={**os.environ, **ENV, "D4P_HPC_CHECKPOINT_EVERY_TEST": "0.3"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        wait_for(lambda r=results, p=proc: len(store.complete_seqs(r)) >= 2 or p.poll() is not None, 60)
        proc.send_signal(signal.SIGUSR1)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 138, err
        seqs = store.complete_seqs(results)
        assert len(seqs) >= 2
        if torn(results, seqs[-2])[1] < torn(results, seqs[-1])[1]:
            break
    return results


def copy(stopped: Path, tmp_path: Path) -> Path:
    results = tmp_path / "r"
    shutil.copytree(stopped, results, symlinks=True)
    return results


def resume(results: Path) -> subprocess.CompletedProcess:
    return cli("run", GRAPH, *ARGS, "--results", results, "--resume", env=ENV)


def errors(done: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in done.stderr, explain(done)
    return [line for line in done.stderr.splitlines() if line.startswith("Error: ")]


def tree(results: Path) -> dict[str, str]:
    """Every file under ``results`` (but the lock) by its sha256: what a refusal must leave as it was."""
    return {str(p.relative_to(results)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(results.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.mark.slow
@pytest.mark.parametrize(("mapping", "tries"), [("multi", TRIES), ("mpi", 5)])
def test_two_resumes_started_together_one_proceeds_the_other_says_who(mapping, tries, stopped, tmp_path,
                                                                      reference):
    """(mpi: the launcher holds the lock for its ranks; the multi checkpoint resumes under mpi.)"""
    for attempt in range(tries):
        results = copy(stopped, tmp_path / str(attempt))
        argv = [*d4p_hpc_cmd(), "run", str(GRAPH), *map(str, ARGS[:4]), "-m", mapping, "-n", "2",
                "--results", str(results), "--resume"]
        both = [subprocess.Popen(argv, env={**os.environ, **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for _ in range(2)]
        ended = []
        for proc in both:
            out, err = proc.communicate(timeout=120)
            ended.append(subprocess.CompletedProcess(argv, proc.returncode, out, err))
        assert sorted(e.returncode for e in ended) == [0, 2], [explain(e) for e in ended]
        loser = next(e for e in ended if e.returncode == 2)
        said = errors(loser)
        assert len(said) == 1 and ("is being written by d4p-hpc run --resume (pid " in said[0]
                                   or "has COMPLETED" in said[0]), explain(loser)
        got = outputs(results)
        assert got == reference, f"try {attempt}: {diff(got, reference)}"


def _without(results: Path, seq: int) -> None:
    (store.directory(results, seq) / "part-00001.pkl").unlink()


def _cut(results: Path, seq: int) -> None:
    part = store.directory(results, seq) / "part-00001.pkl"
    part.write_bytes(part.read_bytes()[:100])


def _garbage(results: Path, seq: int) -> None:
    (store.directory(results, seq) / "part-00001.pkl").write_bytes(os.urandom(500))


def _empty(results: Path, seq: int) -> None:
    (store.directory(results, seq) / "part-00001.pkl").write_bytes(b"")


def _manifest_cut(results: Path, seq: int) -> None:
    manifest = store.directory(results, seq) / store.COMPLETE
    manifest.write_bytes(manifest.read_bytes()[:100])


def _manifest_list(results: Path, seq: int) -> None:
    (store.directory(results, seq) / store.COMPLETE).write_text("[1, 2]\n")


def _format_99(results: Path, seq: int) -> None:
    """A part of another format, its manifest's size and sha256 made to match (so only the format says it)."""
    part = store.directory(results, seq) / "part-00001.pkl"
    data = pickle.dumps({**pickle.loads(part.read_bytes()), "format": 99})
    part.write_bytes(data)
    manifest = store.directory(results, seq) / store.COMPLETE
    found = json.loads(manifest.read_text())
    found["parts"][part.name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest.write_text(json.dumps(found))


def _extra(results: Path, seq: int) -> None:
    shutil.copy(store.directory(results, seq) / "part-00001.pkl", store.directory(results, seq) / "part-00002.pkl")


DAMAGES = {"a part missing": (_without, "part-00001.pkl is missing"),
           "a part cut short": (_cut, "part-00001.pkl has 100 bytes"),
           "a part of garbage": (_garbage, "part-00001.pkl has 500 bytes"),
           "an empty part": (_empty, "part-00001.pkl has 0 bytes"),
           "a manifest cut short": (_manifest_cut, "complete.json cannot be read"),
           "a manifest that is a list": (_manifest_list, "complete.json cannot be read: it holds a JSON list"),
           "a part of format 99": (_format_99, "part-00001.pkl is not the part of process 1 of checkpoint"),
           "a part nobody wrote": (_extra, "part-00002.pkl is not in its complete.json")}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_newest_checkpoint_is_skipped_for_the_one_before(damage, stopped, tmp_path, reference):
    results = copy(stopped, tmp_path)
    newest, before = store.complete_seqs(results)[-2:][::-1]
    spoil, why = DAMAGES[damage]
    spoil(results, newest)
    done = resume(results)
    assert done.returncode == 0 and not errors(done), explain(done)
    notes = [line for line in done.stderr.splitlines() if line.startswith(f"checkpoint {newest} of ")]
    assert len(notes) == 1 and why in notes[0] and notes[0].endswith(f"resuming from checkpoint {before}"), \
        explain(done)
    assert read_json(results / "run.json")["resumed_from"] == before
    got = outputs(results)
    assert got == reference, diff(got, reference)


def test_with_no_whole_checkpoint_the_resume_is_refused_in_one_line_and_nothing_changes(stopped, tmp_path):
    results = copy(stopped, tmp_path)
    for seq in store.complete_seqs(results):
        _without(results, seq)
    before = tree(results)
    done = resume(results)
    said = errors(done)
    assert done.returncode == 2 and len(said) == 1, explain(done)
    assert said[0].startswith(f"Error: no checkpoint of {results} can be resumed from (checkpoint ") and \
        "part-00001.pkl is missing" in said[0] and said[0].endswith("nothing was changed: start a new run"), said
    assert tree(results) == before


def torn(results: Path, seq: int) -> tuple[Path, int]:
    """The output file checkpoint ``seq`` records as longest, and its size there."""
    rel, size = max(store.load(results, seq).sizes().items(), key=lambda pair: pair[1])
    return results / rel, size


def test_an_output_cut_below_what_the_newest_checkpoint_records_resumes_from_the_one_before(stopped, tmp_path,
                                                                                            reference):
    results = copy(stopped, tmp_path)
    newest, before = store.complete_seqs(results)[-2:][::-1]
    path, size = torn(results, newest)
    _, older = torn(results, before)
    assert older < size, "the two checkpoints record the same output size: nothing to tell them apart by"
    os.truncate(path, (older + size) // 2)  # written before the newest checkpoint, lost in a crash
    done = resume(results)
    assert done.returncode == 0 and not errors(done), explain(done)
    assert f"checkpoint {newest} of {results} is not used ({path.relative_to(results)} has" in done.stderr
    got = outputs(results)
    assert got == reference, diff(got, reference)


def test_an_output_cut_below_what_every_checkpoint_records_is_refused_not_resumed(stopped, tmp_path):
    results = copy(stopped, tmp_path)
    path, _ = torn(results, store.complete_seqs(results)[0])
    os.truncate(path, 10)
    before = tree(results)
    done = resume(results)
    said = errors(done)
    assert done.returncode == 2 and len(said) == 1 and "what had not reached the disk was lost in a crash" in said[0], \
        explain(done)
    assert tree(results) == before


def test_what_a_kill_during_the_last_checkpoint_leaves_does_not_touch_the_next_segment(stopped, tmp_path,
                                                                                       reference):
    """The next checkpoint's directory as a kill at the walltime signal leaves it: begun saying
    ``final``, one process's part, another's temporary file; and a temporary run record."""
    results = copy(stopped, tmp_path)
    newest = store.complete_seqs(results)[-1]
    unfinished = store.directory(results, newest + 1)
    unfinished.mkdir(mode=0o700)
    (unfinished / "begun").write_bytes(b"final")
    shutil.copy(store.directory(results, newest) / "part-00000.pkl", unfinished / "part-00000.pkl")
    shutil.copy(store.directory(results, newest) / "part-00001.pkl", unfinished / ".part-00001.pkl.12345.tmp")
    (results / ".run.json.12345.tmp").write_text("{")
    done = cli("run", GRAPH, *ARGS, "--results", results, "--resume", "--checkpoint-every", 1, env=ENV)
    assert done.returncode == 0, explain(done)  # not stopped by a stale "final" (138)
    got = outputs(results)
    assert got == reference, diff(got, reference)
    left = [str(p) for p in results.rglob(".*") if p.name not in (".lock", ".parts")]
    assert not left, left
    assert all(store.load(results, seq).seq == seq for seq in store.complete_seqs(results))
