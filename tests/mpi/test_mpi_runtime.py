"""The mpi mapping inside a real MPI world, at any world size (1, 2, 4 ...).

Run with ``mpiexec -n N python -m pytest --with-mpi tests/mpi`` (pytest-mpi).
Every rank runs every test; each test ends with :func:`agree`, which gathers
every rank's errors and fails on all ranks together (a failure on one rank
only would leave the others waiting in the next collective call).
"""

from __future__ import annotations

import shutil
import tempfile
import traceback
from collections import Counter
from pathlib import Path

import pytest

from helpers.runs import (CASES, DATA, EXAMPLES, diff, independent_word_counts, outputs, raw_items,
                             read_json, run_simple)

MPI = pytest.importorskip("mpi4py.MPI")  # pytest-mpi needs mpi4py anyway: this never skips under --with-mpi
COMM = MPI.COMM_WORLD
RANK = COMM.Get_rank()
SIZE = COMM.Get_size()


def agree(errors: list[str]) -> None:
    """Fail on every rank if any rank has errors (with all of them in the message)."""
    everyone = COMM.allgather(errors)
    messages = [f"rank {r}/{SIZE}: {e}" for r, errs in enumerate(everyone) for e in errs]
    assert not messages, "\n".join(messages)


@pytest.fixture
def shared_dir():
    """One fresh directory, made by rank 0 and agreed on by every rank."""
    path = tempfile.mkdtemp(prefix="d4p-mpi-test-") if RANK == 0 else None
    path = COMM.bcast(path, root=0)
    yield Path(path)
    COMM.Barrier()
    if RANK == 0:
        shutil.rmtree(path, ignore_errors=True)


def plan_summary(plan) -> tuple:
    return (tuple((p.key, p.pe.id, p.count, p.first_gid, tuple(p.inputs), tuple(p.outputs)) for p in plan.pes),
            tuple((c.src, c.output, c.dst, c.input, repr(c.grouping)) for c in plan.connections),
            tuple(plan.placement), tuple(plan.notices), plan.processes)


def run_in_world(graph: Path, inputs, results: Path, errors: list[str]):
    """prepare + mpi.run on every rank; return (context, record) or (None, None) after an error."""
    from d4p_hpc import supervisor
    from d4p_hpc.mappings.static import mpi
    from d4p_hpc.mappings.runtime.prepare import prepare

    try:
        ctx = prepare(str(graph), None, "mpi", SIZE, inputs, results)
        record = mpi.run(ctx)
        return ctx, record
    except Exception:
        errors.append(traceback.format_exc())
        return None, None
    finally:
        supervisor.restore_signals()


GRAPHS = {name: (EXAMPLES / file, inputs) for name, (file, inputs) in CASES.items()}
GRAPHS["two-pes-idle-ranks"] = (DATA / "g_which_api.py", 3)


@pytest.mark.mpi
@pytest.mark.parametrize("case", list(GRAPHS))
def test_mpi_world_equals_simple(case, shared_dir):
    graph, inputs = GRAPHS[case]
    errors: list[str] = []
    results = Path(COMM.bcast(str(shared_dir / "mpi") if RANK == 0 else None, root=0))
    ctx, record = run_in_world(graph, inputs, results, errors)

    # every rank computes its own simple reference (keeps per-process state such as PE ids in step)
    try:
        simple_dir = shared_dir / f"simple-{RANK}"
        assert run_simple(graph, inputs, simple_dir)["state"] == "COMPLETED"
        want = outputs(simple_dir)
    except Exception:
        errors.append(traceback.format_exc())
        want = None

    summaries = COMM.allgather(plan_summary(ctx.plan) if ctx else None)
    if any(s != summaries[0] for s in summaries):
        errors.append(f"the ranks computed different plans: {summaries}")

    if ctx is not None:
        if RANK == 0:
            if record.get("state") != "COMPLETED" or record.get("exit_code") != 0:
                errors.append(f"run record: {record}")
            if ctx.results != results:
                errors.append(f"results dir {ctx.results} != agreed {results}")
            if want is not None:
                got = outputs(results)
                if got != want:
                    errors.append(f"{case}: mpi with {SIZE} ranks differs from simple:\n{diff(got, want)}")
            metrics = read_json(results / "metrics.json")
            procs = {i["process"] for pe in metrics["pes"].values() for i in pe["instances"]}
            instances = sum(len(pe["instances"]) for pe in metrics["pes"].values())
            if procs != set(range(min(SIZE, instances))):
                errors.append(f"instances ran on ranks {procs}, world size {SIZE}, {instances} instances")
            if case == "word_count":
                errors += word_count_errors(results, inputs)
        elif not (record.get("secondary") and record.get("state") == "COMPLETED"):
            errors.append(f"rank {RANK} ended with {record}")
    agree(errors)


