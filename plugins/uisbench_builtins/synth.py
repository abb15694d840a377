"""``synth-instances``: a procedurally generated multi-instance benchmark (no download).

Scenes of six object classes, each with its own shape, texture and colour family, on textured
backgrounds. Many images hold two or more instances of *one* class that touch or overlap (can the
features tell same-class instances apart?); others hold a single instance, so both halves of the
instance-awareness split exist. Ground truth is exact: the visible part of every instance as a
COCO RLE mask, its box, its class name in ``GroundTruth.category``, ``iscrowd=0``.

Every image is generated on demand from ``(seed, split, image id)`` alone (numpy's
``SeedSequence``), vectorised, and kept in a small LRU cache: the same seed and knobs give the
same pixels on every run, and any subset of ids (a shard) costs only its own images.
``platform data synth --out DIR`` writes the same images as a COCO folder.

Example registry entries::

    synth-instances: {plugin: synth-instances}                 # CPU-sized default
    synth-instances-large: {plugin: synth-instances, preset: large}
    synth-hard: {plugin: synth-instances, difficulty: hard, overlap: 0.8, max_instances: 6}
"""

from __future__ import annotations

import colorsys
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import uisbench
from uisbench.data import apply_preset, digest

#: Bump when the generator's output changes: it enters the fingerprint and so every cache key.
GENERATOR_VERSION = "1"

#: name -> (shape, texture, hue in degrees). Each class has its own look; instances of one class
#: differ only by size, pose, brightness and a little hue.
CLASSES: dict[str, tuple[str, str, float]] = {
    "disc": ("disc", "shaded", 2.0),  # red, lit from one side
    "square": ("box", "stripes", 215.0),  # blue, striped
    "triangle": ("triangle", "checker", 125.0),  # green, checkered
    "star": ("star", "dots", 45.0),  # yellow, dotted
    "blob": ("blob", "waves", 285.0),  # purple, wavy
    "ring": ("ring", "rings", 180.0),  # cyan, banded
}

#: Per-difficulty look: hue jitter, rim darkening, background saturation/contrast/texture,
#: pixel noise, radius range (fraction of the image size), visible share an occluded
#: instance must keep.
DIFFICULTY: dict[str, dict[str, Any]] = {
    "easy": dict(hue_jitter=0.015, rim=0.5, bg_sat=0.12, bg_contrast=0.15, bg_texture=0.03, noise=2.0,
                 radius=(0.10, 0.25), keep=0.6),
    "medium": dict(hue_jitter=0.03, rim=0.35, bg_sat=0.22, bg_contrast=0.25, bg_texture=0.06, noise=4.0,
                   radius=(0.08, 0.22), keep=0.5),
    "hard": dict(hue_jitter=0.05, rim=0.15, bg_sat=0.35, bg_contrast=0.35, bg_texture=0.12, noise=7.0,
                 radius=(0.05, 0.18), keep=0.4),
}

SPLIT_STREAM = {"train": 1, "val": 2}

PRESETS: dict[str, dict[str, Any]] = {
    # CPU default, as the plugin's defaults (listed for `--size small`).
    "small": {"size": 128, "train_images": 48, "val_images": 24, "max_instances": 4},
    # GPU runs: thousands of images at 480 px, more crowded scenes.
    "large": {"size": 480, "train_images": 4000, "val_images": 1000, "max_instances": 8},
}


