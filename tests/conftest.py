"""Shared fixtures: a fresh plugin host per test, fake entry points, tiny CPU settings."""

from __future__ import annotations

import os

import pytest

from helpers import FIXTURES, REPO_ROOT  # noqa: F401  (re-exported for tests)

# Tests share 2 cores with other work; one thread each is faster than oversubscription. A run started
# with OMP_NUM_THREADS set (`OMP_NUM_THREADS=2 make test`) keeps it, torch included.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _threads() -> int:
    """The run's thread count: OMP_NUM_THREADS (its first level when nested, e.g. "2,1"), else 1."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"].split(",")[0]))
    except ValueError:
        return 1


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    torch.set_num_threads(_threads())
    yield


@pytest.fixture
def host():
    """A fresh plugin host with every installed plugin (built-ins through their entry points).

    Strict when UISBENCH_STRICT_PLUGINS=1 (as `make test` and CI run), so a broken built-in fails.
    """
    import warnings

    import uisbench

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return uisbench.host.load_plugins()


@pytest.fixture
def registry(host):
    import uisbench

    return uisbench.host.load_registry([], host)


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Call with a list of FakeEntryPoint to add them to the real ones."""
    from uisbench import _manager

    real = list(_manager._entry_points())

    def install(extra, keep_real: bool = True):
        monkeypatch.setattr(_manager, "_entry_points", lambda: (real if keep_real else []) + list(extra))

    return install