def word_count_errors(results: Path, iterations: int) -> list[str]:
    items = [tuple(x) for x in raw_items(results, "CountWords", "output")]
    repeated = [w for w, c in Counter(w for w, _ in items).items() if c > 1]
    errors = [f"words counted by several instances: {repeated}"] if repeated else []
    if dict(items) != dict(independent_word_counts(iterations)):
        errors.append(f"word counts differ from the corpus: {sorted(items)[:10]} ...")
    return errors


@pytest.mark.mpi
def test_word_count_group_by_across_ranks(shared_dir):
    """More items, the same checks: each word reaches one CountWords instance, wherever it was split."""
    iterations = 400
    errors: list[str] = []
    results = Path(COMM.bcast(str(shared_dir / "wc") if RANK == 0 else None, root=0))
    ctx, _record = run_in_world(EXAMPLES / "word_count.py", iterations, results, errors)
    if ctx is not None and RANK == 0:
        errors += word_count_errors(results, iterations)
        counter = read_json(results / "metrics.json")["pes"]["CountWords"]
        if counter["items_in"] != sum(independent_word_counts(iterations).values()):
            errors.append(f"CountWords received {counter['items_in']} items")
        if SIZE >= 4 and len([i for i in counter["instances"] if i["items_in"]]) < 2:
            errors.append(f"CountWords did not run as several busy instances: {counter['instances']}")
    agree(errors)


KEYS = (["the", "fox", "", "naïve", "日本", "a" * 300] + [f"word-{i}" for i in range(300)]
        + [("the", 1), ("fox", 2.5), 1, 1.0, True, None, -7, 2 ** 70, b"bytes", (1, ("nested", None))])


@pytest.mark.mpi
def test_stable_hash_and_routing_agree_on_every_rank():
    """The group-by hash of string keys (salted per process by Python's hash) is the same on every rank."""
    from d4p_hpc.mappings.runtime.hosting import Route
    from d4p_hpc.mappings.runtime.plan import stable_hash

    errors: list[str] = []
    mine = [stable_hash(k) for k in KEYS]
    route = Route("input", range(10, 17), [0], sender=RANK)
    targets = [route.targets((k, "payload")) for k in KEYS]
    all_hashes = COMM.allgather(mine)
    all_targets = COMM.allgather(targets)
    for r in range(SIZE):
        if all_hashes[r] != all_hashes[0]:
            bad = [KEYS[i] for i, (a, b) in enumerate(zip(all_hashes[r], all_hashes[0], strict=True)) if a != b]
            errors.append(f"rank {r} hashes {bad[:5]} differently from rank 0")
        if all_targets[r] != all_targets[0]:
            errors.append(f"rank {r} routes keys to other instances than rank 0")
    if len(set(t for t in targets)) < 5:
        errors.append(f"300 keys went to only {len(set(targets))} of 7 instances")
    agree(errors)


@pytest.mark.mpi
def test_cli_inside_the_world_uses_the_world_size(shared_dir, capsys):
    """What a job script runs (``srun python -m d4p_hpc run ... -m mpi``): no mpiexec of its own, -n ignored."""
    from d4p_hpc import supervisor
    from d4p_hpc.cli import main

    errors: list[str] = []
    results = shared_dir / "cli"
    code = None
    try:
        main.main(["run", str(EXAMPLES / "word_count.py"), "-m", "mpi", "-n", "7", "-i", "30",
                   "--results", str(results)], standalone_mode=False)
    except SystemExit as stop:
        code = stop.code
    except Exception:
        errors.append(traceback.format_exc())
    finally:
        supervisor.restore_signals()
    if code not in (0, None):
        errors.append(f"exit code {code}")
    if RANK == 0 and not errors:
        record = read_json(results / "run.json")
        if record["state"] != "COMPLETED" or record["processes"] != SIZE:
            errors.append(f"run.json: state {record['state']}, processes {record['processes']} (world {SIZE})")
        errors += word_count_errors(results, 30)
        if "COMPLETED" not in capsys.readouterr().out:
            errors.append("rank 0 printed no summary")
    agree(errors)