@dataclass(frozen=True)
class SynthConfig:
    """The knobs; together with the split they fully determine every image. Their defaults are the
    :data:`PARAMS` ones (:func:`build` fills them in)."""

    size: int
    images: int
    min_instances: int
    max_instances: int
    overlap: float
    single_fraction: float
    difficulty: str
    seed: int
    classes: tuple[str, ...]

    def check(self) -> None:
        problems = self.problems()
        if problems:
            raise uisbench.ConfigError("synth-instances: " + "; ".join(problems) + ".")

    def problems(self) -> list[str]:
        """What the bounds of :data:`PARAMS` (checked by :func:`build`) cannot say."""
        problems = []
        if self.size * self.size > uisbench.data.DEFAULT_MAX_IMAGE_PIXELS:  # a registry typo must not eat the memory
            limit = uisbench.data.DEFAULT_MAX_IMAGE_PIXELS
            problems.append(f"size {self.size} makes {self.size**2:,} pixels per image, over the {limit:,} of "
                            f"uisbench.data.DEFAULT_MAX_IMAGE_PIXELS; use size <= {math.isqrt(limit)}")
        if self.min_instances > self.max_instances:
            problems.append(f"need min_instances <= max_instances (got {self.min_instances}, {self.max_instances})")
        unknown = [c for c in self.classes if c not in CLASSES]
        if unknown or not self.classes:
            problems.append(f"classes must be a non-empty subset of {', '.join(CLASSES)} (got {list(self.classes)})")
        return problems


# ---------------------------------------------------------------------------------------------
# Generation (pure numpy, vectorised over pixels)
# ---------------------------------------------------------------------------------------------


def _rgb(h: float, s: float, v: float):
    import numpy as np

    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)), dtype=np.float32)


def _upsample(grid, height: int, width: int):
    """Bilinear upsampling of a small ``(gh, gw)`` grid to ``(height, width)``."""
    import numpy as np

    gh, gw = grid.shape
    ys = np.linspace(0.0, gh - 1.0, height, dtype=np.float32)
    xs = np.linspace(0.0, gw - 1.0, width, dtype=np.float32)
    y0 = np.minimum(ys.astype(np.int64), gh - 2)
    x0 = np.minimum(xs.astype(np.int64), gw - 2)
    wy = (ys - y0)[:, None]
    wx = (xs - x0)[None, :]
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - wx) + b * wx) * (1 - wy) + (c * (1 - wx) + d * wx) * wy


def _background(rng, size: int, look: dict[str, Any]):
    import numpy as np

    hue = rng.random()
    c0 = _rgb(hue, look["bg_sat"], rng.uniform(0.45, 0.8))
    c1 = _rgb(hue + rng.uniform(-0.15, 0.15), look["bg_sat"] * rng.uniform(0.5, 1.5),
              rng.uniform(0.45, 0.8) + look["bg_contrast"] * rng.choice([-1.0, 1.0]))
    cells = int(rng.integers(3, 7))
    t = _upsample(rng.random((cells, cells), dtype=np.float32), size, size)
    img = c0[None, None, :] + (c1 - c0)[None, None, :] * t[..., None]
    # a fine grain (wood / fabric) of random orientation, warped by the low-frequency field
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(0.03, 0.09) * size
    coords = np.arange(size, dtype=np.float32) * np.float32(2 * math.pi / period)
    phase = coords[None, :] * np.float32(math.cos(angle)) + coords[:, None] * np.float32(math.sin(angle))
    grain = np.sin(phase + np.float32(4.0) * t)
    img += (np.float32(look["bg_texture"]) * grain)[..., None]
    return img.astype(np.float32, copy=False)


def _local(shape: str, u, v, params: dict[str, Any]):
    """Level function of a shape in its own frame: inside where ``< 1``, the rim near ``1``."""
    import numpy as np

    r = np.sqrt(u * u + v * v)
    if shape == "disc":
        return r
    if shape == "box":
        return np.maximum(np.abs(u), np.abs(v)) / 0.8
    if shape == "triangle":
        return np.maximum(-v / 0.5, (math.sqrt(3.0) * np.abs(u) + v) / 1.0)
    phi = np.arctan2(v, u)
    if shape == "star":
        return r / (0.62 + 0.38 * np.cos(5.0 * phi + params["phase"]))
    if shape == "blob":
        radius = 0.78 + sum(a * np.cos(k * phi + p) for k, a, p in params["harmonics"])
        return r / radius
    if shape == "ring":
        return np.abs(r - 0.75) / 0.25
    raise ValueError(shape)


