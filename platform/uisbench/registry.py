"""``registry.yaml``: which plugin entries exist, their parameters, and the default bench matrix.

The file is data, read with ``yaml.safe_load`` semantics (a ``SafeLoader`` subclass that
remembers line numbers) and validated against each plugin's parameter schema. Every problem is
reported as ``file:line: message`` with a suggestion, all at once.

Registry files get shared like the rest of a work directory, so the loader also refuses, with the
line, what ``safe_load`` would accept but cannot end well: aliases that expand the document beyond
:data:`MAX_YAML_NODES` values ("billion laughs": nine lines can stand for 10^9 strings, which
validating, hashing or printing would then build), an alias inside the node it names (a recursive
value), nesting deeper than :data:`MAX_YAML_DEPTH`, and text that is not UTF-8.

Layout (``version: 1``)::

    version: 1
    backbones:
      dino-vits16: {plugin: dino, model: vit_small_patch16_224.dino}
    maskers:
      ncut: {plugin: ncut}
    bench:
      backbones: all          # or a list of entry names
      maskers: [ncut]
      students: [maskrcnn]
      metrics: [coco]
      dataset: synth-instances

Several files can be given (``--registry FILE``, repeatable): later files add entries or replace
entries of the same name, and their ``bench:`` keys replace the earlier ones.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .errors import ConfigError, UnknownNameError
from .types import KINDS, review_params

if TYPE_CHECKING:
    from ._manager import PluginHost
    from .types import PluginSpec

__all__ = [
    "Entry",
    "BenchDefaults",
    "FinetuneSettings",
    "FINETUNE_SELECTIONS",
    "Registry",
    "load_registry",
    "default_registry_path",
    "ensemble_members",
    "SCHEMA_VERSION",
    "MAX_YAML_NODES",
    "MAX_YAML_DEPTH",
]

SCHEMA_VERSION = 1
#: The most bootstrap resamples an interval may take (registry ``bench: bootstrap:``, ``--bootstrap``):
#: a 95 % percentile interval is stable to a few thousandths from ~2,000 resamples on; far beyond
#: this a run only burns time (100,000,000 ran for minutes before the first interval).
MAX_BOOTSTRAP = 10_000
_TOP_KEYS = ("version", *KINDS, "finetune", "bench", "report")
#: how the few-label stage picks the images to label: at random (nested per seed), or the images whose
#: pseudo-masks the masker was least sure of (mean mask score, lowest first)
FINETUNE_SELECTIONS = ("random", "uncertain")
_FINETUNE_KEYS = ("budgets", "selection", "seeds", "student", "description")
_REPORT_KEYS = ("images",)
_BENCH_KEYS = ("backbones", "maskers", "students", "metrics", "dataset", "seed", "seeds", "bootstrap", "rank_by", "finetune")
#: device types whose bench defaults may differ (``bench: {cpu: {...}, cuda: {...}}``)
_DEVICES = ("cpu", "cuda")
_ENTRY_META = ("plugin", "description")
#: Most YAML values (scalars, lists, mappings) one registry file may stand for once its aliases are
#: expanded. The shipped registry.yaml has about 400; an alias bomb reaches this within a few lines.
MAX_YAML_NODES = 100_000
#: Deepest nesting of lists and mappings in a registry file (the shipped one needs 5; the loader
#: recurses once per level, so thousands would end in a RecursionError).
MAX_YAML_DEPTH = 50


class _Mapping(dict):
    """A dict that remembers the line (1-based) of itself and of each key."""

    line: int = 0
    key_lines: dict[str, int]


class _Refused(yaml.composer.ComposerError):
    """A YAML document that parses but is refused: its ``problem`` says why and what to do."""


class _LineLoader(yaml.SafeLoader):
    """``SafeLoader`` that records line numbers, rejects duplicate keys and refuses alias bombs,
    recursive aliases and deep nesting while composing, before any value is constructed."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, int]] = []
        #: id(node) -> how many values the node stands for with its aliases expanded (a finished node)
        self.expanded: dict[int, int] = {}
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if self.depth >= MAX_YAML_DEPTH:
            raise _Refused(None, None, f"values are nested more than {MAX_YAML_DEPTH} levels deep; flatten them", event.start_mark)
        self.depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if isinstance(event, yaml.AliasEvent):
            if id(node) not in self.expanded:  # the anchored node is still being composed
                raise _Refused(None, None, f"alias *{event.anchor} sits inside the node it names (a recursive value); "
                               "write the value out", event.start_mark)
            return node
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        size = 1 + sum(self.expanded[id(child)] for child in children)
        if size > MAX_YAML_NODES:
            raise _Refused(None, None, f"aliases expand this value to more than {MAX_YAML_NODES:,} values (an alias "
                           "bomb?); write the values out or use fewer aliases", node.start_mark)
        self.expanded[id(node)] = size
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> _Mapping:  # type: ignore[override]
        result = _Mapping()
        result.line = node.start_mark.line + 1
        result.key_lines = {}
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # "? [a, b]": SafeLoader's own error, not a TypeError below
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, "found unhashable key", key_node.start_mark
                )
            if key in result.key_lines:
                self.duplicates.append((str(key), key_node.start_mark.line + 1))
            result[key] = self.construct_object(value_node, deep=deep)
            result.key_lines[key] = key_node.start_mark.line + 1
        return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _LineLoader.construct_mapping)


