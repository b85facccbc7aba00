"""README.md, "From Python": its code blocks, run as written, in order, in one fresh Python
process, from a folder holding the repository's examples/ (the top folder of a clone, as the
section says), on the local scheduler. A block that no longer runs, or whose assertions fail,
fails this test; so the section cannot drift from the API."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers.runs import REPO

pytestmark = pytest.mark.xdist_group("readme-python")


def blocks() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## From Python\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_section_has_code_to_run():
    found = blocks()
    assert len(found) >= 3 and any("d4p_hpc.submit(" in b for b in found) and \
        any("d4p_hpc.attach(" in b for b in found) and any("d4p_hpc.run(" in b for b in found), found


def test_the_from_python_blocks_run_as_written(tmp_path, isolated_config):
    shutil.copytree(REPO / "examples", isolated_config / "examples")
    script = isolated_config / "readme_blocks.py"
    script.write_text("\n".join(blocks()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("D4P_HPC_")}
    done = subprocess.run([sys.executable, str(script)], cwd=isolated_config, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    # it left one job and one run, both complete, under ./d4p-results
    made = sorted(p.name for p in (isolated_config / "d4p-results").iterdir() if not p.is_symlink())
    assert len(made) == 2 and any(n.startswith("word_count-local-") for n in made), made
    assert (isolated_config / "d4p-results" / next(n for n in made if "-local-" in n) / "report.html").is_file()
