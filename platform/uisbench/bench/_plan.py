"""Planning a run: registry entries resolved against their plugins, the matrix of cells, and
backbones that are built only when a stage needs one.

A cache key is computed from a :class:`ResolvedEntry`'s ``identity`` alone (plugin, version, the
fingerprint of the plugin's source code, parameters, hashes of the files its path parameters name),
so a fully cached rerun builds nothing and a changed plugin never reuses an old entry.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import BackboneUnavailable, ConfigError
from ..registry import ensemble_members
from ..types import REQUIRED
from ._cache import file_sha256, folder_digest
from ._code import factory_fingerprint

__all__ = ["ResolvedEntry", "Plan", "BackboneHandle", "make_plan"]


@dataclass(frozen=True)
class ResolvedEntry:
    """A registry entry resolved against its plugin: spec, parameters and cache identity."""

    kind: str
    name: str
    plugin: str
    spec: Any
    params: dict[str, Any]
    identity: dict[str, Any]
    distribution: str
    distribution_version: str
    source: str
    description: str = ""

    def build(self, **extra: Any) -> Any:
        """The plugin object of this entry (``extra`` goes to the factory, e.g. ``split``)."""
        return self.spec.factory(**{**self.params, **extra})

    def describe(self) -> dict[str, Any]:
        """How results.json names the entry."""
        return {
            "plugin": self.plugin,
            "description": self.description,
            "version": str(self.spec.version),
            "params": self.params,
            "distribution": self.distribution,
            "distribution_version": self.distribution_version,
            "source": self.source,
        }


def resolve_entry(host: Any, registry: Any, kind: str, name: str, hash_memo: Path) -> ResolvedEntry:
    entry = registry.entry(kind, name)  # UnknownNameError with suggestions
    spec = host.spec(kind, entry.plugin)
    params = {k: v for k, v in registry.resolved_params(entry, host).items() if v is not REQUIRED}
    files: dict[str, str] = {}
    for param in spec.params:
        value = params.get(param.name)
        if param.type == "path" and isinstance(value, str) and value:
            path = Path(os.path.expanduser(value))
            if path.is_file():
                files[param.name] = file_sha256(path, hash_memo)
            else:
                files[param.name] = folder_digest(path) if path.is_dir() else "missing"
    info = host.provider(kind, entry.plugin)
    identity = {
        "plugin": entry.plugin,
        "version": str(spec.version),
        "code": factory_fingerprint(spec.factory),  # the source, not only the declared version
        "params": params,
        "files": files,
        "uisbench": __version__,
    }
    return ResolvedEntry(
        kind=kind,
        name=name,
        plugin=entry.plugin,
        spec=spec,
        params=params,
        identity=identity,
        distribution=info.distribution if info else "local",
        distribution_version=info.version if info else "0",
        source=entry.where(),
        description=entry.description or spec.description,
    )


@dataclass
class Plan:
    """The matrix of a run: entry names per kind (in order) and every entry resolved."""

    backbones: list[str]
    maskers: list[str]
    students: list[str]
    metrics: list[str]
    dataset: str
    entries: dict[tuple[str, str], ResolvedEntry]
    #: the few-label stage's settings (a registry ``finetune:`` entry), or ``None``
    finetune: Any = None
    #: ensemble masker entry -> its members' ``(backbone, masker)`` entry pairs
    members: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def entry(self, kind: str, name: str) -> ResolvedEntry:
        return self.entries[(kind, name)]

    def is_ensemble(self, masker: str) -> bool:
        return masker in self.members

    def member_backbones(self) -> list[str]:
        """Backbones that only ensemble members use (they are built when a member needs them)."""
        found = [b for pairs in self.members.values() for b, _ in pairs if b not in self.backbones]
        return list(dict.fromkeys(found))

    def metric_names_for(self, stage: str) -> list[str]:
        """Metric entries that score ``stage`` (``features`` takes those that read no predictions)."""
        out = []
        for name in self.metrics:
            spec = self.entry("metrics", name).spec
            if stage in spec.stages and not (stage == "features" and "predictions" in spec.needs):
                out.append(name)
        return out


def _names(registry: Any, kind: str, given: list[str] | None, default: Any) -> list[str]:
    if given is None:
        names = list(registry.names(kind)) if default == "all" else list(default)
    else:
        names = list(given)
    for name in names:
        registry.entry(kind, name)  # UnknownNameError with suggestions
    return list(dict.fromkeys(names))


def make_plan(host: Any, registry: Any, options: Any, hash_memo: Path, device_type: str) -> Plan:
    bench = registry.bench.for_device(device_type)  # the defaults that suit this machine
    names = {
        "backbones": _names(registry, "backbones", options.backbones, bench.backbones),
        "maskers": _names(registry, "maskers", options.maskers, bench.maskers),
        "students": _names(registry, "students", options.students, bench.students),
        "metrics": _names(registry, "metrics", options.metrics, bench.metrics),
        "datasets": [options.dataset or bench.dataset],
    }
    if not names["backbones"]:
        raise ConfigError("nothing to bench: no backbone selected (use --all or --backbones A,B).")
    if not names["maskers"]:
        raise ConfigError("nothing to bench: no masker selected; fill `bench: maskers:` in the registry or pass --maskers.")
    entries = {(kind, n): resolve_entry(host, registry, kind, n, hash_memo) for kind, ns in names.items() for n in ns}
    members: dict[str, list[tuple[str, str]]] = {}
    for masker in names["maskers"]:
        if getattr(entries[("maskers", masker)].spec, "ensemble", False):
            # an ensemble reads other cells' pseudo-masks: resolve their entries too (validated on load)
            members[masker] = ensemble_members(entries[("maskers", masker)].params)
            for pair in members[masker]:
                for kind, name in zip(("backbones", "maskers"), pair, strict=True):
                    if (kind, name) not in entries:
                        entries[(kind, name)] = resolve_entry(host, registry, kind, name, hash_memo)
    finetune = getattr(options, "finetune", None) or bench.finetune
    if finetune in ("none", ""):
        finetune = None
    if finetune is not None and finetune not in registry.finetune:
        from ..errors import UnknownNameError

        raise UnknownNameError("finetune entry", finetune, registry.finetune, hint="They are the registry's `finetune:` section.")
    settings = registry.finetune.get(finetune) if finetune and names["students"] else None
    return Plan(names["backbones"], names["maskers"], names["students"], names["metrics"], names["datasets"][0], entries, settings,
                members)


class BackboneHandle:
    """A backbone built on first use, bound to the split being processed; remembers unavailability."""

    def __init__(self, entry: ResolvedEntry, ctx: Any, data: Any) -> None:
        self.entry = entry
        self.ctx = ctx
        self.data = data
        self.backbone: Any = None
        self.unavailable: str | None = None
        self.bound_split: str | None = None

    @property
    def calibration(self) -> bool:
        return bool(getattr(self.entry.spec, "calibration", False))

    def get(self) -> Any:
        if self.unavailable is not None:
            raise BackboneUnavailable(self.unavailable)
        if self.backbone is None:
            try:
                backbone = self.entry.build()
                backbone = backbone.to(self.ctx.device) or backbone
            except BackboneUnavailable as err:
                self.unavailable = str(err)
                raise
            if self.calibration:
                backbone.calibration = True
            self.backbone = backbone
            self.ctx.built.append(f"backbone:{self.entry.name}")
        return self.backbone

    def bind(self, split: str) -> Any:
        backbone = self.get()
        if self.bound_split != split:
            backbone.bind(self.data.dataset(split))
            self.bound_split = split
        return backbone

    def release(self) -> None:
        """Drop the model (the next row needs the memory)."""
        if self.backbone is not None:
            self.backbone = None
            self.bound_split = None
            gc.collect()
            if self.ctx.device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()