@dataclass(frozen=True)
class Entry:
    """One named registry entry: ``plugin`` plus its parameters, and where it was written."""

    kind: str
    name: str
    plugin: str
    params: Mapping[str, Any]
    source: str
    line: int
    description: str = ""

    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class BenchDefaults:
    """The ``bench:`` section: the default matrix of ``platform bench --all``."""

    backbones: tuple[str, ...] | str = "all"
    maskers: tuple[str, ...] = ()
    students: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    dataset: str = "synth-instances"
    seed: int = 0
    #: repetitions of the stochastic stages (k-means init, student training), seeds seed .. seed+seeds-1
    seeds: int = 1
    #: bootstrap resamples of the images behind each confidence interval (0: no intervals; at most
    #: :data:`MAX_BOOTSTRAP`)
    bootstrap: int = 200
    #: the value the leaderboard ranks by: ``METRIC.VALUE`` or ``STAGE.METRIC.VALUE`` (stage
    #: ``pseudo-masks`` or ``student``); ``None``: the first headline value of the first metric
    rank_by: str | None = None
    #: per device type (``cpu``, ``cuda``): keys that replace the ones above on that device, so the
    #: default matrix suits the machine (small models at CPU size on a laptop, the full set on a GPU)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the ``finetune:`` entry of the few-label stage (``None``: the stage does not run)
    finetune: str | None = None

    def for_device(self, device_type: str) -> BenchDefaults:
        """These defaults with the overrides of ``device_type`` applied."""
        overrides = self.devices.get(device_type, {})
        return replace(self, **overrides, devices={}) if overrides else self


