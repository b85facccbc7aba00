"""What a job or a run is given, checked in one place for the Python API and the commands: the
keywords (the job spec's fields, which are the profiles' keys and ``submit``'s long options; the
options of ``run``), the graph (a path, a module name or a WorkflowGraph object), and the plan of
a job (its spec, where each value came from, its notices and its script) built from them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from d4p_hpc import mappings
from d4p_hpc.api.checks import check_flag, check_keywords
from d4p_hpc.errors import GraphError, UsageError
from d4p_hpc.jobs.resume import signal_warning
from d4p_hpc.submission import config, precheck
from d4p_hpc.submission.render import check_syntax, render_script
from d4p_hpc.submission.spec import FIELDS, JobSpec, check_type, field_type
from d4p_hpc.submission.submit import check_files, make_root, submit
from d4p_hpc.units import clock, plural
from d4p_hpc.workflow import loader

#: where a job's values came from: ``submit``'s options, or the Python API's keywords
COMMAND_LINE, KEYWORD = config.COMMAND_LINE, config.KEYWORD
#: the keywords of :func:`d4p_hpc.submit` besides the job spec's fields
SUBMIT_EXTRA = ("profile", "check")
#: the spec fields a user gives (the rest are set by d4p-hpc: the graph, and what ``resume`` sets)
SPEC_KEYWORDS = tuple(name for name, f in FIELDS.items() if f.metadata.get("flags"))
#: the keywords of :func:`d4p_hpc.run` -> (type, the option of ``d4p-hpc run``); a test holds them
#: to the command's options
RUN_KEYWORDS: dict[str, tuple[type, str]] = {
    "mapping": (str, "--mapping"), "processes": (int, "--processes"), "attr": (str, "--attr"),
    "iterations": (int, "--iterations"), "data": (str, "--data"), "input_file": (str, "--file"),
    "results": (str, "--results"), "checkpoint_every": (float, "--checkpoint-every"),
    "checkpoint": (bool, "--checkpoint"), "resume": (bool, "--resume"), "redis_server": (str, "--redis-server"),
}
#: the least value of the numbers among them (as ``d4p-hpc run`` checks them)
RUN_MINIMUM = {"processes": 1, "iterations": 0, "checkpoint_every": 0}
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def spec_options() -> list[tuple[str, tuple[str, ...], str, type]]:
    """The options of ``submit``/``render``, one a spec field a user gives: (field, its flags, its
    help, its type: int, bool, tuple of str, or str)."""
    return [(name, FIELDS[name].metadata["flags"], FIELDS[name].metadata["help"], field_type(name))
            for name in SPEC_KEYWORDS]


def data_text(data: Any) -> str | None:
    """``data`` as the JSON text of ``-d``: a dict (or list) is encoded, a string kept."""
    if data is None or isinstance(data, str):
        return data
    if isinstance(data, dict):
        try:
            return json.dumps(data)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"data must be JSON-ready (the inputs travel as JSON): {exc}") from None
    raise UsageError(f"data must be a dict such as {{\"PE\": [{{\"input\": 1}}]}} or {{\"PE\": 3}}, or its JSON "
                     f"text, not {type(data).__name__} {data!r:.60}")


def graph_source(graph: Any, what: str = "submit", module: bool = False) -> tuple[str, str | None]:
    """The graph file to run (with ``module``: or the module name given, as ``d4p-hpc run`` takes
    it, so that a module inside a package keeps its package), and the name of the graph in it
    (None: its only graph).

    ``graph`` is a path, an importable module name, or a WorkflowGraph object held by a module-level
    name of an importable file (a module, or a script run as ``python script.py``, whose graph file
    is then the script: its ``submit`` must be under ``if __name__ == "__main__":``). A graph built in
    a notebook has no file that the compute nodes could import: it is refused, saying what to do.
    """
    if isinstance(graph, (str, os.PathLike)):
        text = os.fspath(graph)
        if not isinstance(text, str) or not text.strip():
            raise UsageError(f"{what}: graph must name a graph file or module, not {graph!r}")
        if os.path.exists(text) or text.endswith(".py") or os.sep in text or not _MODULE.fullmatch(text):
            return os.path.abspath(text), None
        try:
            found = importlib.util.find_spec(text)
        except (ImportError, ValueError) as exc:
            raise GraphError(f"no graph file or module named {text}: {exc}") from None
        if found is None or not found.origin or not found.origin.endswith(".py"):
            raise GraphError(f"no graph file or module named {text} (a path, a module name, or a WorkflowGraph)")
        return (text if module else found.origin), None
    if not (hasattr(graph, "objToNode") and hasattr(graph, "flatten")):
        raise UsageError(f"{what}: graph must be a path, a module name or a WorkflowGraph, not "
                         f"{type(graph).__name__} {graph!r:.60}")
    # a script's own module last: a graph it loaded (load_graph) or imported is found in its file
    for held in sorted(list(sys.modules.values()), key=lambda m: getattr(m, "__name__", "") == "__main__"):
        path = getattr(held, "__file__", None)
        if not path or not path.endswith(".py"):
            continue
        for attr, value in list(vars(held).items()):
            if value is graph and not attr.startswith("_"):
                return os.path.abspath(path), attr
    where = "the compute nodes cannot import it" if what == "submit" else "a run's own process cannot import it"
    raise GraphError(f"this graph object was built here (in a notebook, or in a function), and {where}: write its "
                     "PEs and the graph to a file (%%writefile graph.py in a notebook cell) and give that file: "
                     f"d4p_hpc.{what}('graph.py', ...)")


def refuse_while_loading(what: str) -> None:
    """Stop a graph file that submits or runs itself as it is loaded (on a node, or by the pre-check)."""
    source = loader.loading()
    if source is not None:
        raise UsageError(f"{what}() was called while {source} was being loaded as a graph (on a compute node, or "
                         "by the pre-check): put the call under `if __name__ == \"__main__\":`")


@dataclass(frozen=True)
class Plan:
    """A job checked and rendered, not yet submitted."""

    spec: JobSpec
    #: field -> where its value came from (the command line, a keyword, a profile, a built-in default)
    sources: dict
    #: the plan's notices (an instance count scaled down, processes shared)
    notices: list[str]
    script: str

    @property
    def description(self) -> str:
        """One line on the job's size, with a loud note when the walltime is nobody's choice."""
        spec, sources = self.spec, self.sources
        origin = "" if sources.get("walltime") != config.BUILT_IN else \
            " (built-in default: set --time or walltime in a profile)"
        return (f"{spec.scheduler}{config.scheduler_origin(spec.scheduler, sources)} job {spec.job_name}: "
                f"mapping {spec.mapping}, {plural(spec.nodes, 'node')} x "
                f"{plural(spec.tasks_per_node, 'task')} x {plural(spec.cpus_per_task, 'CPU')}, walltime "
                f"{clock(spec.walltime_seconds)}{origin}")

    @property
    def warning(self) -> str | None:
        """A signal time too short for the checkpoints measured before, if so."""
        return signal_warning(self.spec)

    def write(self, output: str | os.PathLike) -> None:
        """Write the job script to ``output``, executable (``render -o``), to submit by hand."""
        try:
            Path(output).write_text(self.script)
            Path(output).chmod(0o755)
        except OSError as exc:
            raise UsageError(f"cannot write the job script to {output}: {exc.strerror}; give -o a writable "
                             "path") from None

    def make_root(self) -> None:
        """Make the results root, where the scheduler opens the job's log files before it starts."""
        make_root(Path(str(self.spec.results_root)))

    def submit(self) -> tuple[str, Path]:
        """Submit it: its job id and its results directory."""
        return submit(self.spec, self.script, self.sources)


