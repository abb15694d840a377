"""Meta-tests of the hook specifications: typed, documented, with an example, one per kind."""

from __future__ import annotations

import inspect

import pytest

import uisbench
from uisbench import hookspecs
from uisbench.types import KINDS, SPEC_TYPES

HOOKS = [f"uisbench_{kind}" for kind in KINDS]


def test_one_hook_per_kind():
    declared = sorted(n for n, f in vars(hookspecs).items() if n.startswith("uisbench_") and callable(f))
    assert declared == sorted(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_marked_typed_and_documented(hook):
    func = getattr(hookspecs, hook)
    assert hasattr(func, "uisbench_spec"), f"{hook} lacks @hookspec"
    doc = inspect.getdoc(func)
    assert doc and "Example::" in doc and "@uisbench.hookimpl" in doc and "versionadded" in doc
    spec_type = SPEC_TYPES[hook.removeprefix("uisbench_")].__name__
    assert spec_type in str(inspect.signature(func).return_annotation)


@pytest.mark.parametrize("kind", KINDS)
def test_hook_roundtrip_through_manager(kind):
    """A plugin implementing the hook of each kind is found, attributed and built lazily."""
    built = []

    def factory(**params):
        built.append(params)
        return object()

    spec_type = SPEC_TYPES[kind]
    extra = {}

    class Plugin:
        pass

    def impl():
        yield spec_type(name=f"t-{kind}", description="Test.", factory=factory, params=(uisbench.Param("p", "int", 1),), **extra)

    setattr(Plugin, f"uisbench_{kind}", staticmethod(uisbench.hookimpl(impl)))
    host = uisbench.get_plugin_manager(strict=True, load_entry_points=False, plugins=[("p", Plugin())])
    spec = host.spec(kind, f"t-{kind}")
    assert built == []  # nothing built until asked
    spec.build(p=3)
    assert built == [{"p": 3}]
    assert host.provider(kind, f"t-{kind}").name == "p"


def test_public_api_facade():
    for name in uisbench.__all__:
        assert hasattr(uisbench, name), name
    assert not any(n.startswith("_") and n != "__version__" for n in uisbench.__all__)
