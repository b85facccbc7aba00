"""d4p_hpc.settings: each knob in the environment read in one place, a bad value refused in one
line that names it and says what to give; and ``--checkpoint-every`` a finite number in range."""

from __future__ import annotations

import math

import pytest

from d4p_hpc import settings
from d4p_hpc.errors import UsageError

KNOBS = [(settings.SAMPLE_SECONDS, settings.sample_seconds, 1.0, "0.2", 0.2),
         (settings.PROGRESS_SECONDS, settings.progress_seconds, 30.0, "0.5", 0.5),
         (settings.CLAIM_IDLE, settings.claim_idle, 10.0, "1.5", 1.5),
         (settings.MAX_PROCESSES, settings.max_processes, None, "64", 64),
         (settings.MAX_BACKLOG, settings.max_backlog, None, "2000", 2000),
         (settings.UNIT_SECONDS, settings.unit_seconds, None, "0.4", 0.4)]


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    for name, *_ in KNOBS:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("name", "read", "default", "text", "value"), KNOBS, ids=[k[0] for k in KNOBS])
def test_unset_gives_the_default_and_a_good_value_is_taken(monkeypatch, name, read, default, text, value):
    if default is not None:
        assert read() == default
    monkeypatch.setenv(name, text)
    assert read() == value
    monkeypatch.setenv(name, "")  # set but empty: as unset
    assert read() == (default if default is not None else read())


@pytest.mark.parametrize("bad", ["abc", "nan", "inf", "-1", "1e400", "0x10"])
@pytest.mark.parametrize(("name", "read", "default", "text", "value"), KNOBS, ids=[k[0] for k in KNOBS])
def test_a_bad_value_is_one_line_naming_it(monkeypatch, name, read, default, text, value, bad):
    monkeypatch.setenv(name, bad)
    with pytest.raises(UsageError) as caught:
        read()
    message = str(caught.value)
    assert message.startswith(f"{name}={bad}: ") and "\n" not in message
    assert "unset it or give e.g. " in message


def test_sampling_is_off_at_0_and_a_spinning_interval_is_refused(monkeypatch):
    monkeypatch.setenv(settings.SAMPLE_SECONDS, "0")
    assert settings.sample_seconds() == 0
    monkeypatch.setenv(settings.SAMPLE_SECONDS, "0.0001")
    with pytest.raises(UsageError, match="must be 0 \\(no samples\\) or from 0.05 to 3600"):
        settings.sample_seconds()


def test_check_reads_every_knob(monkeypatch):
    settings.check()
    monkeypatch.setenv(settings.CLAIM_IDLE, "soon")
    with pytest.raises(UsageError, match="D4P_HPC_CLAIM_IDLE=soon: not a number of seconds; unset it or give e.g. 10"):
        settings.check()


def test_flags_and_the_job_id(monkeypatch):
    monkeypatch.delenv(settings.QUIET, raising=False)
    monkeypatch.delenv(settings.JOB_ID, raising=False)
    assert not settings.quiet() and settings.job_id() is None
    monkeypatch.setenv(settings.QUIET, "1")
    monkeypatch.setenv(settings.JOB_ID, "local-1234")
    assert settings.quiet() and settings.job_id() == "local-1234"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0.5, 0, -1, 1e308, 30 * 86400 + 1])
def test_checkpoint_every_must_be_finite_and_in_range(value):
    with pytest.raises(UsageError) as caught:
        settings.checkpoint_every(value)
    assert str(caught.value).startswith(f"--checkpoint-every {value:g}: give a number of seconds from 1 to 2592000")


@pytest.mark.parametrize("value", [1, 600, 30 * 86400])
def test_checkpoint_every_in_range_is_taken(value):
    assert settings.checkpoint_every(value) == value


@pytest.mark.parametrize("text", ["nan", "inf", "1e308", "0.5"])
def test_run_refuses_a_checkpoint_interval_out_of_range_before_loading_the_graph(cli, text, tmp_path):
    result = cli("run", tmp_path / "missing.py", "--checkpoint-every", text)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith(f"Error: --checkpoint-every {float(text):g}: ")
