"""The sweep file: one task per line, each saying what differs from the job given on the command line.

JSON lines (``.jsonl``, ``.json``, ``.ndjson``, or any file whose first non-blank character is ``{``)::

    {"name": "BHZ", "data": {"Read": [{"input": "BHZ.txt"}]}, "env": {"STATION": "BHZ"}}
    {"name": "n4", "mapping": "multi", "processes": 4}

or a CSV file with a header (``.csv``): one column per key, an empty cell leaves the key unset,
``data`` is JSON text, and ``env.NAME`` columns set environment variables. Blank lines and lines
starting with ``#`` are skipped; a task's index is its place among the tasks (0, 1, ...), which is
also its folder under ``tasks/`` and its index in the job arrays.

What a task may set (:data:`KEYS`) is what a run of the same job may differ in: its inputs, the
graph variable, its environment, its mapping and how many of the job's processes it uses. The
resources (nodes, walltime, partition...) are the array's, one request for all tasks, so they come
from the command line or the profile. Everything is checked here, before a job exists; a bad line
is one :class:`~d4p_hpc.errors.SpecError` naming the file, the line and the key.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from d4p_hpc import settings
from d4p_hpc.errors import SpecError

#: the keys of a task -> what they take, as messages say it
KEYS = {
    "name": "a short label (letters, digits, _ . + -)",
    "data": "the inputs, as for -d: an object such as {\"PE\": [{\"input\": 1}]} or {\"PE\": 3}",
    "iterations": "a whole number of iterations, as for -i",
    "input_file": "an input file, as for -f (relative to the sweep file's folder)",
    "attr": "the name of the graph variable in the graph file",
    "env": "environment variables for the task: an object of NAME: value strings",
    "mapping": "a mapping name",
    "processes": "the processes the task's run uses, at most the job's nodes x tasks per node",
}
#: the job's own options that a task's key stands for: both at once is refused
SAME_AS_OPTION = {"data": "-d/--data", "iterations": "-i/--iterations", "input_file": "-f/--file",
                  "attr": "-a/--attr", "mapping": "-m/--mapping"}
#: tasks in one sweep: far above real sweeps, below what a file system holds in one folder with ease
MAX_TASKS = 100_000
#: the largest sweep file read, in bytes: MAX_TASKS lines of a few hundred bytes each, with room
MAX_BYTES = 64 * 1024 * 1024
#: the longest value of one environment variable (a line of the job script holds it)
MAX_ENV_CHARS = 4096
#: variables the job script itself needs as they are (a task's values are literal, never expanded)
_RESERVED_ENV = frozenset({"PATH", "HOME", "SHELL", "TMPDIR", "IFS"})
_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CSV_SUFFIXES = (".csv",)
_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass(frozen=True)
class Task:
    """One line of a sweep file: its index, its line number and the values it sets."""

    index: int
    line: int
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Its ``name``, else its index."""
        return str(self.values.get("name", self.index))

    @property
    def env(self) -> dict[str, str]:
        return dict(self.values.get("env") or {})

    def varied(self) -> dict[str, Any]:
        """What it sets besides its name, in a form a table or a plot can show (``data`` decoded)."""
        return {k: json.loads(v) if k == "data" else v for k, v in self.values.items() if k != "name"}


def read(path: str | os.PathLike) -> list[Task]:
    """The tasks of the sweep file ``path``, each checked; relative ``input_file`` values made absolute."""
    path = Path(path)
    try:
        found = path.stat()
        if path.is_dir():
            raise SpecError(f"sweep file {path} is a directory; give a file of one task per line")
        if not path.is_file():  # a FIFO or a device would never end, or never be whole
            raise SpecError(f"sweep file {path} is not a regular file; give a file of one task per line")
        if found.st_size > MAX_BYTES:
            raise SpecError(f"sweep file {path} has {found.st_size / 2 ** 20:,.0f} MiB; a sweep file is at most "
                            f"{MAX_BYTES // 2 ** 20} MiB (is it a data file? give it as a task's input_file)")
        # (utf-8-sig: the byte-order mark a spreadsheet writes at the start of a CSV file is dropped)
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SpecError(f"sweep file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read sweep file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    first = next((line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")),
                 "")
    if not first:
        raise SpecError(f"sweep file {path} holds no task: write one JSON object (or CSV row) per task")
    suffix = path.suffix.lower()
    json_lines = suffix in _JSON_SUFFIXES or (suffix not in _CSV_SUFFIXES and first.startswith("{"))
    rows = _json_rows(path, text) if json_lines else _csv_rows(path, text)
    if len(rows) > MAX_TASKS:
        raise SpecError(f"sweep file {path} has {len(rows):,} tasks; a sweep holds at most {MAX_TASKS:,}: split it")
    tasks = [Task(index, line, _checked(path, line, values)) for index, (line, values) in enumerate(rows)]
    named: dict[str, int] = {}
    for task in tasks:
        if "name" in task.values and named.setdefault(task.name, task.line) != task.line:
            raise SpecError(f"{path}, line {task.line}: name {task.name!r} is the name of line {named[task.name]} "
                            "too; a name tells a task apart")
    return tasks


