"""The hooks a uisbench plugin implements: one per plugin kind.

A plugin is a module (or object) with ``@uisbench.hookimpl`` functions, registered through the
``uisbench`` entry-point group. Each hook yields typed records; nothing heavy runs here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .types import BackboneSpec, DatasetSpec, MaskerSpec, MetricSpec, StudentSpec

hookspec = pluggy.HookspecMarker("uisbench")


# ---- Backbones --------------------------------------------------------------------------------


@hookspec
def uisbench_backbones() -> Iterable[BackboneSpec]:
    """Register backbones: models turning images into dense patch features ``(B, C, h, w)``.

    :return: an iterable of :class:`uisbench.BackboneSpec`; ``None`` or empty registers nothing.
      ``factory(**params)`` returns a :class:`uisbench.Backbone`. Import torch/timm inside it.

    .. versionadded:: 0.1

    Example::

        import uisbench

        @uisbench.hookimpl
        def uisbench_backbones():
            yield uisbench.BackboneSpec(
                name="my-vit",
                description="Our ViT-S/16 trained on factory images.",
                factory=lambda **p: __import__("my_pkg.backbone").backbone.MyBackbone(**p),
                params=(uisbench.Param("weights", "path", None, "local checkpoint"),),
            )
    """


# ---- Maskers ----------------------------------------------------------------------------------


@hookspec
def uisbench_maskers() -> Iterable[MaskerSpec]:
    """Register maskers: algorithms turning patch features into pseudo instance masks.

    :return: an iterable of :class:`uisbench.MaskerSpec`; ``factory(**params)`` returns a
      :class:`uisbench.Masker` whose ``predict`` gives RLE masks at image resolution with scores.

    .. versionadded:: 0.1

    Example::

        @uisbench.hookimpl
        def uisbench_maskers():
            yield uisbench.MaskerSpec(name="threshold", description="Foreground by feature norm.",
                                      factory=ThresholdMasker, params=(uisbench.Param("q", "float", 0.5),))
    """


# ---- Students ---------------------------------------------------------------------------------


@hookspec
def uisbench_students() -> Iterable[StudentSpec]:
    """Register students: detectors trained on pseudo-masks.

    :return: an iterable of :class:`uisbench.StudentSpec`; ``factory(backbone=..., **params)``
      returns a :class:`uisbench.Student`. ``backbone`` is the backbone under evaluation (a
      :class:`uisbench.Backbone`), for students that build on its frozen features.

    .. versionadded:: 0.1

    Example::

        @uisbench.hookimpl
        def uisbench_students():
            yield uisbench.StudentSpec(name="copy", description="Predicts the pseudo-masks unchanged.",
                                       factory=lambda backbone=None, **p: CopyStudent())
    """


# ---- Metrics ----------------------------------------------------------------------------------


@hookspec
def uisbench_metrics() -> Iterable[MetricSpec]:
    """Register metrics computed on pseudo-masks and on student predictions.

    :return: an iterable of :class:`uisbench.MetricSpec` with ``needs`` (``ground_truth``,
      ``predictions``, ``features``, ``cost``) and ``stages``; ``factory(**params)`` returns a
      :class:`uisbench.Metric`, which declares ``higher_is_better`` and ``headline`` per value.

    .. versionadded:: 0.1

    Example::

        @uisbench.hookimpl
        def uisbench_metrics():
            yield uisbench.MetricSpec(name="mask-count", description="Mean number of masks per image.",
                                      factory=MaskCount, needs=frozenset({"predictions"}))
    """


# ---- Datasets ---------------------------------------------------------------------------------


@hookspec
def uisbench_datasets() -> Iterable[DatasetSpec]:
    """Register datasets: image collections, with class-agnostic ground truth where available.

    :return: an iterable of :class:`uisbench.DatasetSpec`; ``factory(split=..., **params)``
      returns a :class:`uisbench.Dataset` for ``split`` in ``spec.splits``.

    .. versionadded:: 0.1

    Example::

        @uisbench.hookimpl
        def uisbench_datasets():
            yield uisbench.DatasetSpec(name="factory-photos", description="Line 3 camera images.",
                                       factory=lambda split, root: MyPhotos(root),
                                       params=(uisbench.Param("root", "path"),),
                                       has_ground_truth=False)
    """