def _texture(kind: str, u, v, params: dict[str, Any]):
    """Texture value in ``[0, 1]`` in the instance's frame (it turns and scales with the object)."""
    import numpy as np

    p1, p2 = params["tex_phase"]
    if kind == "shaded":
        lx, ly = params["light"]
        return np.clip(0.45 + 0.5 * (u * lx + v * ly), 0.0, 1.0)
    if kind == "stripes":
        return 0.5 + 0.5 * np.sin(u * 2.6 * 2 * math.pi + p1)
    if kind == "checker":
        return ((np.floor(u * 2.5 + p1) + np.floor(v * 2.5 + p2)) % 2).astype(np.float32)
    if kind == "dots":
        return (np.sin(u * 9.0 + p1) * np.sin(v * 9.0 + p2) > 0.45).astype(np.float32)
    if kind == "waves":
        return 0.5 + 0.5 * np.sin(u * 7.0 + 1.5 * np.sin(v * 5.0 + p2) + p1)
    if kind == "rings":
        return 0.5 + 0.5 * np.sin(np.sqrt(u * u + v * v) * 28.0 + p1)
    raise ValueError(kind)


class _Scene:
    """One generated image: pixels, the label map of visible instances and their classes."""

    __slots__ = ("image", "labels", "classes")

    def __init__(self, image, labels, classes: list[str]) -> None:
        self.image = image
        self.labels = labels
        self.classes = classes


def generate(cfg: SynthConfig, split: str, image_id: int) -> _Scene:
    """Generate image ``image_id`` of ``split``: a pure function of its arguments."""
    import numpy as np

    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), SPLIT_STREAM[split], int(image_id)]))
    look = DIFFICULTY[cfg.difficulty]
    size = cfg.size
    img = _background(rng, size, look)
    labels = np.full((size, size), -1, dtype=np.int16)

    # plan: one instance, or >= 2 of a main class plus distractors of other classes
    if cfg.max_instances == 1 or (cfg.min_instances == 1 and rng.random() < cfg.single_fraction):
        plan = [cfg.classes[int(rng.integers(len(cfg.classes)))]]
    else:
        n = int(rng.integers(max(2, cfg.min_instances), cfg.max_instances + 1))
        main = cfg.classes[int(rng.integers(len(cfg.classes)))]
        n_same = int(rng.integers(2, n + 1))
        others = [c for c in cfg.classes if c != main] or [main]
        plan = [main] * n_same + [others[int(rng.integers(len(others)))] for _ in range(n - n_same)]
        plan = [plan[i] for i in rng.permutation(len(plan))]

    min_area = max(16.0, 0.0015 * size * size)
    lo, hi = look["radius"]
    placed: list[tuple[str, float, float, float]] = []  # class, cx, cy, radius
    classes: list[str] = []
    visible: list[int] = []
    full: list[int] = []
    for cls in plan:
        shape, texture, hue = CLASSES[cls]
        for _attempt in range(30):
            radius = size * math.exp(rng.uniform(math.log(lo), math.log(hi)))
            anchors = [p for p in placed if p[0] == cls]
            if anchors and rng.random() < cfg.overlap:  # touch or overlap a same-class instance
                _, ax, ay, ar = anchors[int(rng.integers(len(anchors)))]
                angle = rng.uniform(0, 2 * math.pi)
                dist = (ar + radius) * rng.uniform(0.55, 1.0)
                cx, cy = ax + dist * math.cos(angle), ay + dist * math.sin(angle)
            else:
                cx, cy = rng.uniform(0.5 * radius, size - 0.5 * radius, size=2)
            theta = rng.uniform(0, 2 * math.pi)
            aspect = rng.uniform(0.75, 1.3) if shape in ("disc", "box", "blob") else 1.0
            params = {
                "phase": rng.uniform(0, 2 * math.pi),
                "harmonics": [(k, rng.uniform(0.04, 0.14), rng.uniform(0, 2 * math.pi)) for k in (2, 3, 5)],
                "tex_phase": tuple(rng.uniform(0, 2 * math.pi, size=2)),
                "light": (math.cos(light := rng.uniform(0, 2 * math.pi)), math.sin(light)),
            }
            reach = radius * 1.35 * max(aspect, 1.0)
            x0, x1 = max(0, int(cx - reach)), min(size, int(math.ceil(cx + reach)) + 1)
            y0, y1 = max(0, int(cy - reach)), min(size, int(math.ceil(cy + reach)) + 1)
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
            c, s = math.cos(theta), math.sin(theta)
            u = (dx * c + dy * s) / radius
            v = (-dx * s + dy * c) / (radius * aspect)
            level = _local(shape, u, v, params)
            mask = level < 1.0
            area = int(mask.sum())
            if area < min_area:
                continue
            window = labels[y0:y1, x0:x1]
            lost = np.bincount(window[mask].astype(np.int64) + 1, minlength=len(classes) + 1)[1:]
            after = np.asarray(visible, dtype=np.int64) - lost
            if len(classes) and np.any((after < look["keep"] * np.asarray(full)) | (after < min_area)):
                continue  # would hide too much of an earlier instance: try another pose
            # paint: two tones of the class hue blended by the texture, darkened towards the rim
            h = hue / 360.0 + rng.normal(0.0, look["hue_jitter"])
            val = rng.uniform(0.55, 0.95)
            base = _rgb(h, rng.uniform(0.55, 0.9), val)
            accent = _rgb(h + 0.03, rng.uniform(0.4, 0.8), val * rng.uniform(0.45, 0.65))
            t = _texture(texture, u, v, params)[..., None]
            rim = 1.0 - look["rim"] * np.clip(level, 0.0, 1.0)[..., None] ** 6
            colour = (base * (1.0 - t) + accent * t) * rim
            img[y0:y1, x0:x1][mask] = colour[mask]
            window[mask] = len(classes)
            visible = [int(a) for a in after] + [area]
            full.append(area)
            classes.append(cls)
            placed.append((cls, cx, cy, radius))
            break

    img *= np.float32(255.0)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(look["noise"])
    pixels = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return _Scene(pixels, labels, classes)


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


