"""Atomic writes: all or nothing, readable permissions, no temp files left behind."""

from __future__ import annotations

import os
import stat

import pytest

import uisbench


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "sub" / "results.json"
    uisbench.atomic_write_json(target, {"a": 1})
    uisbench.atomic_write_json(target, {"b": [1, 2]})
    assert target.read_text().strip().startswith("{") and '"b"' in target.read_text()
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]


def test_failure_inside_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "ckpt.bin"
    uisbench.atomic_write_bytes(target, b"old")
    with pytest.raises(KeyboardInterrupt):
        with uisbench.atomic_path(target) as tmp:
            tmp.write_bytes(b"half-writ")
            raise KeyboardInterrupt  # Ctrl-C in the middle of a write
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.bin"]


def test_files_follow_the_umask_not_mkstemp(tmp_path):
    old = os.umask(0o022)
    try:
        uisbench.atomic_write_text(tmp_path / "leaderboard.md", "x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "leaderboard.md").stat().st_mode)
    assert mode == 0o644