@dataclass(frozen=True)
class FinetuneSettings:
    """A ``finetune:`` entry: the few-label stage's settings (named from ``bench: finetune:``).

    ``budgets``: numbers of labelled train images per curve point, counts or ``"N%"`` of the train
    split (``0``: the student as trained on pseudo-masks); ``selection``: which images get labels
    (:data:`FINETUNE_SELECTIONS`); ``seeds``: subsets and trainings repeated per seed; ``student``:
    parameters of the student entry replaced while fine-tuning (iterations, lr, ...).
    """

    name: str
    budgets: tuple[int | str, ...]
    selection: tuple[str, ...] = ("random",)
    seeds: int = 1
    student: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = ""
    line: int = 0
    #: the line of each ``student`` override, for error messages
    student_lines: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class Registry:
    """Entries of every kind, the bench defaults, and the files they came from."""

    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    bench: BenchDefaults = field(default_factory=BenchDefaults)
    #: the ``finetune:`` section: settings of the few-label stage, by name
    finetune: dict[str, FinetuneSettings] = field(default_factory=dict)
    #: the ``report:`` section: ``images: false`` keeps image pixels and paths out of every output
    #: (as ``--private``), for images that may not leave the site
    report_images: bool = True
    files: list[str] = field(default_factory=list)
    sha256: str = ""
    #: where each bench key was last set: key -> (file, line), for error messages
    bench_lines: dict[str, tuple[str, int]] = field(default_factory=dict, repr=False)

    def entry(self, kind: str, name: str) -> Entry:
        if name not in self.entries[kind]:
            raise UnknownNameError(f"{kind[:-1]} entry", name, self.entries[kind], hint="`platform list " + kind + "` shows them.")
        return self.entries[kind][name]

    def names(self, kind: str) -> list[str]:
        return list(self.entries[kind])

    def resolved_params(self, entry: Entry, host: PluginHost) -> dict[str, Any]:
        """The entry's parameters with the plugin's defaults filled in, and its ``preset:`` (if the
        plugin has presets) expanded as the plugin's own factory expands it: what ``platform list`` shows."""
        spec = host.spec(entry.kind, entry.plugin)
        params = {**spec.defaults(), **entry.params}
        if getattr(spec, "presets", None):
            from .data import apply_preset

            params = apply_preset(entry.plugin, spec.presets, spec.defaults(), params)
        return params

    def build(self, kind: str, name: str, host: PluginHost, **extra: Any) -> Any:
        """Instantiate the object of entry ``name`` (``extra`` goes to the factory, e.g. ``split``)."""
        entry = self.entry(kind, name)
        spec = host.spec(kind, entry.plugin)
        return spec.factory(**{**self.resolved_params(entry, host), **extra})

    def add_implicit_entries(self, host: PluginHost) -> None:
        """Installed backbone plugins that no entry uses and that need no parameter get an entry of
        their own name, so ``bench --all`` scores a vendor's plugin without a registry edit."""
        used = {e.plugin for e in self.entries["backbones"].values()}
        for name, spec in host.specs("backbones").items():
            if name in used or name in self.entries["backbones"] or any(p.required for p in spec.params):
                continue
            self.entries["backbones"][name] = Entry("backbones", name, name, {}, "<installed plugin>", 0, spec.description)


def default_registry_path() -> Path:
    """``UISBENCH_REGISTRY`` if set, else the ``registry.yaml`` at the checkout's root."""
    env = os.environ.get("UISBENCH_REGISTRY")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "registry.yaml"


def _read(path: Path) -> tuple[bytes, Any, list[str]]:
    """The file's bytes (for the registry hash), its data, and problems found while reading it."""
    problems: list[str] = []
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read registry file ({err.strerror}); check the path.") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte {err.start}, 0x{raw[err.start]:02x}); save the registry file as UTF-8."
        ) from err
    loader = _LineLoader(text)
    try:
        data = loader.get_single_data()
    except _Refused as err:
        mark = err.problem_mark
        raise ConfigError(f"{path}:{mark.line + 1}: {err.problem}.", [f"{path}:{mark.line + 1}: {err.problem}"]) from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(
            f"{path}{line}: not valid YAML ({getattr(err, 'problem', err)}); fix the syntax.",
            [f"{path}{line}: not valid YAML: {getattr(err, 'problem', err)}"],
        ) from err
    finally:
        loader.dispose()
    for key, line in loader.duplicates:
        problems.append(f"{path}:{line}: key {key!r} appears twice; keep one.")
    return raw, data, problems


def _failed_to_load(host: Any) -> str:
    """`` N plugin(s) failed to load and may provide it: ...``: one of them may be the plugin meant."""
    failures = list(getattr(host, "failures", None) or [])
    if not failures:
        return ""
    named = "; ".join(f"{f.name} ({f.distribution} {f.version}): {f.error}" for f in failures[:3])
    return (f" {len(failures)} plugin(s) failed to load and may provide it: {named}"
            f"{' ...' if len(failures) > 3 else ''}.")


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else f" Known: {', '.join(sorted(options)) or 'none'}."


