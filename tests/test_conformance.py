"""Conformance of every installed plugin spec, whatever its kind (kind-specific behaviour is tested
in the conformance tests of each kind: test_backbones, test_maskers, ...). Grows as plugins land."""

from __future__ import annotations

import warnings

import pytest

import uisbench
from uisbench.types import KINDS


def _all_specs():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        host = uisbench.host.load_plugins()
    return [pytest.param(kind, spec, id=f"{kind}:{name}") for kind in KINDS for name, spec in host.specs(kind).items()]


SPECS = _all_specs()


def test_every_kind_has_a_builtin():
    kinds = {p.values[0] for p in SPECS}
    assert kinds == set(KINDS), f"kinds without any plugin: {set(KINDS) - kinds}"


@pytest.mark.parametrize("kind, spec", SPECS)
def test_spec_record_is_well_formed(kind, spec):
    """The spec rules of uisbench.testing (record type, help texts, defaults within their own Param,
    numeric parameters bounded; a ViT's layer and normalisation mean are unbounded on purpose)."""
    import uisbench.testing

    uisbench.testing.check_spec(kind, spec, unbounded=("layer", "mean") if kind == "backbones" else ())
    if kind == "metrics":
        assert spec.needs and spec.stages
    if kind == "datasets":
        assert spec.splits


@pytest.mark.parametrize("kind, spec", SPECS)
def test_every_shipped_entry_builds_or_says_why(kind, spec, host, registry, tmp_path, monkeypatch):
    """The registry's parameters are what the factories take: every shipped entry of the plugin builds,
    or fails only for a reason outside the code and the entry (weights or dataset files not on this
    machine), with uisbench's error saying so."""
    import numpy as np
    from PIL import Image

    from uisbench.types import REQUIRED

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setenv("UISBENCH_IMAGES_ROOT", str(tmp_path))  # the `images` entry is a template without a root

    entries = [e for e in registry.entries[kind].values() if e.plugin == spec.name]
    for entry in entries:
        params = {k: v for k, v in registry.resolved_params(entry, host).items() if v is not REQUIRED}
        extra = {"split": "val"} if kind == "datasets" else {}
        if kind == "students":
            extra = {"backbone": host.spec("backbones", "pixels").build(size=32, patch_size=8)}
        try:
            built = spec.factory(**params, **extra)
        except (uisbench.BackboneUnavailable, uisbench.DataError) as err:  # no weights / no data files here
            assert str(err).strip(), entry.name
            continue
        assert built is not None, entry.name
