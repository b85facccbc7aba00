"""Cluster profiles in TOML, layered into the values of a :class:`~d4p_hpc.submission.spec.JobSpec`.

Precedence, lowest first: built-in defaults, the user file
(``$XDG_CONFIG_HOME/d4p-hpc/config.toml``, usually ``~/.config/...``), the
project file (``./d4p-hpc.toml``), the environment (``D4P_HPC_<KEY>``), the
command line. In each file, top-level keys apply to every job and the table
``[profiles.NAME]`` applies when profile NAME is chosen (``--profile``,
``$D4P_HPC_PROFILE``, or a top-level ``profile = "NAME"`` key)::

    profile = "cpu"
    results_root = "/scratch/me/d4p"

    [profiles.cpu]
    scheduler = "slurm"
    partition = "standard"
    account = "ab123"
    modules = ["cray-python"]

Keys are the field names of :class:`~d4p_hpc.submission.spec.JobSpec`. Relative paths in
a file are relative to that file's folder. Values may be strings wherever they come from
(:func:`coerce`): this is the one module that converts them. It also says why a job goes to its
scheduler (:func:`scheduler_why`): a refusal that depends on the scheduler names it and why, since
``sbatch`` on PATH sends a job to Slurm unasked.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import MISSING, dataclass
from pathlib import Path

from d4p_hpc import schedulers
from d4p_hpc.errors import SpecError
from d4p_hpc.submission.spec import DEFAULT_RESULTS_ROOT, FIELDS, JobSpec, SchedulerMismatchError, check_type, \
    field_type

PROJECT_FILE = "d4p-hpc.toml"
ENV_PREFIX = "D4P_HPC_"
PROFILE_ENV = ENV_PREFIX + "PROFILE"
PATH_FIELDS = ("graph", "input_file", "results_root", "venv", "container")
BUILT_IN = "built-in default"
#: where a value given to the job itself came from: ``submit``'s options, or the Python API's keywords
COMMAND_LINE = "command line"
KEYWORD = "keyword argument"
_FILE_KEYS = ("profile", "profiles")


@dataclass(frozen=True)
class Resolved:
    """Merged values with where each came from."""

    values: dict
    sources: dict
    profile: str | None

    def spec(self) -> JobSpec:
        """Build (and so validate) the job spec from the merged values."""
        try:
            return JobSpec(**self.values)
        except SchedulerMismatchError as err:
            raise SchedulerMismatchError(f"{err} (scheduler {self.values['scheduler']}: "
                                         f"{scheduler_why(self.values['scheduler'], self.sources)})") from None


def scheduler_why(name: str, sources: dict) -> str:
    """Why a job goes to scheduler ``name``, given where each value came from (:attr:`Resolved.sources`):
    ``sbatch is on PATH; use --scheduler local to run here``, or ``from the command line``."""
    source = sources.get("scheduler", BUILT_IN)
    if source == "environment":
        return f"from ${ENV_PREFIX}SCHEDULER"
    if source != BUILT_IN:
        return f"from the {source}"
    here = next((cls.name for cls in schedulers.classes() if cls.on_this_host), None)
    advice = f"; use --scheduler {here} to run here" if here and here != name else ""
    return schedulers.detected_because(name) + advice


def scheduler_origin(name: str, sources: dict) -> str:
    """`` (why)`` of :func:`scheduler_why` for a line naming the scheduler, unless the command line chose it."""
    return "" if sources.get("scheduler") in (COMMAND_LINE, KEYWORD) else f" ({scheduler_why(name, sources)})"


def user_file(environ=None) -> Path:
    """The user's configuration file."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(environ.get("HOME") or str(Path.home()), ".config")
    return Path(base) / "d4p-hpc" / "config.toml"


