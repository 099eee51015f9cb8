"""One atomic writer: a failure keeps the old result and leaves no temporary behind; modes follow the umask."""

from __future__ import annotations

import os
import stat

import pytest

from glm4voice.atomic import atomic_path, write_text


def test_file_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "result.txt"
    write_text(target, "first")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the second")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "first" and sorted(p.name for p in target.parent.iterdir()) == ["result.txt"]
    write_text(target, "second")
    assert target.read_text() == "second"


def test_modes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        with atomic_path(tmp_path / "run", folder=True) as tmp:
            (tmp / "w").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o755


def test_folders_and_no_overwrite(tmp_path):
    final = tmp_path / "step-1"
    with atomic_path(final, folder=True, overwrite=False) as tmp:
        (tmp / "weights").write_text("1")
    with pytest.raises(FileExistsError):
        with atomic_path(final, folder=True, overwrite=False):
            pass
    with pytest.raises(ValueError), atomic_path(final, folder=True) as tmp:
        (tmp / "weights").write_text("2")
        raise ValueError
    assert (final / "weights").read_text() == "1" and [p.name for p in tmp_path.iterdir()] == ["step-1"]
    with atomic_path(final, folder=True) as tmp:  # replacing a finished folder swaps it whole
        (tmp / "weights").write_text("3")
    assert (final / "weights").read_text() == "3" and [p.name for p in tmp_path.iterdir()] == ["step-1"]