def _check_params(spec: PluginSpec, entry: Entry, lines: Mapping[str, int], path: str, problems: list[str]) -> None:
    """The entry's parameters checked by :func:`~uisbench.types.review_params`, the very check a factory's
    :func:`uisbench.complete_params` runs, each problem put at its line with a suggestion."""
    try:
        findings = review_params(spec.params, entry.params, spec.check).findings
    except Exception as err:  # a broken check must not hide the entry's line
        findings = [("check", None, f"the plugin's parameter check failed ({type(err).__name__}: {err})")]
    at = f"{entry.kind[:-1]} entry {entry.name!r}"
    for kind, key, message in findings:
        line = lines.get(key, entry.line) if key else entry.line
        if kind == "unknown":
            text = f"unknown parameter {key!r} of plugin {spec.name!r}.{_suggest(str(key), [p.name for p in spec.params])}"
        elif kind == "missing":
            param = spec.param(str(key))
            help_text = (param.help if param else "") or f"see `platform list {entry.kind}`"
            text = f"missing required parameter {key!r} ({param.type if param else '?'}: {help_text})."
        else:
            text = f"{f'parameter {key!r} ' if key else ''}{message}."
        problems.append(f"{path}:{line}: {at}: {text}")


def _name_problem(name: str) -> str | None:
    """Why ``--backbones`` and the like could never select an entry of this name (they split on
    commas and strip spaces), or None."""
    if not name.strip():
        return "the name is empty (or only spaces); `--backbones` and the like could never select it"
    if "," in name:
        return "a name with a comma can never be selected (`--backbones a,b` splits on commas); rename it"
    if name != name.strip():
        return "a name that starts or ends with a space can never be selected (the command line strips it); rename it"
    return None


def _check_paths(spec: PluginSpec, entry: Entry, lines: Mapping[str, int], problems: list[str]) -> None:
    """``platform validate``: the entry's path parameters name what exists, seen with ``stat`` only
    (nothing is opened or loaded: a FIFO would block, a checkpoint takes long to load).

    A backbone's, masker's or student's path names a file (``weights:``), read from the working
    directory as the factories do. A dataset's may name a folder; a relative one is relative to the
    dataset's root and the root may come from the environment, so only absolute ones are checked.
    """
    from .io import regular_file_problem

    for param in spec.params:
        value = entry.params.get(param.name)
        if param.type != "path" or not isinstance(value, str) or not value:
            continue
        path = Path(os.path.expandvars(value)).expanduser()
        if entry.kind == "datasets" and not path.is_absolute():
            continue
        problem = regular_file_problem(path)
        if entry.kind == "datasets" and problem and path.is_dir():
            problem = None
        if problem and path.is_dir() and (path / "config.json").is_file():
            problem = None  # a Hugging Face transformers folder (config.json + weights): the timm plugin reads it
        if problem:
            line = lines.get(param.name, entry.line)
            problems.append(f"{entry.source}:{line}: {entry.kind[:-1]} entry {entry.name!r}: parameter {param.name!r}: {path} {problem}.")