class SynthInstances(uisbench.Dataset):
    """One split of the synthetic benchmark, generated lazily with an LRU cache of scenes."""

    has_ground_truth = True
    skip_bad_images = False

    def __init__(self, cfg: SynthConfig, split: str, cache_size: int = 128) -> None:
        if split not in SPLIT_STREAM:
            raise uisbench.UnknownNameError("split", split, SPLIT_STREAM, hint="synth-instances has train and val.")
        cfg.check()
        self.cfg = cfg
        self.split = split
        self.cache_size = max(0, int(cache_size))
        self.skipped: list[dict[str, Any]] = []
        self.max_dets = 100
        self.categories = list(cfg.classes)
        self._cache: OrderedDict[int, _Scene] = OrderedDict()
        self._ids = list(range(1, cfg.images + 1))

    def __repr__(self) -> str:
        return f"SynthInstances(split={self.split!r}, {self.cfg})"

    def __getstate__(self) -> dict[str, Any]:  # data-loader workers: do not ship the cache
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    def params(self) -> dict[str, Any]:
        """The knobs as a JSON-able dict (written to the COCO ``info`` block)."""
        return {**asdict(self.cfg), "classes": list(self.cfg.classes), "split": self.split,
                "generator_version": GENERATOR_VERSION}

    def scene(self, image_id: int) -> _Scene:
        if image_id not in self._cache:
            if not 1 <= int(image_id) <= self.cfg.images:
                raise uisbench.DataError(
                    f"synth-instances ({self.split}): no image id {image_id}; ids are 1..{self.cfg.images}."
                )
            self._cache[image_id] = generate(self.cfg, self.split, int(image_id))
            while len(self._cache) > max(1, self.cache_size):
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(image_id)
        return self._cache[image_id]

    def image_ids(self) -> list[int]:
        return list(self._ids)

    def record(self, image_id: int) -> uisbench.ImageRecord:
        if not 1 <= int(image_id) <= self.cfg.images:
            raise uisbench.DataError(f"synth-instances ({self.split}): no image id {image_id}; ids are 1..{self.cfg.images}.")
        return uisbench.ImageRecord(int(image_id), None, self.cfg.size, self.cfg.size)

    def load_image(self, image_id: int):
        return self.scene(image_id).image.copy()

    def ground_truth(self, image_id: int) -> list[uisbench.GroundTruth]:
        import numpy as np

        scene = self.scene(image_id)
        out = []
        for k, cls in enumerate(scene.classes):
            mask = (scene.labels == k).astype(np.uint8)
            rle = uisbench.masks.encode(mask)
            out.append(
                uisbench.GroundTruth(
                    id=int(image_id) * 1000 + k + 1,
                    image_id=int(image_id),
                    segmentation=rle,
                    bbox=uisbench.masks.to_bbox(rle),
                    area=float(mask.sum()),
                    iscrowd=0,
                    category=cls,
                )
            )
        return out

    def fingerprint(self) -> str:
        return digest("synth-instances", GENERATOR_VERSION, self.params())


