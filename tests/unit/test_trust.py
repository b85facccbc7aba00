"""d4p_hpc.trust: which files may be unpickled, and pickles read as data (counted, or built from
plain data only) without running anything they name."""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import stat
from pathlib import Path

import pytest

from d4p_hpc import trust
from d4p_hpc.errors import UntrustedFileError, UsageError
from d4p_hpc.trust import DataUnpickler, NotData, open_checked, open_private, require_private, scan_pickles

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="making a file of another user needs root")
NOBODY = 65534


@pytest.fixture
def part(tmp_path) -> Path:
    """``project/results/checkpoints/000001/part-00000.pkl``, private, in a world-writable sticky
    project folder (what is above the results directory is not its business)."""
    project = tmp_path / "project"
    project.mkdir()
    os.chmod(project, 0o1777)
    directory = project / "results" / "checkpoints" / "000001"
    directory.mkdir(parents=True)
    for d in (directory, directory.parent, directory.parent.parent):
        os.chmod(d, 0o700)
    path = directory / "part-00000.pkl"
    path.write_bytes(pickle.dumps({"format": 2}))
    os.chmod(path, 0o600)
    return path


def refusal(path: Path, *words: str) -> str:
    with pytest.raises(UntrustedFileError) as caught:
        require_private(path, "checkpoint part")
    message = str(caught.value)
    assert isinstance(caught.value, UsageError) and "\n" not in message
    assert message.startswith(f"refusing to load checkpoint part {path}: it ")
    for word in words:
        assert word in message, message
    return message


def test_your_private_file_is_opened_and_read(part):
    with open_private(part, "checkpoint part") as fh:
        assert pickle.load(fh) == {"format": 2}


@pytest.mark.parametrize(("mode", "who"), [(0o620, "group"), (0o602, "others"), (0o666, "group and others")])
def test_a_file_others_can_write_is_refused(part, mode, who):
    os.chmod(part, mode)
    refusal(part, f"is writable by {who} (mode {mode:04o}, owner ", f"chmod go-w {part}")


@pytest.mark.parametrize("level", [0, 1, 2])
def test_a_directory_others_can_write_from_the_results_directory_down_is_refused(part, level):
    directory = part.parents[level]
    os.chmod(directory, 0o2770)  # a setgid group folder
    refusal(part, f"is in {directory}, which is writable by group (mode 2770", f"chmod go-w {directory}")


@as_root
def test_a_file_or_directory_of_another_user_is_refused(part):
    os.chown(part, NOBODY, -1)
    refusal(part, "was written by user ", "(mode 0600)", "copy the results you trust into a directory of your own")
    os.chown(part, 0, -1)
    os.chown(part.parent, NOBODY, -1)
    refusal(part, f"is in {part.parent}, a directory of user ")


def test_links_below_the_results_directory_are_refused_above_it_followed(part, tmp_path):
    elsewhere = tmp_path / "elsewhere.pkl"
    elsewhere.write_bytes(part.read_bytes())
    os.chmod(elsewhere, 0o600)
    link = part.with_name("part-00001.pkl")
    link.symlink_to(elsewhere)
    refusal(link, "is a symbolic link")
    moved = part.parent.with_name("000002")
    part.parent.rename(moved)
    part.parent.symlink_to(moved)
    refusal(part, f"is reached through the symbolic link {part.parent}")
    # the results directory itself may be a link (a successor job's id names its run's directory)
    results = part.parents[2]
    alias = results.with_name("alias")
    alias.symlink_to(results)
    require_private(alias / "checkpoints" / "000002" / "part-00000.pkl", "checkpoint part")


def test_a_fifo_is_refused_without_blocking(part):
    fifo = part.with_name("part-00002.pkl")
    os.mkfifo(fifo, 0o600)
    refusal(fifo, "is not a regular file")


def test_open_checked_says_why_a_file_fails_and_opens_it_for_plain_data(part):
    fh, refused = open_checked(part, "output part")
    fh.close()
    assert refused is None
    os.chmod(part, 0o660)
    fh, refused = open_checked(part, "output part")
    with fh:
        assert refused is not None and refused.why.startswith("is writable by group")
        assert DataUnpickler(fh).load() == {"format": 2}