def plan(graph: Any, options: dict[str, Any], profile: str | None = None, check: bool = True,
         given: str = KEYWORD) -> Plan:
    """Resolve, check and render the job of ``graph`` with ``options`` (spec field -> value; None
    and empty values count as not given) over the profile's values; nothing is submitted.

    ``given`` is :data:`~d4p_hpc.submission.config.KEYWORD` for the Python API, whose values must
    have their field's type already, and ``COMMAND_LINE`` for ``submit``, whose strings are converted.
    ``check``: also load the graph in the job's environment, as a node would.
    """
    spec, sources = resolve(graph, options, profile, given)
    notices = precheck.check(spec, graph=check, sources=sources)
    script = render_script(spec, sources)
    check_syntax(script)
    return Plan(spec, sources, notices, script)


def resolve(graph: Any, options: dict[str, Any], profile: str | None = None,
            given: str = KEYWORD) -> tuple[JobSpec, dict]:
    """The job spec of ``graph`` with ``options`` over the profile's values, and where each value came
    from; its graph and input files checked to exist (as :func:`plan`, without the pre-check)."""
    check_keywords(options, SPEC_KEYWORDS, "submit")
    path, attr = graph_source(graph)
    values = {k: v for k, v in options.items() if v is not None and v != ()}
    if "data" in values:
        values["data"] = data_text(values["data"])
    if attr is not None and values.get("attr") is None:
        values["attr"] = attr
    if given == KEYWORD:
        for name, value in values.items():
            check_type(name, value, given)
    resolved = config.resolve({**values, "graph": path}, profile=profile, given=given)
    spec = resolved.spec()
    check_files(spec)
    return spec, resolved.sources


def run_argv(graph: Any, options: dict[str, Any], root: Path) -> tuple[list[str], Path]:
    """The words after ``d4p-hpc run`` for :func:`d4p_hpc.run`'s keywords, checked, and the run's
    results directory (given, or a new one under ``root``)."""
    check_keywords(options, list(RUN_KEYWORDS), "run")
    mapping = options.get("mapping") or "simple"
    if not isinstance(mapping, str):
        raise UsageError(f"run: mapping must be a string, not {mapping!r:.60}")
    mappings.get(mapping)  # an unknown one, in one line, before a process starts
    source, attr = graph_source(graph, "run", module=True)
    if attr is not None and options.get("attr") is None:
        options = {**options, "attr": attr}
    argv = [source]
    for name, value in options.items():
        if value is None or value is False:
            continue
        typ, flag = RUN_KEYWORDS[name]
        if name == "data":
            value = data_text(value)
        elif name in ("results", "input_file"):
            value = os.fspath(value) if isinstance(value, os.PathLike) else value
            if isinstance(value, str) and not value.strip():
                raise UsageError(f"run: {name} must be a path, not an empty string")
        if typ is bool:
            check_flag(name, value, "run")
            argv.append(flag)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float) if typ is float else typ):
            kind = {int: "a whole number", float: "a number"}.get(typ, "a string")
            raise UsageError(f"run: {name} must be {kind}, not {value!r:.60}")
        if isinstance(value, (int, float)) and name in RUN_MINIMUM and not value >= RUN_MINIMUM[name]:
            raise UsageError(f"run: {name} must be at least {RUN_MINIMUM[name]}, not {value!r}")
        if name == "results":
            continue  # last, whether given or not
        argv += [flag, str(value)]
    given = options.get("results")
    directory = Path(os.fspath(given)).resolve() if given is not None else \
        loader.default_results(source, mapping, root).resolve()
    return [*argv, "--results", str(directory)], directory