def _parse_file(path: Path, registry: Registry, host: PluginHost | None, problems: list[str], check_files: bool = False) -> bytes:
    """Add the file's entries to ``registry`` and its problems to ``problems``; return its bytes.
    ``check_files``: also check that path parameters name existing files (``platform validate``)."""
    raw, data, read_problems = _read(path)
    problems.extend(read_problems)
    where = str(path)
    if data is None:  # empty, or only comments: a file saved by mistake, or the wrong file
        problems.append(f"{where}:1: the file holds no registry; 'version: {SCHEMA_VERSION}' is required.")
        return raw
    if not isinstance(data, dict):
        problems.append(f"{where}:1: the registry must be a mapping with keys {', '.join(_TOP_KEYS)}.")
        return raw
    version = data.get("version")
    if version != SCHEMA_VERSION:
        line = data.key_lines.get("version", 1)
        problems.append(f"{where}:{line}: 'version: {SCHEMA_VERSION}' is required (got {version!r}).")
    for key in data:
        if key not in _TOP_KEYS:
            problems.append(f"{where}:{data.key_lines[key]}: unknown top-level key {key!r}.{_suggest(key, _TOP_KEYS)}")
    for kind in KINDS:
        section = data.get(kind)
        if section is None:
            continue
        if not isinstance(section, dict):
            problems.append(f"{where}:{data.key_lines[kind]}: {kind!r} must map entry names to {{plugin: ..., ...}}.")
            continue
        specs = host.specs(kind) if host is not None else None
        for name, body in section.items():
            line = section.key_lines.get(name, section.line)
            if not isinstance(body, dict) or "plugin" not in body:
                problems.append(f"{where}:{line}: {kind[:-1]} entry {name!r} needs a 'plugin: NAME' key.")
                continue
            named = _name_problem(str(name))
            if named:
                problems.append(f"{where}:{line}: {kind[:-1]} entry {str(name)!r}: {named}.")
                continue
            params = {k: v for k, v in body.items() if k not in _ENTRY_META}
            entry = Entry(kind, str(name), str(body["plugin"]), params, where, line, str(body.get("description", "")))
            if specs is not None:
                spec = specs.get(entry.plugin)
                if spec is None:
                    pline = body.key_lines.get("plugin", line)
                    problems.append(
                        f"{where}:{pline}: {kind[:-1]} entry {name!r}: unknown plugin {entry.plugin!r}."
                        f"{_suggest(entry.plugin, specs)}{_failed_to_load(host)} (`platform plugins --all` lists "
                        f"the plugin names an entry can use.)"
                    )
                    continue
                _check_params(spec, entry, body.key_lines, where, problems)
                if check_files:
                    _check_paths(spec, entry, body.key_lines, problems)
            registry.entries[kind][entry.name] = entry
    section = data.get("finetune")
    if section is not None:
        _parse_finetune(section, data.key_lines["finetune"], where, registry, problems)
    report = data.get("report")
    if report is not None:
        line = data.key_lines["report"]
        if not isinstance(report, dict) or set(report) - set(_REPORT_KEYS) or not isinstance(report.get("images", True), bool):
            problems.append(f"{where}:{line}: 'report' takes images: true|false (false: no image pixels or paths in the outputs).")
        else:
            registry.report_images = bool(report.get("images", True))
    bench = data.get("bench")
    if bench is not None:
        if not isinstance(bench, dict):
            problems.append(f"{where}:{data.key_lines['bench']}: 'bench' must be a mapping.")
            return raw
        values = _bench_values(bench, where, problems, "bench")
        # a later file's plain key wins over an earlier file's device override of it
        devices = {d: {k: v for k, v in o.items() if k not in values} for d, o in registry.bench.devices.items()}
        registry.bench = replace(registry.bench, devices=devices)
        for device in _DEVICES:
            section = bench.get(device)
            if section is None:
                continue
            if not isinstance(section, dict):
                problems.append(f"{where}:{bench.key_lines[device]}: bench {device} must be a mapping of bench keys.")
                continue
            overrides = _bench_values(section, where, problems, f"bench {device}")
            values.setdefault("devices", dict(registry.bench.devices))[device] = {**registry.bench.devices.get(device, {}), **overrides}
            registry.bench_lines.update({f"{device}.{k}": (where, section.key_lines.get(k, section.line)) for k in overrides})
        current = registry.bench.__dict__
        registry.bench = BenchDefaults(**{**current, **values})
        registry.bench_lines.update({k: (where, bench.key_lines.get(k, bench.line)) for k in values if k != "devices"})
    return raw