# --- pickles as data ------------------------------------------------------------------------------
PLAIN = [None, True, 7, -2**80, 1.5, complex(1, -2), "é" * 3, ("t", 1), [1, [2]], {"k": {1, 2}}, frozenset({3}),
         {b"x", b"y"}, bytearray(b"ab"), b"\x00" * 70000, "s" * 70000]


class Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_is_built_in_every_protocol(protocol):
    # bytes are pickled through _codecs.encode before protocol 3: not plain data, refused
    values = [v for v in PLAIN if protocol >= 3 or not isinstance(v, (bytes, bytearray, set, frozenset))]
    for value in values:
        assert DataUnpickler(io.BytesIO(pickle.dumps(value, protocol=protocol))).load() == value


@pytest.mark.parametrize("value", [os.system, stat.S_ISREG, Path("x"), Exception("x")])
def test_anything_naming_a_class_or_function_is_refused_before_it_is_looked_up(value, tmp_path):
    with pytest.raises(NotData) as caught:
        DataUnpickler(io.BytesIO(pickle.dumps(value))).load()
    assert "not plain data" in str(caught.value)
    marker = tmp_path / "PWNED"
    with pytest.raises(NotData, match="builtins.exec"):
        DataUnpickler(io.BytesIO(pickle.dumps(Planted(marker)))).load()
    assert not marker.exists()


def test_an_extension_code_is_refused_like_the_global_it_stands_for():
    copyreg.add_extension("posix", "system", 0x7FFFFF00)
    try:
        data = pickle.dumps(os.system, protocol=2)
    finally:
        copyreg.remove_extension("posix", "system", 0x7FFFFF00)
    assert b"posix" not in data
    copyreg.add_extension("posix", "system", 0x7FFFFF00)
    try:
        with pytest.raises(NotData, match="posix.system"):
            DataUnpickler(io.BytesIO(data)).load()
    finally:
        copyreg.remove_extension("posix", "system", 0x7FFFFF00)


def test_pickles_are_counted_without_building_anything(tmp_path):
    path = tmp_path / "part-00000.pickle"
    marker = tmp_path / "PWNED"
    blobs = [pickle.dumps(v, protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1) for v in PLAIN
             if p >= 3 or not isinstance(v, (bytes, bytearray))]
    blobs.append(pickle.dumps(Planted(marker)))
    data = b"".join(blobs)
    path.write_bytes(data)
    with open(path, "rb") as fh:
        assert scan_pickles(fh) == (len(blobs), len(data))
        assert scan_pickles(fh, len(blobs[0])) == (len(blobs) - 1, len(data))
    assert not marker.exists()
    # cut short: the whole ones before the cut, and where the last ends
    path.write_bytes(data[:-3])
    with open(path, "rb") as fh:
        assert scan_pickles(fh) == (len(blobs) - 1, len(data) - len(blobs[-1]))
    path.write_bytes(blobs[0] + b"\xee garbage")
    with open(path, "rb") as fh:
        assert scan_pickles(fh) == (1, len(blobs[0]))
    path.write_bytes(b"")
    with open(path, "rb") as fh:
        assert scan_pickles(fh) == (0, 0)


def test_pickles_are_counted_across_the_chunks_the_file_is_read_in(tmp_path, monkeypatch):
    """Read in chunks of 64 bytes: opcodes, length prefixes and protocol 0 lines cut by a chunk's end."""
    monkeypatch.setattr(trust, "_CHUNK", 64)
    blobs = [pickle.dumps(value, protocol=k % 6) for k, value in enumerate(
        [k if k % 3 else ("w" * (k % 40), k, 1.5) for k in range(600)])]
    path = tmp_path / "part-00000.pickle"
    path.write_bytes(b"".join(blobs))
    ends = [sum(map(len, blobs[:k + 1])) for k in range(len(blobs))]
    for cut in (ends[-1], ends[-1] - 1, ends[300] + 5, ends[0]):
        path.write_bytes(b"".join(blobs)[:cut])
        whole = sum(1 for end in ends if end <= cut)
        with open(path, "rb") as fh:
            assert scan_pickles(fh) == (whole, ends[whole - 1])
