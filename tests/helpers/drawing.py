"""Helpers shared by the tests of graph drawing (test_graph_command, test_compat_surface)."""

from __future__ import annotations

import os
import shutil
import struct

import pytest

#: Apply to tests that need Graphviz: skipped without ``dot``, except under CI where it must exist.
needs_dot = pytest.mark.skipif(shutil.which("dot") is None and not os.environ.get("CI"),
                               reason="Graphviz dot not installed (apt-get install graphviz)")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails unless ``data`` starts like a PNG file."""
    assert data[:8] == PNG_SIGNATURE, f"not a PNG: starts {data[:16]!r}"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13, (length, kind)
    width, height = struct.unpack(">II", data[16:24])
    assert width > 0 and height > 0, (width, height)
    return width, height
