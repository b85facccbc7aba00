"""The output sink: the items of unconnected outputs, in this process's part files, made durable up
to what a checkpoint records, and cutting a part back to its last whole item when a write failed."""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from d4p_hpc import durable
from d4p_hpc.results import Layout, make_private_dir, output_dir

#: how long buffered items may wait for a flush to the part files while items keep coming
FLUSH_SECONDS = 1.0


def _json_safe(o: Any) -> bool:
    t = type(o)
    if t is str or t is int or t is bool or o is None:
        return True
    if t is float:
        return math.isfinite(o)
    if t is list or t is tuple:
        return all(_json_safe(x) for x in o)
    if t is dict:
        return all(type(k) is str and _json_safe(v) for k, v in o.items())
    return False


class Sink:
    """Writes the items of unconnected outputs to this process's part files."""

    def __init__(self, results: Path, proc: int) -> None:
        self.results = results
        self.proc = proc
        self._files: dict[tuple[str, str, str], Any] = {}
        # bytes of each part known to be on disk: where a write that failed (a full disk) is cut back to
        self._durable: dict[tuple[str, str, str], int] = {}
        # parts created since the last checkpoint (their directory entries are not on disk yet), and
        # the size of each at its last fsync
        self._unsynced: set[tuple[str, str, str]] = set()
        self._synced: dict[str, int] = {}
        self._last_flush = time.monotonic()
        self._writes = 0

    def _file(self, pe: str, output: str, kind: str) -> Any:
        fh = self._files.get((pe, output, kind))
        if fh is None:
            make_private_dir(output_dir(self.results, pe, output))
            fd = os.open(self._path((pe, output, kind)), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            fh = os.fdopen(fd, "a" if kind == "jsonl" else "ab")
            self._files[(pe, output, kind)] = fh
            self._unsynced.add((pe, output, kind))
        return fh

    def _path(self, key: tuple[str, str, str]) -> Path:
        pe, output, kind = key
        return output_dir(self.results, pe, output) / f"part-{self.proc:05d}.{kind}"

    def write(self, pe: str, output: str, data: Any) -> None:
        if _json_safe(data):
            self._file(pe, output, "jsonl").write(json.dumps(data) + "\n")
        else:
            pickle.dump(data, self._file(pe, output, "pickle"), protocol=5)
        self._writes += 1
        if self._writes & 255 == 0 and time.monotonic() - self._last_flush > FLUSH_SECONDS:
            self.flush()

    @property
    def written(self) -> int:
        """Items written so far (read by the sampler)."""
        return self._writes

    def flush(self) -> None:
        """Push buffered items to the files, so a killed job keeps what it produced."""
        for key, fh in self._files.items():
            fh.flush()
            self._durable[key] = os.fstat(fh.fileno()).st_size
        self._last_flush = time.monotonic()

    def abandon(self) -> None:
        """After a write failed (a full disk, a quota): cut every part back to its last whole item
        and close it without writing what is still buffered, so what is kept can be read."""
        for key, fh in self._files.items():
            raw = fh.buffer.raw if hasattr(fh, "buffer") else fh.raw
            with suppress(OSError, ValueError):
                os.ftruncate(raw.fileno(), _whole_items(self._path(key), key[2], self._durable.get(key, 0)))
                raw.close()
        self._files.clear()

    def sizes(self) -> dict[str, int]:
        """Flush, then give the size of each part file, by path relative to the results directory."""
        self.flush()
        return {str(self._path(key).relative_to(self.results)): os.fstat(fh.fileno()).st_size
                for key, fh in self._files.items()}

    def checkpoint_sizes(self) -> dict[str, int]:
        """:meth:`sizes`, on disk (fsynced: a checkpoint must never record bytes a crash can lose), and
        the size of this process's part files it has not written to in this run: those of an earlier
        segment, which nobody else writes (a part file has one process number)."""
        sizes = self.sizes()
        for key, fh in self._files.items():
            rel = str(self._path(key).relative_to(self.results))
            if self._synced.get(rel) != sizes[rel]:
                durable.fsync(fh.fileno(), self._path(key))
                self._synced[rel] = sizes[rel]
        for directory in sorted({self._path(key).parent for key in self._unsynced}):
            durable.sync_dir(directory)
        if self._unsynced:
            durable.sync_dir(Layout(self.results).outputs)
            self._unsynced.clear()
        for path in Layout(self.results).outputs.glob(f"*/part-{self.proc:05d}.*"):
            sizes.setdefault(str(path.relative_to(self.results)), path.stat().st_size)
        return sizes

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()


def _whole_items(path: Path, kind: str, start: int) -> int:
    """Where the last whole item of a part file ends, reading on from ``start`` (known whole)."""
    end = start
    with open(path, "rb") as fh:
        fh.seek(start)
        if kind == "jsonl":
            while chunk := fh.read(1 << 20):
                if b"\n" in chunk:
                    end = fh.tell() - len(chunk) + chunk.rindex(b"\n") + 1
            return end
        while True:
            try:
                pickle.load(fh)
            except Exception:  # a frame cut short: anything may be raised
                return end
            end = fh.tell()
