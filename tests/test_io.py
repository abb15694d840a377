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


def test_json_default_is_one_documented_rule():
    """uisbench.io.json_default: sets sorted, numpy/torch scalars and arrays as numbers and lists, paths as
    strings, dataclasses as dicts; anything else a TypeError naming its type (no repr or str that could
    differ between runs), the rule of cache keys, results.json, atomic_write_json and the student's provenance."""
    import dataclasses
    import json
    from pathlib import Path

    import numpy as np
    import torch

    from uisbench.io import json_default

    @dataclasses.dataclass
    class Point:
        x: int
        where: Path

    value = {"s": {3, 1, 2}, "f": frozenset({"b", "a"}), "n": np.float32(0.5), "i": np.int64(7), "a": np.arange(3),
             "t": torch.tensor([[1.5, 2.0]]), "t0": torch.tensor(4), "p": Path("/x/y"), "d": Point(1, Path("z"))}
    assert json.loads(json.dumps(value, default=json_default)) == {
        "s": [1, 2, 3], "f": ["a", "b"], "n": 0.5, "i": 7, "a": [0, 1, 2], "t": [[1.5, 2.0]], "t0": 4, "p": "/x/y",
        "d": {"x": 1, "where": "z"}}
    for unknown in (object(), torch.float32, b"bytes"):
        with pytest.raises(TypeError, match=type(unknown).__qualname__):
            json.dumps({"k": unknown}, default=json_default)
