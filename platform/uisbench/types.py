"""The typed records that plugin hooks yield: one ``*Spec`` per plugin kind, plus ``Param``.

A spec is cheap to build: it only names a plugin, documents it and holds a *lazy* ``factory``.
Heavy imports (torch, timm, torchvision, pycocotools) happen inside the factory, never when
the spec is created, so ``platform --help`` and ``platform list`` stay instant.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import PluginError, raise_problems

__all__ = [
    "REQUIRED",
    "Param",
    "ParamProblem",
    "complete_params",
    "review_params",
    "ParamReview",
    "PluginSpec",
    "BackboneSpec",
    "MaskerSpec",
    "StudentSpec",
    "MetricSpec",
    "DatasetSpec",
    "SPEC_TYPES",
    "KINDS",
    "MASKER_INPUTS",
]


class _Required:
    """Sentinel default of a parameter that every registry entry must set."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

#: What a masker reads: patch features (every masker so far) or other cells' pseudo-masks (ensembles).
MASKER_INPUTS = ("features", "pseudo-masks")

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")
_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (float, int),
    "str": (str,),
    "bool": (bool,),
    "path": (str,),
    "list[int]": (list,),
    "list[float]": (list,),
    "list[str]": (list,),
    "dict": (dict,),
}
_NUMERIC = ("int", "float", "list[int]", "list[float]")


@dataclass(frozen=True)
class Param:
    """One parameter of a plugin: its name, type, default and a one-line help text.

    ``type`` is one of ``int, float, str, bool, path, list[int], list[float], list[str], dict``.
    ``default=REQUIRED`` makes the parameter mandatory; ``nullable=True`` admits ``null``.
    A number (or every item of a list of numbers) may be bounded, pydantic-style: ``ge``/``gt`` below,
    ``le``/``lt`` above; ``platform validate`` and :func:`complete_params` enforce the bounds, so a
    plugin's ``check`` keeps only what involves several parameters.

    Example::

        Param("tau", "float", 0.2, "affinity threshold of the binarised graph", ge=0, lt=1)
    """

    name: str
    type: str
    default: Any = REQUIRED
    help: str = ""
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise PluginError(
                f"Param {self.name!r}: unknown type {self.type!r}; use one of {', '.join(_TYPES)}."
            )
        bounded = self.bounds != ""
        if bounded and self.type not in _NUMERIC:
            raise PluginError(f"Param {self.name!r}: bounds (ge, gt, le, lt) apply to numbers, not to {self.type}.")
        if (self.ge is not None and self.gt is not None) or (self.le is not None and self.lt is not None):
            raise PluginError(f"Param {self.name!r}: give one lower bound (ge or gt) and one upper bound (le or lt).")
        outside = bounded and self.default is not REQUIRED and self.default is not None and self._out_of_bounds(self.default)
        if outside:
            raise PluginError(f"Param {self.name!r}: the default {outside}.")

    @property
    def bounds(self) -> str:
        """The allowed range as an interval, e.g. ``[0, 1)`` or ``>= 1``; empty when unbounded."""
        low = f"[{self.ge!r}" if self.ge is not None else f"({self.gt!r}" if self.gt is not None else None
        high = f"{self.le!r}]" if self.le is not None else f"{self.lt!r})" if self.lt is not None else None
        if low and high:
            return f"{low}, {high}"
        if low:
            return f"{'>=' if low[0] == '[' else '>'} {low[1:]}"
        if high:
            return f"{'<=' if high[-1] == ']' else '<'} {high[:-1]}"
        return ""

    def _within(self, number: float) -> bool:
        return not (
            (self.ge is not None and not number >= self.ge)
            or (self.gt is not None and not number > self.gt)
            or (self.le is not None and not number <= self.le)
            or (self.lt is not None and not number < self.lt)
        )

    def _out_of_bounds(self, value: Any) -> str | None:
        bounds = self.bounds
        if not bounds:
            return None
        need = f"lie in {bounds}" if "," in bounds else f"be {bounds}"
        if self.type.startswith("list["):
            bad = [v for v in value if not self._within(v)]
            return f"items must {need}, got {bad!r}" if bad else None
        return None if self._within(value) else f"must {need}, got {value!r}"

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def check(self, value: Any) -> str | None:
        """Return a problem description if ``value`` does not fit this parameter, else ``None``."""
        if value is None:
            return None if (self.nullable or self.default is None) else "must not be null"
        expected = _TYPES[self.type]
        if isinstance(value, bool) and bool not in expected:
            return f"expected {self.type}, got bool {value!r}"
        if not isinstance(value, expected):
            return f"expected {self.type}, got {type(value).__name__} {value!r}"
        if self.type.startswith("list["):
            item = _TYPES[self.type[5:-1]]
            bad = [v for v in value if not isinstance(v, item) or (isinstance(v, bool) and bool not in item)]
            if bad:
                return f"expected {self.type}, got items {bad!r}"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(map(repr, self.choices))}, got {value!r}"
        return self._out_of_bounds(value)


