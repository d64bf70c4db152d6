"""fs.aio-max-nr is raised (never lowered) at operator start: its default lets ~60 io=native disks start."""

from __future__ import annotations

from pathlib import Path

from k3svirt_operator.nodelimits import raise_aio_max_nr


def test_raised_when_lower_and_never_lowered(tmp_path: Path):
    f = tmp_path / "aio-max-nr"
    f.write_text("65536\n")
    assert raise_aio_max_nr(1 << 20, f) == 1 << 20 and f.read_text() == str(1 << 20)
    assert raise_aio_max_nr(1000, f) == 1 << 20 and f.read_text() == str(1 << 20)


def test_an_unreadable_limit_is_left_alone(tmp_path: Path):
    assert raise_aio_max_nr(1 << 20, tmp_path / "missing") is None