def _parse_finetune(section: Any, line: int, where: str, registry: Registry, problems: list[str]) -> None:
    if not isinstance(section, dict):
        problems.append(f"{where}:{line}: 'finetune' must map entry names to their settings.")
        return
    for name, body in section.items():
        at = section.key_lines.get(name, line)
        if not isinstance(body, dict):
            problems.append(f"{where}:{at}: finetune entry {name!r} must be a mapping of settings ({', '.join(_FINETUNE_KEYS)}).")
            continue
        before = len(problems)
        for key in body:
            if key not in _FINETUNE_KEYS:
                problems.append(f"{where}:{body.key_lines.get(key, at)}: finetune entry {name!r}: unknown setting {key!r}.{_suggest(key, _FINETUNE_KEYS)}")
        budgets = body.get("budgets")
        if not isinstance(budgets, list) or not budgets or not all(_budget_ok(b) for b in budgets):
            problems.append(f"{where}:{body.key_lines.get('budgets', at)}: finetune entry {name!r}: budgets must be a non-empty list "
                            "of image counts >= 0 or percentages such as '5%'.")
        selection = body.get("selection", ["random"])
        selection = [selection] if isinstance(selection, str) else selection
        if not isinstance(selection, list) or not selection or any(s not in FINETUNE_SELECTIONS for s in selection):
            problems.append(f"{where}:{body.key_lines.get('selection', at)}: finetune entry {name!r}: selection must be one or more "
                            f"of {', '.join(FINETUNE_SELECTIONS)}.")
        seeds = body.get("seeds", 1)
        if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
            problems.append(f"{where}:{body.key_lines.get('seeds', at)}: finetune entry {name!r}: seeds must be an integer >= 1.")
        if not isinstance(body.get("student", {}), dict):
            problems.append(f"{where}:{body.key_lines.get('student', at)}: finetune entry {name!r}: student must map student "
                            "parameters to their fine-tuning values (e.g. {iterations: 100, lr: 0.0005}).")
        if len(problems) == before:
            registry.finetune[str(name)] = FinetuneSettings(
                name=str(name), budgets=tuple(budgets), selection=tuple(selection), seeds=seeds,
                student=dict(body.get("student", {})), description=str(body.get("description", "")), source=where, line=at,
                student_lines=getattr(body.get("student"), "key_lines", {}),
            )


def _budget_ok(budget: Any) -> bool:
    if isinstance(budget, bool):
        return False
    if isinstance(budget, int):
        return budget >= 0
    if isinstance(budget, str) and budget.endswith("%"):
        try:
            return 0 < float(budget[:-1]) <= 100
        except ValueError:
            return False
    return False


def _bench_values(bench: Any, where: str, problems: list[str], what: str) -> dict[str, Any]:
    """The validated keys of a ``bench:`` mapping (or of its ``cpu:``/``cuda:`` overrides)."""
    values: dict[str, Any] = {}
    for key, value in bench.items():
        line = bench.key_lines.get(key, bench.line)
        if key in _DEVICES and what == "bench":
            continue  # parsed by the caller
        if key not in _BENCH_KEYS:
            problems.append(f"{where}:{line}: unknown {what} key {key!r}.{_suggest(key, _BENCH_KEYS)}")
        elif key == "dataset":
            if not isinstance(value, str):
                problems.append(f"{where}:{line}: {what} dataset must be an entry name.")
            values[key] = str(value)
        elif key in ("seed", "seeds", "bootstrap"):
            low = {"seed": None, "seeds": 1, "bootstrap": 0}[key]
            high = MAX_BOOTSTRAP if key == "bootstrap" else None
            if not isinstance(value, int) or isinstance(value, bool) or (low is not None and value < low) or (high is not None and value > high):
                bound = f" >= {low} and <= {high}" if high is not None else "" if low is None else f" >= {low}"
                problems.append(f"{where}:{line}: {what} {key} must be an integer{bound}.")
            values[key] = value
        elif key == "finetune":
            if value is not None and not isinstance(value, str):
                problems.append(f"{where}:{line}: {what} finetune must name a finetune entry (or be null).")
            values[key] = value
        elif key == "rank_by":
            if not isinstance(value, str) or not 2 <= len(value.split(".")) <= 3:
                problems.append(f"{where}:{line}: {what} rank_by must be METRIC.VALUE or STAGE.METRIC.VALUE, e.g. coco.AP50mask.")
            values[key] = value
        elif key == "backbones" and value == "all":
            values[key] = "all"
        elif not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{where}:{line}: {what} {key} must be a list of entry names.")
        else:
            values[key] = tuple(value)
    return values