#: A parameter problem found by a spec's ``check``: ``(parameter name or None, message)``.
ParamProblem = tuple[str | None, str]


@dataclass(frozen=True)
class ParamReview:
    """What :func:`review_params` found: the values (defaults filled in) and every problem, in order.

    Each finding is ``(kind, parameter or None, message)`` with ``kind`` one of ``unknown`` (no
    :class:`Param` has the name), ``missing`` (a required one not given), ``value`` (the value does not
    fit its :class:`Param`: type, choices, bounds) or ``check`` (the plugin's check of the combination).
    ``platform validate`` and :func:`complete_params` word them differently; what they find is this.
    """

    values: dict[str, Any]
    findings: list[tuple[str, str | None, str]]

    def problems(self) -> list[ParamProblem]:
        return [(name, message) for _, name, message in self.findings]


def review_params(
    params: Iterable[Param],
    given: Mapping[str, Any],
    check: Callable[[Mapping[str, Any]], Iterable[ParamProblem]] | None = None,
) -> ParamReview:
    """Check ``given`` against the declared ``params`` (defaults filled in), then ``check`` on the whole.

    The one implementation of parameter checking: the registry loader (``platform validate``) and
    :func:`complete_params` (factories) both call it, so they refuse the same values. ``check`` runs
    only when every value passed its own :class:`Param`, since it may assume well-typed values; an
    exception it raises propagates (the registry reports it at the entry's line).
    """
    declared = {p.name: p for p in params}
    findings: list[tuple[str, str | None, str]] = [("unknown", name, "unknown parameter") for name in given if name not in declared]
    values: dict[str, Any] = {}
    for name, param in declared.items():
        if name not in given and param.required:
            findings.append(("missing", name, f"missing required parameter ({param.type}: {param.help})"))
            continue
        values[name] = given.get(name, param.default)
        problem = param.check(values[name])
        if problem:
            findings.append(("value", name, problem))
    if not findings and check is not None:
        findings = [("check", name, str(message)) for name, message in check(values)]
    return ParamReview(values, findings)


def complete_params(
    where: str,
    params: Iterable[Param],
    given: Mapping[str, Any],
    check: Callable[[Mapping[str, Any]], Iterable[ParamProblem]] | None = None,
) -> dict[str, Any]:
    """Every parameter of ``params``: ``given`` over the defaults, checked the way ``platform validate``
    checks a registry entry (:func:`review_params`: unknown and missing names, each value against its
    :class:`Param`, then ``check`` on the whole). Raises one :class:`ConfigError` that lists every problem.

    It lets a factory declare its parameters once, in the spec's ``params``, and still be called
    from Python with keywords::

        class VoteMasker(uisbench.EnsembleMasker):
            def __init__(self, members, **options):
                p = uisbench.complete_params("masker vote", PARAMS, {"members": members, **options}, check_params)
    """
    review = review_params(params, given, check)
    raise_problems(where, review.problems())
    return review.values


@dataclass(frozen=True)
class PluginSpec:
    """Fields shared by every plugin kind.

    ``factory(**params)`` builds the working object; ``params`` declares what it accepts.
    ``version`` is the plugin's own release label (cache keys also hold a fingerprint of its code).
    ``check(params)`` (optional, cheap, no heavy imports) yields ``(parameter or None, message)`` for
    every combination of values the factory would reject, so ``platform validate`` rejects what a run
    would: the factory should call the same function. It gets every parameter, defaults filled in,
    and runs only when each value has passed its own :class:`Param` check.

    Example::

        def check(params):
            if params["size"] % params["patch_size"]:
                yield "size", f"{params['size']} is not a multiple of patch_size {params['patch_size']}"
    """

    name: str
    description: str
    factory: Callable[..., Any]
    params: tuple[Param, ...] = ()
    version: str = "1"
    check: Callable[[Mapping[str, Any]], Iterable[ParamProblem]] | None = None
    kind: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise PluginError(
                f"{type(self).__name__} name {self.name!r} is invalid: use lower-case letters, digits, '.', '-', '_'."
            )
        if not self.description or "\n" in self.description.strip():
            raise PluginError(f"{type(self).__name__} {self.name!r}: description must be one non-empty line.")
        if not callable(self.factory):
            raise PluginError(f"{type(self).__name__} {self.name!r}: factory must be callable.")
        if self.check is not None and not callable(self.check):
            raise PluginError(f"{type(self).__name__} {self.name!r}: check must be callable or None.")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise PluginError(f"{type(self).__name__} {self.name!r}: duplicate parameter names {names}.")

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params if not p.required}

    def problems(self, params: Mapping[str, Any]) -> list[ParamProblem]:
        """What :attr:`check` finds in ``params`` (defaults filled in); empty without a check."""
        if self.check is None:
            return []
        return [(name, str(message)) for name, message in self.check({**self.defaults(), **params})]

    def build(self, **params: Any) -> Any:
        """Fill defaults and call the factory (validation happens in the registry)."""
        return self.factory(**{**self.defaults(), **params})


