"""Render a :class:`~d4p_hpc.submission.spec.JobSpec` into a job script.

A scheduler's template is its class's :attr:`~d4p_hpc.schedulers.Scheduler.template`,
looked up in ``templates/`` (the package ``d4p_hpc.templates``: the built-in
schedulers' ``templates/<scheduler>/job.sh.j2``) and then in the class's own
``template_path``; every one extends ``templates/common/job.sh.j2``. What a
stop signal means to the script (the exit code -> state cases, the grace before
SIGKILL) comes from :mod:`d4p_hpc.supervisor`, as it does for the run. Quoting is
the renderer's job, not the template author's: every value a shell reads goes
through the ``q`` filter (``shlex.quote``) or ``argv`` (a quoted command line).
Directive values are not quoted: :mod:`d4p_hpc.submission.spec` has validated them.
The names of the results directory come from :class:`~d4p_hpc.results.Layout`
(``layout`` in the templates), never written out by a template.
Jinja2 is imported on first use, which keeps ``d4p-hpc --help`` fast.
"""

from __future__ import annotations

import functools
import json
import shlex
import signal
import subprocess
from importlib import resources

from d4p_hpc import mappings, schedulers, supervisor, units
from d4p_hpc.errors import RenderError
from d4p_hpc.results import Layout
from d4p_hpc.submission import launch
from d4p_hpc.submission.spec import JobSpec


def render_script(spec: JobSpec, sources: dict | None = None) -> str:
    """The job script of ``spec``.

    Parameters
    ----------
    spec
        The validated job.
    sources
        Where each value came from (see :func:`d4p_hpc.submission.config.resolve`); saved
        with the spec in the job's ``spec.json``.

    Returns
    -------
    str
        The script text, ending with a newline.
    """
    import jinja2

    scheduler = schedulers.scheduler_class(spec.scheduler)
    context = {"spec": spec, "layout": Layout, "plan": launch.plan(spec), "fork": launch.FORK,
               "resume": launch.resume(spec),
               "nodefile": launch.ShellVar(scheduler.nodefile) if scheduler.nodefile else None,
               "stops": supervisor.shell_cases(), "grace": supervisor.GRACE_SECONDS,
               "stop_signals": [signal.Signals(signum).name.removeprefix("SIG") for signum in supervisor.STOPS],
               "spec_json": json.dumps({"spec": spec.to_dict(), "sources": sources or {}}, indent=2,
                                       sort_keys=True)}
    try:
        return _environment(scheduler.template_path).get_template(scheduler.template).render(context)
    except jinja2.TemplateError as err:
        raise RenderError(f"cannot render the {spec.scheduler} job script: {err}") from None


def render_array(spec: JobSpec, array) -> str:
    """The job array script of a sweep (:class:`d4p_hpc.sweeps.submit.Array`): the directives of
    ``spec`` (the job every task is) and a body that runs the job script of each element's task."""
    import jinja2

    from d4p_hpc.sweeps.sweep import SweepLayout

    scheduler = schedulers.scheduler_class(spec.scheduler)
    if scheduler.array_template is None:
        raise RenderError(f"the {scheduler.title} scheduler runs no job arrays: a sweep cannot be submitted to it")
    context = {"spec": spec, "layout": Layout, "sweep_layout": SweepLayout, "array": array}
    try:
        return _environment(scheduler.template_path).get_template(scheduler.array_template).render(context)
    except jinja2.TemplateError as err:
        raise RenderError(f"cannot render the {spec.scheduler} job array script: {err}") from None


def render_check(spec: JobSpec, scratch: str, ready: str, set_up: bool = True) -> str:
    """The script that checks ``spec`` in the job's own environment, on this host (``templates/common/check.sh.j2``).

    ``scratch`` stands in for the results directory the setup lines may name; ``ready`` is the line
    it writes to stderr once the environment is set up, before the check itself runs; without
    ``set_up`` the environment is this process's own (inside the job).
    """
    import jinja2

    context = {"spec": spec, "plan": launch.plan(spec), "command": launch.check(spec), "scratch": scratch,
               "ready": ready, "set_up": set_up, "launcher": launch.launcher(spec),
               "launcher_env": mappings.LAUNCHER_ENV}
    try:
        return _environment().get_template("common/check.sh.j2").render(context)
    except jinja2.TemplateError as err:
        raise RenderError(f"cannot render the check of the {spec.scheduler} job: {err}") from None


def check_syntax(script: str) -> None:
    """Raise :class:`RenderError` if ``bash -n`` rejects ``script`` (e.g. a broken setup line)."""
    result = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    if result.returncode:
        raise RenderError(f"the job script is not valid bash (check the setup lines):\n{result.stderr.strip()}")


def quote(value) -> str:
    """Quote one word for bash; a :class:`~d4p_hpc.submission.launch.ShellVar` becomes ``"$name"``."""
    if isinstance(value, launch.ShellVar):
        return f'"${value.name}"'
    return shlex.quote(str(value))


def argv(words) -> str:
    """A command line: every word quoted."""
    return " ".join(quote(w) for w in words)


def _load(name: str):
    path = resources.files("d4p_hpc.templates")
    for part in name.split("/"):
        path = path / part
    try:
        return path.read_text(encoding="utf-8"), None, lambda: True
    except (FileNotFoundError, NotADirectoryError):
        return None  # jinja2 turns this into TemplateNotFound


@functools.cache
def _environment(template_path: tuple[str, ...] = ()):
    """The Jinja2 environment reading the package's templates, then those in ``template_path``."""
    import jinja2

    loader = jinja2.ChoiceLoader([jinja2.FunctionLoader(_load), jinja2.FileSystemLoader(template_path)])
    env = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined,
                             autoescape=False, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters.update(q=quote, argv=argv, clock=units.clock)
    return env