def resolve(cli: dict | None = None, profile: str | None = None, cwd: str | os.PathLike | None = None,
            environ=None, given: str = COMMAND_LINE) -> Resolved:
    """Merge built-in defaults, the two files, the environment and ``cli`` (field -> value).

    Parameters
    ----------
    cli
        Values given on the command line (or as keyword arguments: ``given`` says which, for the
        sources); None values count as not given.
    profile
        Profile name from ``--profile``; overrides ``$D4P_HPC_PROFILE`` and the files.
    cwd
        Folder holding the project file, and base of relative paths from the
        environment and the command line (default: the current folder).
    environ
        Environment mapping (default: ``os.environ``).

    Returns
    -------
    Resolved
        Values ready for :class:`~d4p_hpc.submission.spec.JobSpec` and their sources.
    """
    environ = os.environ if environ is None else environ
    cwd = Path(cwd or os.getcwd())
    files = [(f"user config {p}", p, _read(p)) for p in [user_file(environ)]]
    files += [(f"project config {p}", p, _read(p)) for p in [cwd / PROJECT_FILE]]
    profile = profile or environ.get(PROFILE_ENV) or next(
        (data["profile"] for _, _, data in reversed(files) if isinstance(data.get("profile"), str)), None)
    defaults = {name: f.default for name, f in FIELDS.items() if f.default not in (None, (), MISSING)}
    # the built-in scheduler is the one this host submits to (sbatch or qsub on PATH, else local)
    defaults.update(scheduler=schedulers.detect(), results_root=DEFAULT_RESULTS_ROOT)
    layers = [(BUILT_IN, cwd, defaults)]
    for label, path, data in files:
        layers.append((label, path.parent, {k: v for k, v in data.items() if k not in _FILE_KEYS}))
        chosen = data.get("profiles", {}).get(profile) if profile else None
        if chosen is not None:
            layers.append((f"{label} [profiles.{profile}]", path.parent, chosen))
    if profile and not any(profile in data.get("profiles", {}) for _, _, data in files):
        known = sorted({name for _, _, data in files for name in data.get("profiles", {})})
        raise SpecError(f"no profile {profile!r} in {' or '.join(str(p) for _, p, _ in files)}; "
                        f"profiles found: {', '.join(known) or 'none'}")
    layers.append(("environment", cwd, _from_env(environ)))
    layers.append((given, cwd, {k: v for k, v in (cli or {}).items() if v is not None}))
    values, sources = {}, {}
    for label, base, layer in layers:
        for key, value in layer.items():
            if key not in FIELDS:
                raise SpecError(f"unknown key {key!r} in {label}; valid keys: {', '.join(FIELDS)}")
            values[key] = _absolute(key, coerce(key, value, label), base)
            sources[key] = label
    if sources["python"] == BUILT_IN and not any(values.get(k) for k in ("venv", "conda", "container")):
        # the interpreter running d4p-hpc has it installed; a job on the same shared
        # file system can use it even when PATH on the nodes leads elsewhere
        values["python"] = sys.executable
    return Resolved(values, sources, profile)


def coerce(name: str, value, source: str = "") -> object:
    """Convert ``value`` (from TOML, the environment or the command line) to the type of field ``name``.

    Strings are accepted everywhere: ``"4"`` for ints, ``true``/``false``/``1``/``0``/``yes``/``no``
    for booleans, and for lists either a JSON array or comma-separated items. Any other value
    must have the field's type already (:func:`~d4p_hpc.submission.spec.check_type`).
    """
    typ = field_type(name)
    if isinstance(value, str) and typ is not str:
        where = f" (from {source})" if source else ""
        if typ is tuple and value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except ValueError:
                raise SpecError(f"{name}{where} is not a valid JSON list: {value!r}") from None
        elif typ is tuple:
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif typ is bool and value.lower() in ("1", "true", "yes", "0", "false", "no"):
            value = value.lower() in ("1", "true", "yes")
        elif typ is int:
            try:
                value = int(value)
            except ValueError:
                raise SpecError(f"{name}{where} must be a whole number, not {value!r:.80}") from None
    return check_type(name, value, source)


def results_root(profile: str | None = None, cwd: str | os.PathLike | None = None) -> Path:
    """Where jobs of ``profile`` keep their results directories."""
    return Path(resolve(profile=profile, cwd=cwd).values["results_root"])


def _read(path: Path) -> dict:
    if not path.is_file():
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as err:
        raise SpecError(f"cannot read {path}: {err}") from None
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(t, dict) for t in profiles.values()):
        raise SpecError(f"{path}: 'profiles' must hold tables, e.g. [profiles.cpu]")
    if "profile" in data and not isinstance(data["profile"], str):
        raise SpecError(f"{path}: profile = {data['profile']!r} must be the name of a profile, "
                        'e.g. profile = "cpu"')
    # a typo in a profile not chosen today would surface only on the day it is: say so now
    for name, table in profiles.items():
        for key in table:
            if key not in FIELDS:
                raise SpecError(f"unknown key {key!r} in {path} [profiles.{name}]; valid keys: {', '.join(FIELDS)}")
    return data


def _from_env(environ) -> dict:
    # other D4P_HPC_* variables (D4P_HPC_PROFILE, test switches) are not job keys
    return {key: environ[ENV_PREFIX + key.upper()] for key in FIELDS if ENV_PREFIX + key.upper() in environ}


def _absolute(key: str, value, base: Path):
    if key in PATH_FIELDS and isinstance(value, str) and value:
        return os.path.normpath(base / os.path.expanduser(value))
    return value