@dataclass(frozen=True)
class BackboneSpec(PluginSpec):
    """A backbone plugin: factory returns a :class:`uisbench.Backbone`.

    ``calibration=True`` marks reference backbones, not contenders: the oracles, which read ground
    truth, and controls such as ``position`` (patch position only). Their results are listed apart
    from real backbones and may not feed a student at prediction time.
    """

    calibration: bool = False
    #: ``inspect_weights(checkpoint, path) -> dict | None``: what ``platform weights inspect`` prints
    #: for a checkpoint this plugin recognises (``"entry"``: the registry parameters that load it)
    inspect_weights: Callable[[Any, str], Mapping[str, Any] | None] | None = None
    kind: str = field(default="backbone", init=False)


@dataclass(frozen=True)
class MaskerSpec(PluginSpec):
    """A masker plugin: factory returns a :class:`uisbench.Masker`.

    ``consumes="pseudo-masks"`` declares an ensemble masker: its factory returns a
    :class:`uisbench.EnsembleMasker`, which reads the pseudo-masks of other cells instead of features.
    Such a spec must have a ``members`` parameter (``list[str]``) whose values name registry entries
    as ``"backbone/masker"`` pairs; the bench computes each member's pseudo-masks first (they are
    cached like any other) and hands the ensemble every member's masks of an image::

        MaskerSpec(name="vote", description="...", factory=VoteMasker, consumes="pseudo-masks",
                   params=(Param("members", "list[str]", REQUIRED, "backbone/masker pairs"), ...))
    """

    consumes: str = "features"
    kind: str = field(default="masker", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.consumes not in MASKER_INPUTS:
            raise PluginError(f"MaskerSpec {self.name!r}: consumes must be one of {', '.join(MASKER_INPUTS)}, got {self.consumes!r}.")
        members = self.param("members")
        if self.consumes == "pseudo-masks" and (members is None or members.type != "list[str]"):
            raise PluginError(f"MaskerSpec {self.name!r}: an ensemble masker (consumes='pseudo-masks') needs a "
                              "'members' parameter of type list[str] naming 'backbone/masker' entry pairs.")

    @property
    def ensemble(self) -> bool:
        """Whether this masker reads other cells' pseudo-masks (see ``consumes``)."""
        return self.consumes == "pseudo-masks"


@dataclass(frozen=True)
class StudentSpec(PluginSpec):
    """A student plugin: factory(backbone=..., **params) returns a :class:`uisbench.Student`."""

    kind: str = field(default="student", init=False)


@dataclass(frozen=True)
class MetricSpec(PluginSpec):
    """A metric plugin: factory returns a :class:`uisbench.Metric`.

    ``needs`` says what the metric reads (``ground_truth``, ``predictions``, ``features``, ``cost``)
    so the engine can skip it, with a reason, where the data lacks it. ``stages`` says where it
    applies. The values' directions and headline are the :class:`uisbench.Metric`'s own
    (``higher_is_better``, ``headline``): they may depend on its parameters.
    """

    needs: frozenset[str] = frozenset({"ground_truth", "predictions"})
    stages: frozenset[str] = frozenset({"pseudo-masks", "student"})
    kind: str = field(default="metric", init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = set(self.needs) - {"ground_truth", "predictions", "features", "cost"}
        if unknown:
            raise PluginError(f"MetricSpec {self.name!r}: unknown needs {sorted(unknown)}.")
        unknown = set(self.stages) - {"pseudo-masks", "student", "features"}
        if unknown:
            raise PluginError(f"MetricSpec {self.name!r}: unknown stages {sorted(unknown)}.")


@dataclass(frozen=True)
class DatasetSpec(PluginSpec):
    """A dataset plugin: factory(split=..., **params) returns a :class:`uisbench.Dataset`.

    ``splits`` lists the splits the factory accepts; ``has_ground_truth`` whether ``val`` has it.
    ``presets`` names ready-made parameter sets (e.g. ``coco-val2017``).
    """

    splits: tuple[str, ...] = ("train", "val")
    has_ground_truth: bool = True
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    kind: str = field(default="dataset", init=False)


SPEC_TYPES: dict[str, type[PluginSpec]] = {
    "backbones": BackboneSpec,
    "maskers": MaskerSpec,
    "students": StudentSpec,
    "metrics": MetricSpec,
    "datasets": DatasetSpec,
}
KINDS: tuple[str, ...] = tuple(SPEC_TYPES)
