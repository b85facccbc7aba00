"""How a job shows itself while it is followed: the live line of ``submit --wait``, ``wait`` and
:meth:`d4p_hpc.Job.wait` (redrawn in place on a terminal, updated in place in a notebook, a plain
line now and then in a pipe), and the HTML status table of a job in a notebook.

A notebook is told by its kernel (ipykernel imported, and IPython's shell a kernel's): then the
line is an IPython display that is updated, which needs no widget library.
"""

from __future__ import annotations

import html
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

from d4p_hpc.jobs.progress import Display, Progress
from d4p_hpc.units import clock



class Shown(Protocol):
    """What is shown of a job (a :class:`d4p_hpc.api.job.Job`)."""

    @property
    def name(self) -> str: ...
    @property
    def scheduler(self) -> str: ...
    @property
    def directory(self) -> Path: ...


class Status(Protocol):
    """What is shown of a job's status (a :class:`d4p_hpc.api.job.Status`)."""

    @property
    def job(self) -> Shown: ...
    @property
    def id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def elapsed(self) -> float | None: ...


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel."""
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class Live:
    """The live line of a job being followed: its state, elapsed time, and while it runs its progress
    (:class:`~d4p_hpc.jobs.progress.Progress`), else the reason of its state."""

    def __init__(self, directory: Path, stream: TextIO | None = None) -> None:
        self.progress = Progress(directory)
        self.notebook = stream is None and in_notebook()
        self.display = None if self.notebook else Display(stream or sys.stderr)
        self.handle: Any = None
        self.last: Status | None = None
        self.shown = ""

    def line(self, current: Status, room: int | None) -> str:
        elapsed = clock(current.elapsed) if current.elapsed is not None else "--:--:--"
        prefix = f"{current.state:<9} {elapsed}  "
        detail = self.progress.describe(None if room is None else max(1, room - len(prefix))) \
            if current.state == "RUNNING" else current.reason
        return f"{prefix}{detail}".rstrip()

    def update(self, current: Status) -> None:
        """Show ``current`` (a state that changed: at once, even as a plain line)."""
        changed, self.last = self.last is None or current.state != self.last.state, current
        if self.display is not None:
            self.display.show(self.line(current, self.display.room(0)), force=changed)
            return
        from IPython.display import HTML, display

        text = self.line(current, None)
        if text == self.shown:
            return
        self.shown = text
        shown = HTML(f"<pre style='margin:0'>{html.escape(text)}</pre>")
        if self.handle is None:
            self.handle = display(shown, display_id=True)
        else:
            self.handle.update(shown)

    def clear(self) -> None:
        """Remove a terminal's live line, so that what is printed next starts a clean line (a
        notebook's line stays: it is the record of the job's end)."""
        if self.display is not None:
            self.display.clear()

    def close(self) -> None:
        self.clear()


def status_table(statuses: Sequence[Status]) -> str:
    """An HTML table of jobs: id, name, scheduler, state, elapsed time, reason, directory."""
    rows = []
    for current in statuses:
        job = current.job
        elapsed = clock(current.elapsed) if current.elapsed is not None else "-"
        cells = (current.id, job.name, job.scheduler, current.state, elapsed, current.reason or "-",
                 str(job.directory))
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("job", "name", "scheduler", "state", "elapsed", "reason", "directory"))
    return f"<table class='d4p-hpc-jobs'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
