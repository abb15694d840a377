"""Conformance of every installed plugin spec, whatever its kind (kind-specific behaviour is tested
in the conformance tests of each kind: test_backbones, test_maskers, ...). Grows as plugins land."""

from __future__ import annotations

import warnings

import pytest

import uisbench
from uisbench.types import KINDS, SPEC_TYPES


def _all_specs():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        host = uisbench.get_plugin_manager()
    return [pytest.param(kind, spec, id=f"{kind}:{name}") for kind in KINDS for name, spec in host.specs(kind).items()]


SPECS = _all_specs()


def test_every_kind_has_a_builtin():
    kinds = {p.values[0] for p in SPECS}
    assert kinds == set(KINDS), f"kinds without any plugin: {set(KINDS) - kinds}"


@pytest.mark.parametrize("kind, spec", SPECS)
def test_spec_record_is_well_formed(kind, spec):
    assert isinstance(spec, SPEC_TYPES[kind])
    assert spec.name == spec.name.lower()
    assert spec.description.strip() and "\n" not in spec.description.strip()
    for param in spec.params:
        if not param.required:
            assert param.check(param.default) is None, f"{spec.name}.{param.name}: default {param.default!r} fails its own type"
        assert param.help, f"{spec.name}.{param.name} has no help text"
    if kind == "metrics":
        assert spec.needs and spec.stages
    if kind == "datasets":
        assert spec.splits


@pytest.mark.parametrize("kind, spec", SPECS)
def test_every_registry_entry_validates(kind, spec):
    host = uisbench.get_plugin_manager()
    registry = uisbench.load_registry([], host)
    for entry in registry.entries[kind].values():
        if entry.plugin == spec.name:
            params = registry.resolved_params(entry, host)
            assert set(params) <= {p.name for p in spec.params}
