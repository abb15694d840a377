"""uisbench: score self-supervised vision backbones on unsupervised instance segmentation.

The public API. Plugins (built-in ones included) import only from here::

    import uisbench

    @uisbench.hookimpl
    def uisbench_backbones():
        yield uisbench.BackboneSpec(name="my-vit", description="...", factory=MyBackbone)

Besides the records and contracts, plugins share these public helpers (import cost: none):

- :class:`GridBackbone`, :class:`GridMasker` and :mod:`uisbench.grid`: bases of patch-grid plugins;
- :mod:`uisbench.spectral`: affinity graphs, Fiedler solvers, normalised-cut scores;
- :mod:`uisbench.data`: image decoding, batched loading, dataset building blocks;
- :mod:`uisbench.weights`: safe checkpoint reading; :mod:`uisbench.io`: atomic writes, file hashes;
- :mod:`uisbench.masks`: COCO RLE helpers; :mod:`uisbench.ranks`: a process's rank under torchrun.

Tools that run plugins (the CLI, notebooks, CI scripts) use :mod:`uisbench.host` (plugin discovery,
registry loading) and :func:`uisbench.evaluate` (a whole bench run).

Nothing heavy is imported by this module: torch, timm and friends load inside plugin factories.
"""

from __future__ import annotations

import pluggy

from . import data, grid, host, io, masks, ranks, spectral, weights
from ._version import __version__
from .api import Results, evaluate
from .contracts import (
    Backbone,
    Dataset,
    EnsembleMasker,
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
from .grid import GridBackbone, GridMasker
from .io import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text
from .types import REQUIRED, BackboneSpec, DatasetSpec, MaskerSpec, MetricSpec, Param, StudentSpec, complete_params

#: Marker for plugin hook implementations: ``@uisbench.hookimpl``.
hookimpl = pluggy.HookimplMarker("uisbench")

__all__ = [
    "__version__",
    "hookimpl",
    # plugin records
    "Param",
    "REQUIRED",
    "complete_params",
    "BackboneSpec",
    "MaskerSpec",
    "StudentSpec",
    "MetricSpec",
    "DatasetSpec",
    # contracts and data records
    "Backbone",
    "Masker",
    "EnsembleMasker",
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
    # bases of patch-grid plugins
    "GridBackbone",
    "GridMasker",
    # running the bench from Python
    "evaluate",
    "Results",
    # the host side (plugin discovery, registries): not needed by plugin authors
    "host",
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
    "ranks",
    "data",
    "grid",
    "spectral",
    "weights",
    "io",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
]