PARAMS = (
    uisbench.Param("preset", "str", None, "named knob set: small (CPU default) or large (GPU: 4000/1000 images at 480 px)",
                   choices=tuple(PRESETS), nullable=True),
    uisbench.Param("size", "int", 128, "image side in pixels (square images)", ge=32),
    uisbench.Param("images", "int", None, "number of images of the split being built (overrides train_images/val_images)",
                   nullable=True, ge=1),
    uisbench.Param("train_images", "int", 48, "number of train images", ge=1),
    uisbench.Param("val_images", "int", 24, "number of val images", ge=1),
    uisbench.Param("min_instances", "int", 1, "fewest instances per image", ge=1),
    uisbench.Param("max_instances", "int", 4, "most instances per image", ge=1, le=30),
    uisbench.Param("overlap", "float", 0.6, "probability that a same-class instance touches/overlaps another",
                   ge=0, le=1),
    uisbench.Param("single_fraction", "float", 0.25, "share of single-instance images (when min_instances is 1)",
                   ge=0, le=1),
    uisbench.Param("difficulty", "str", "medium", "how similar instances and background look", choices=tuple(DIFFICULTY)),
    uisbench.Param("classes", "list[str]", None, f"subset of the classes ({', '.join(CLASSES)}); null = all",
                   nullable=True),
    uisbench.Param("seed", "int", 0, "generator seed; train and val use different streams of it", ge=0),
    uisbench.Param("cache_size", "int", 128, "generated images kept in memory (LRU)", ge=0),
    uisbench.Param("skip_bad_images", "bool", False, "accepted like every built-in dataset's; generated images are never bad"),
)


def _config(split: str, params: dict[str, Any]) -> tuple[SynthConfig, dict[str, Any]]:
    defaults = {p.name: p.default for p in PARAMS}
    params = apply_preset("synth-instances", PRESETS, defaults, {**defaults, **params})
    params = uisbench.complete_params("dataset synth-instances", PARAMS, params)  # types and bounds, as `platform validate`
    images = params["images"]
    if images is None:
        images = params["train_images"] if split == "train" else params["val_images"]
    return SynthConfig(
        size=int(params["size"]),
        images=int(images),
        min_instances=int(params["min_instances"]),
        max_instances=int(params["max_instances"]),
        overlap=float(params["overlap"]),
        single_fraction=float(params["single_fraction"]),
        difficulty=str(params["difficulty"]),
        seed=int(params["seed"]),
        classes=tuple(params["classes"] or CLASSES),
    ), params


def check_params(params: dict[str, Any]) -> Any:
    """Problems of both splits' configurations (``platform validate`` runs this)."""
    for split in ("train", "val"):
        for problem in _config(split, params)[0].problems():
            yield None, f"{split} split: {problem}"


def build(split: str = "val", **params: Any) -> SynthInstances:
    """Factory: ``build(split, **params)`` with the spec's defaults and an optional preset."""
    cfg, params = _config(split, params)
    dataset = SynthInstances(cfg, split, cache_size=int(params["cache_size"]))
    dataset.skip_bad_images = bool(params["skip_bad_images"])
    return dataset


@uisbench.hookimpl
def uisbench_datasets():
    yield uisbench.DatasetSpec(
        name="synth-instances", factory=build, params=PARAMS, presets=PRESETS, check=check_params, version=GENERATOR_VERSION,
        description="Procedural multi-instance scenes (6 classes, touching same-class instances), no download.",
    )
