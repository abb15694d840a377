"""uisbench: score self-supervised vision backbones on unsupervised instance segmentation.

The public API. Plugins (built-in ones included) import only from here::

    import uisbench

    @uisbench.hookimpl
    def uisbench_backbones():
        yield uisbench.BackboneSpec(name="my-vit", description="...", factory=MyBackbone)

Nothing heavy is imported by this module: torch, timm and friends load inside plugin factories.
"""

from __future__ import annotations

import pluggy

from . import data, masks
from ._manager import PluginFailure, PluginHost, PluginInfo, get_plugin_manager
from .contracts import (
    Backbone,
    Dataset,
    EvalSample,
    FeatureMap,
    GroundTruth,
    ImageRecord,
    Masker,
    Metric,
    Prediction,
    Preprocessing,
    StageCost,
    Student,
)
from .errors import (
    BackboneUnavailable,
    ConfigError,
    DataError,
    IncompatibleError,
    PluginError,
    UisbenchError,
    UnknownNameError,
    raise_problems,
)
from .io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text
from .registry import BenchDefaults, Entry, Registry, load_registry
from .types import REQUIRED, BackboneSpec, DatasetSpec, MaskerSpec, MetricSpec, Param, StudentSpec

__version__ = "0.1.0"

#: Marker for plugin hook implementations: ``@uisbench.hookimpl``.
hookimpl = pluggy.HookimplMarker("uisbench")

__all__ = [
    "__version__",
    "hookimpl",
    # plugin records
    "Param",
    "REQUIRED",
    "BackboneSpec",
    "MaskerSpec",
    "StudentSpec",
    "MetricSpec",
    "DatasetSpec",
    # contracts and data records
    "Backbone",
    "Masker",
    "Student",
    "Metric",
    "Dataset",
    "ImageRecord",
    "GroundTruth",
    "Prediction",
    "Preprocessing",
    "FeatureMap",
    "EvalSample",
    "StageCost",
    # plugin manager and registry
    "get_plugin_manager",
    "PluginHost",
    "PluginInfo",
    "PluginFailure",
    "load_registry",
    "Registry",
    "Entry",
    "BenchDefaults",
    # errors
    "UisbenchError",
    "PluginError",
    "ConfigError",
    "UnknownNameError",
    "BackboneUnavailable",
    "DataError",
    "IncompatibleError",
    "raise_problems",
    # helpers
    "masks",
    "data",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
]