def _check_bench(registry: Registry, problems: list[str]) -> None:
    """Every entry the bench defaults name exists (the plain defaults and each device's)."""
    for device in (None, *registry.bench.devices):
        _check_bench_names(registry, registry.bench.for_device(device) if device else registry.bench, device, problems)


def _check_bench_names(registry: Registry, b: BenchDefaults, device: str | None, problems: list[str]) -> None:
    lines = registry.bench_lines
    # a default nobody wrote (e.g. the dataset synth-instances) is blamed on the last file read
    unset = (registry.files[-1] if registry.files else "<registry>", 1)

    def where(key: str) -> tuple[str, int]:
        return lines.get(f"{device}.{key}") or lines.get(key, unset) if device else lines.get(key, unset)

    what = f"bench {device}" if device else "bench"
    named = {"maskers": b.maskers, "students": b.students, "metrics": b.metrics}
    if b.backbones != "all":
        named["backbones"] = b.backbones  # type: ignore[assignment]
    for kind, names in named.items():
        for name in names:
            if name not in registry.entries[kind]:
                src, line = where(kind)
                problem = f"{src}:{line}: {what} {kind} names unknown entry {name!r}.{_suggest(name, registry.entries[kind])}"
                if problem not in problems:
                    problems.append(problem)
    if isinstance(b.rank_by, str) and len(b.rank_by.split(".")) in (2, 3):
        parts = b.rank_by.split(".")
        stage, metric = (parts[0], parts[1]) if len(parts) == 3 else (None, parts[0])
        src, line = where("rank_by")
        if stage not in (None, "pseudo-masks", "student"):
            problems.append(f"{src}:{line}: {what} rank_by stage {stage!r} is not pseudo-masks or student.")
        if metric not in registry.entries["metrics"]:
            problem = f"{src}:{line}: {what} rank_by names unknown metric entry {metric!r}.{_suggest(metric, registry.entries['metrics'])}"
            if problem not in problems:
                problems.append(problem)
    if b.finetune is not None and b.finetune not in registry.finetune:
        src, line = where("finetune")
        problems.append(f"{src}:{line}: {what} finetune names unknown finetune entry {b.finetune!r}.{_suggest(b.finetune, registry.finetune)}")
    if b.dataset not in registry.entries["datasets"]:
        src, line = where("dataset")
        problems.append(f"{src}:{line}: {what} dataset {b.dataset!r} is not a datasets entry.{_suggest(b.dataset, registry.entries['datasets'])}")


