"""Shared fixtures: a fresh plugin host per test, fake entry points, tiny CPU settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Tests share 2 cores with other work; one thread each is faster than oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _torch_single_thread():
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture
def host():
    """A fresh plugin host with every installed plugin (built-ins through their entry points)."""
    import uisbench

    return uisbench.get_plugin_manager(strict=True)


@pytest.fixture
def registry(host):
    import uisbench

    return uisbench.load_registry([], host)


class FakeDist:
    def __init__(self, name: str, version: str = "1.0") -> None:
        self.metadata = {"Name": name}
        self.version = version


class FakeEntryPoint:
    """A stand-in for importlib.metadata.EntryPoint whose ``load`` returns an object or raises."""

    def __init__(self, name: str, obj=None, error: Exception | None = None, dist: str = "uisbench-fake") -> None:
        self.name = name
        self.value = f"fake:{name}"
        self.dist = FakeDist(dist)
        self._obj = obj
        self._error = error

    def load(self):
        if self._error is not None:
            raise self._error
        return self._obj


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Call with a list of FakeEntryPoint to add them to the real ones."""
    from uisbench import _manager

    real = list(_manager._entry_points())

    def install(extra, keep_real: bool = True):
        monkeypatch.setattr(_manager, "_entry_points", lambda: (real if keep_real else []) + list(extra))

    return install
