"""Helpers shared by tests (importable because pyproject sets pytest `pythonpath = ["tests"]`)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


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