def ensemble_members(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """An ensemble masker entry's ``members`` as ``(backbone entry, masker entry)`` pairs."""
    pairs = []
    for member in params.get("members") or ():
        backbone, _, masker = str(member).partition("/")
        pairs.append((backbone.strip(), masker.strip()))
    return pairs


def _check_ensembles(registry: Registry, host: PluginHost, problems: list[str]) -> None:
    """Ensemble masker entries name existing ``backbone/masker`` pairs of feature maskers."""
    for entry in registry.entries["maskers"].values():
        spec = host.spec("maskers", entry.plugin)
        if not getattr(spec, "ensemble", False):
            continue
        at = f"{entry.where()}: masker entry {entry.name!r}: members"
        raw = list(registry.resolved_params(entry, host).get("members") or ())
        pairs = ensemble_members({"members": raw})
        if len(pairs) < 2:
            problems.append(f"{at} must name at least two 'backbone/masker' pairs (an ensemble of one is its member), got {raw!r}.")
        if len(set(pairs)) != len(pairs):
            problems.append(f"{at} lists a pair twice: {raw!r}.")
        for text, (backbone, masker) in zip(raw, pairs, strict=True):
            if not backbone or not masker or "/" in masker:
                problems.append(f"{at}: {text!r} is not 'backbone/masker' (two entry names and one '/').")
                continue
            if backbone not in registry.entries["backbones"]:
                problems.append(f"{at}: {text!r}: {backbone!r} is not a backbones entry.{_suggest(backbone, registry.entries['backbones'])}")
            if masker not in registry.entries["maskers"]:
                problems.append(f"{at}: {text!r}: {masker!r} is not a maskers entry.{_suggest(masker, registry.entries['maskers'])}")
            elif getattr(host.spec("maskers", registry.entries["maskers"][masker].plugin), "ensemble", False):
                problems.append(f"{at}: {text!r}: {masker!r} is itself an ensemble; members must be maskers of features.")


def _check_finetune_students(registry: Registry, host: PluginHost, problems: list[str]) -> None:
    """A ``finetune:`` entry's ``student`` overrides, over each student entry they may be applied to,
    pass the check the student's factory runs (:func:`~uisbench.types.review_params`)."""
    for settings in registry.finetune.values():
        found: dict[tuple[str | None, str], list[str]] = {}  # (parameter, message) -> student entries
        for entry in registry.entries["students"].values() if settings.student else ():
            spec = host.spec("students", entry.plugin)
            if set(settings.student) - {p.name for p in spec.params}:
                continue  # written for another student plugin: the few-label stage skips it, saying so
            try:
                findings = review_params(spec.params, {**entry.params, **settings.student}, spec.check).findings
            except Exception as err:  # a broken check must not hide the entry's line
                findings = [("check", None, f"the plugin's parameter check failed ({type(err).__name__}: {err})")]
            for _, key, message in findings:
                found.setdefault((key, message), []).append(entry.name)
        for (key, message), names in found.items():
            line = settings.student_lines.get(key, settings.line) if key else settings.line
            what = f"student parameter {key!r} " if key else ""
            over = ", ".join(map(repr, names))
            problems.append(f"{settings.source}:{line}: finetune entry {settings.name!r}: {what}{message} "
                            f"(over student entr{'ies' if len(names) > 1 else 'y'} {over}).")


def load_registry(
    paths: Sequence[str | os.PathLike[str]] | None = None,
    host: PluginHost | None = None,
    *,
    include_default: bool = True,
    check_files: bool = False,
) -> Registry:
    """Load and validate registry files (the shipped one first unless ``include_default=False``).

    With ``host`` given, entries are validated against the installed plugins' schemas; with
    ``check_files`` (``platform validate``) their path parameters must name existing files, seen
    with ``stat`` only (a run leaves that to the factories, where a missing release is "unavailable").
    Raises :class:`ConfigError` listing every problem.
    """
    files: list[Path] = []
    if include_default:
        files.append(default_registry_path())
    files.extend(Path(p) for p in paths or ())
    registry = Registry()
    problems: list[str] = []
    digest = hashlib.sha256()
    for path in files:
        if not path.exists():
            raise ConfigError(f"{path}: registry file not found; check --registry or UISBENCH_REGISTRY.")
        digest.update(_parse_file(path, registry, host, problems, check_files))
        registry.files.append(str(path))
    if host is not None:
        _check_bench(registry, problems)
    registry.sha256 = digest.hexdigest()
    if host is not None and not problems:
        registry.add_implicit_entries(host)
        _check_ensembles(registry, host, problems)
        _check_finetune_students(registry, host, problems)
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in the registry:\n" + "\n".join(problems), problems)
    return registry