def _json_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            values = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path}, line {number}: not a JSON object ({exc.msg} at column {exc.colno})") from None
        if not isinstance(values, dict):
            raise SpecError(f"{path}, line {number}: a task is a JSON object such as {{\"iterations\": 5}}, not "
                            f"{type(values).__name__}")
        rows.append((number, values))
    return rows


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    rows = []
    for cells in reader:
        number = reader.line_num
        if not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
            continue
        if header is None:
            header = [c.strip() for c in cells]
            for column in header:
                if column not in KEYS and not (column.startswith("env.") and column != "env.") or column == "env":
                    raise SpecError(f"{path}, line {number}: unknown column {column!r}; the columns are "
                                    f"{', '.join(k for k in KEYS if k != 'env')} and env.NAME")
            continue
        if len(cells) != len(header):
            raise SpecError(f"{path}, line {number}: {len(cells)} cells, but the header has {len(header)} columns")
        values: dict[str, Any] = {}
        for column, cell in zip(header, cells, strict=False):
            if not cell.strip():
                continue
            if column.startswith("env."):
                values.setdefault("env", {})[column[4:]] = cell
            elif column == "data":
                try:
                    values["data"] = json.loads(cell)
                except json.JSONDecodeError as exc:
                    raise SpecError(f"{path}, line {number}: data is not JSON ({exc.msg})") from None
            elif column in ("iterations", "processes"):
                try:
                    values[column] = int(cell)
                except ValueError:
                    raise SpecError(f"{path}, line {number}: {column} must be {KEYS[column]}, not {cell!r}") from None
            else:
                values[column] = cell.strip()
        rows.append((number, values))
    if header is not None and not rows:
        raise SpecError(f"sweep file {path} has a header but no task")
    return rows


#: the kind of each value of a task, as :func:`read` leaves it (``data`` is JSON text)
_KINDS: dict[str, type] = {"name": str, "data": str, "iterations": int, "input_file": str, "attr": str, "env": dict,
                           "mapping": str, "processes": int}


def well_formed(values: dict) -> bool:
    """Whether ``values`` (a task of a sweep's record, read back) has only its keys, each of its kind."""
    return all(k in _KINDS and type(v) is _KINDS[k] for k, v in values.items()) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in values.get("env", {}).items())


def _checked(path: Path, line: int, values: dict) -> dict:
    """``values`` with each key checked, ``data`` kept as the JSON text a job's ``-d`` takes."""
    where = f"{path}, line {line}"
    for key in values:
        if key not in KEYS:
            raise SpecError(f"{where}: unknown key {key!r}; a task may set {', '.join(KEYS)} (the job's resources "
                            "are the same for every task: give them on the command line)")
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key == "name":
            if not isinstance(value, str) or not _NAME.fullmatch(value):
                raise SpecError(f"{where}: name must be {KEYS['name']}, not {value!r:.60}")
        elif key in ("iterations", "processes"):
            low = 1 if key == "processes" else 0
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= settings.MAX_COUNT:
                raise SpecError(f"{where}: {key} must be {KEYS[key]} from {low} to {settings.MAX_COUNT:,}, "
                                f"not {value!r:.60}")
        elif key == "data":
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as exc:
                    raise SpecError(f"{where}: data is not JSON ({exc.msg})") from None
            if not isinstance(value, dict):
                raise SpecError(f"{where}: data must be {KEYS['data']}, not {value!r:.60}")
            value = json.dumps(value)
        elif key == "env":
            if not isinstance(value, dict) or not value:
                raise SpecError(f"{where}: env must be {KEYS['env']}, not {value!r:.60}")
            for name, text in value.items():
                if not _ENV_NAME.fullmatch(name):
                    raise SpecError(f"{where}: env name {name!r} is not a variable name (letters, digits and _, "
                                    "not starting with a digit)")
                if name.startswith(("D4P_", "SLURM_", "PBS_", "OMPI_", "PMI")) or name in _RESERVED_ENV:
                    raise SpecError(f"{where}: env {name} is the job's own (d4p-hpc's, the scheduler's, MPI's or the "
                                    "shell's): a task's values are exported as written, never expanded; change it "
                                    "for every task with --setup 'export NAME=...'")
                if not isinstance(text, str):
                    raise SpecError(f"{where}: env {name} must be a string, not {text!r:.60}")
                # (measured as the job script's line that exports it, quotes included)
                if "\0" in text or len(f"export {name}={shlex.quote(text)}") > MAX_ENV_CHARS:
                    raise SpecError(f"{where}: env {name} must be at most {MAX_ENV_CHARS:,} characters with its "
                                    "name and quotes (a line of the job script exports it), without NUL")
        elif key == "input_file":
            if not isinstance(value, str) or not value.strip():
                raise SpecError(f"{where}: input_file must be {KEYS['input_file']}, not {value!r:.60}")
            value = os.path.abspath(os.path.join(path.parent, value))
            if os.path.isdir(value):
                raise SpecError(f"{where}: input file {value} is a directory; give a file")
            if not os.path.isfile(value):
                raise SpecError(f"{where}: input file {value} does not exist")
        elif not isinstance(value, str) or not value.strip():  # attr, mapping
            raise SpecError(f"{where}: {key} must be {KEYS[key]}, not {value!r:.60}")
        out[key] = value
    return out
