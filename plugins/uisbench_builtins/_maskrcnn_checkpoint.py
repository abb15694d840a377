"""What the ``maskrcnn`` student keeps between calls: its checkpoint, RNG states, run key and
self-training targets, and how a resume is checked before anything is restored.

Private helper of :mod:`uisbench_builtins.maskrcnn` (whose docstring says what a resume promises);
torch, numpy and random are imported inside functions.

Files in the fit's work directory:

- :data:`CHECKPOINT` (``torch.save``, zip format, read only by torch's weights-only unpickler): a dict
  ``format`` (:data:`FORMAT`), ``key`` (:func:`run_key`), ``round``, ``iteration`` (done in that
  round), ``model``, ``optimizer``, ``scheduler`` (state dicts), ``rng`` (:func:`rng_state`) and
  ``history`` (what the provenance reports), written atomically by :func:`write_checkpoint`.
- ``maskrcnn-targets-round{r}.json`` (:func:`targets_file`): self-training round ``r``'s targets,
  ``{"key", "info", "targets"}``, checked against the run key when read.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import uisbench

CHECKPOINT = "maskrcnn-checkpoint.pt"
#: 2: RNG states as lists and numbers, so that the weights-only unpickler reads the file
FORMAT = 2
#: How every file torch.save writes (zip format) begins; anything else is not ours and is not unpickled at all.
_ZIP_MAGIC = b"PK\x03\x04"

_NOT_IN_RUN_KEY = frozenset({"num_workers", "checkpoint_every", "predict_batch_size", "feature_cache_mb"})
#: Enters the run key: 2 = anchors and proposals sampled per image from the sample's seed; 3 = on CPU
#: one forward and backward per image, gradients summed in float64 (a checkpoint of an earlier
#: recipe is not continued with the new one).
_RECIPE = 3


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (the one rule: uisbench.io.json_default)."""
    return json.loads(json.dumps(value, default=uisbench.io.json_default))


def run_key(config, backbone: uisbench.Backbone | None, dataset: uisbench.Dataset,
            pseudo: Mapping[int, Sequence[uisbench.Prediction]], seed: int, init_key: str | None = None) -> str:
    """Which run a checkpoint (or a targets file) belongs to: the training settings, seed, data,
    pseudo-masks, the frozen backbone and the fit it fine-tunes (``init_key``)."""
    # Parameters that change how, not what, is computed stay out: a run killed with 4 loader
    # workers may resume with 8 (batches depend only on seed, round and iteration), and so is the
    # number of ranks (each builds its share of the same global batch).
    training = {k: v for k, v in config.as_params().items() if k not in _NOT_IN_RUN_KEY}
    h = hashlib.sha256()
    h.update(json.dumps(jsonable(training), sort_keys=True).encode())
    h.update(f"seed={seed}/fp={dataset.fingerprint()}/recipe={_RECIPE}/init={init_key}".encode())
    if backbone is not None:
        h.update(json.dumps(jsonable(backbone.provenance()), sort_keys=True).encode())
    for image_id in sorted(pseudo):
        for m in pseudo[image_id]:
            counts = m.segmentation.get("counts")
            h.update(f"{image_id}:{m.segmentation.get('size')}:{counts}".encode())
    return h.hexdigest()[:20]


# ---- RNG states ------------------------------------------------------------------------------------


def rng_state(device: str = "cpu") -> dict[str, Any]:
    """The RNG states of torch, numpy and python in forms torch's weights-only unpickler accepts:
    numpy's ``(name, uint32 keys, pos, has_gauss, gauss)`` and python's ``(version, internal, gauss)``
    tuples become dicts of str, int, float and lists of ints. On CUDA, the state of the training
    device alone (not of every visible GPU: a resume may see other GPUs, or fewer)."""
    import random

    import numpy as np
    import torch

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "keys": [int(k) for k in keys], "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: str = "cpu") -> None:
    """Restore what :func:`rng_state` saved, bit for bit (a CUDA state only on a CUDA device)."""
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"], device)


def restore_rng(state: Any, device: str = "cpu") -> str | None:
    """Set the saved RNG states; if they are malformed, put the current ones back and say why."""
    current = rng_state(device)
    try:
        set_rng_state(state, device)
    except Exception as err:  # whatever numpy, torch or random raise on a malformed state
        set_rng_state(current, device)
        return f"holds a malformed RNG state ({type(err).__name__}: {err})"
    return None


# ---- the checkpoint file -----------------------------------------------------------------------------


def write_checkpoint(workdir: Path, *, key: str, round_index: int, iteration: int, model, optimizer, scheduler,
                     history: dict[str, Any], device: str) -> None:
    """Write :data:`CHECKPOINT` atomically, with the RNG states of this moment."""
    import torch

    state = {
        "format": FORMAT,
        "key": key,
        "round": round_index,
        "iteration": iteration,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(device),
        "history": history,
    }
    with uisbench.atomic_path(workdir / CHECKPOINT) as tmp:
        torch.save(state, tmp)


def _unpickle_checkpoint(path: Path) -> tuple[Any, str | None]:
    """``(contents, None)``, or ``(None, why it cannot be read)``.

    Only torch's weights-only unpickler ever sees the file (a crafted one must not run code), and only
    when it starts like a torch.save file: a plain pickle or random bytes are not unpickled at all.
    """
    import torch

    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_ZIP_MAGIC))
    except OSError as err:
        return None, f"cannot be read ({err.strerror})"
    if head != _ZIP_MAGIC:
        return None, "is not a torch checkpoint (not written by uisbench, or damaged)"
    try:
        return torch.load(path, map_location="cpu", weights_only=True), None
    except Exception as err:  # damaged, or holding objects the safe loader refuses: all the same here
        return None, (f"cannot be read by torch's weights-only loader ({type(err).__name__}): a checkpoint of an "
                      "older uisbench, a damaged file, or not written by uisbench")


def _checkpoint_problem(state: Any, key: str) -> str | None:
    """Why unpickled ``state`` is not a usable checkpoint of the run ``key``, or ``None``."""
    fields = {"round": int, "iteration": int, "model": dict, "optimizer": dict, "scheduler": dict, "rng": dict,
              "history": dict}
    if not isinstance(state, dict):
        return "is not a maskrcnn training checkpoint"
    if state.get("format") != FORMAT:
        return f"has checkpoint format {state.get('format')!r:.40}; this version writes format {FORMAT}"
    if state.get("key") != key:
        return "belongs to another run (other data, seed or parameters)"
    if any(not isinstance(state.get(k), t) or isinstance(state.get(k), bool) for k, t in fields.items()):
        return "is damaged (fields missing or of the wrong type)"
    rounds = state["history"].get("rounds")
    if not (state["round"] >= 0 and state["iteration"] >= 0 and isinstance(rounds, list)
            and len(rounds) > state["round"] and all(isinstance(r, dict) for r in rounds)):
        return "is damaged (its round, iteration and history do not fit together)"
    return None


def read_checkpoint(path: Path, key: str, *, warn: bool = True) -> dict[str, Any] | None:
    """The training state in ``path`` if it is this run's and well-formed, else ``None`` with a warning
    naming the file (``warn``: rank 0 speaks for all): anything unusable means starting afresh (the
    next checkpoint overwrites it)."""
    state, problem = _unpickle_checkpoint(path)
    problem = problem or _checkpoint_problem(state, key)
    if problem is not None:
        if warn:
            warnings.warn(f"maskrcnn: {path} {problem}; starting afresh.", stacklevel=3)
        return None
    return state


def read_init_state(init_from: Path | None) -> dict[str, Any] | None:
    """The final training state of the fit in ``init_from`` (weights-only read), for fine-tuning."""
    if init_from is None:
        return None
    path = Path(init_from) / CHECKPOINT
    state, problem = _unpickle_checkpoint(path) if path.exists() else (None, "does not exist")
    if problem is None and not (isinstance(state, dict) and state.get("format") == FORMAT and isinstance(state.get("model"), dict)):
        problem = "is not a finished maskrcnn training checkpoint"
    if problem is not None:
        raise uisbench.DataError(f"maskrcnn: cannot fine-tune from {path}: it {problem}; rerun the student stage (--force student).")
    return state


# ---- resuming --------------------------------------------------------------------------------------


def _same_layout(saved: Any, fresh: Any) -> bool:
    """``saved`` has ``fresh``'s types, keys and lengths all the way down (values may differ)."""
    if type(saved) is not type(fresh):
        return False
    if isinstance(fresh, dict):
        return saved.keys() == fresh.keys() and all(_same_layout(saved[k], fresh[k]) for k in fresh)
    if isinstance(fresh, (list, tuple)):
        return len(saved) == len(fresh) and all(_same_layout(a, b) for a, b in zip(saved, fresh, strict=True))
    return True


def resume_problem(state: dict[str, Any], model, fresh_optimizer: Callable[[int], tuple[Any, Any]], workdir: Path,
                   key: str) -> str | None:
    """Why this run's checkpoint cannot be restored into the freshly built ``model``, or ``None``.
    ``fresh_optimizer(round)``: the optimiser and scheduler a round starts with, whose layout the
    saved ones must have.

    Checked before anything is restored, so a damaged file means starting afresh rather than a
    crash halfway through loading (or, worse, in the middle of training).
    """
    import torch

    expected, saved = model.state_dict(), state["model"]
    if saved.keys() != expected.keys() or any(
        not isinstance(saved[k], torch.Tensor) or saved[k].shape != v.shape or saved[k].dtype != v.dtype
        for k, v in expected.items()
    ):
        return "holds model weights that do not fit this model"
    r = state["round"]
    opt, sched = fresh_optimizer(r)
    fresh_opt, fresh_sched = opt.state_dict(), sched.state_dict()
    saved_opt = state["optimizer"]
    params = [q for q in model.parameters() if q.requires_grad]
    groups = saved_opt.get("param_groups")
    if not (_same_layout(groups, fresh_opt["param_groups"])
            and [g["params"] for g in groups] == [g["params"] for g in fresh_opt["param_groups"]]
            and isinstance(saved_opt.get("state"), dict) and set(saved_opt["state"]) <= set(range(len(params)))):
        return "holds an optimizer state that does not fit this model"
    for index, slots in saved_opt["state"].items():  # momentum / Adam moments: the parameter's shape, or a scalar
        if not isinstance(slots, dict) or any(
            not isinstance(v, torch.Tensor) or (v.dim() > 0 and v.shape != params[index].shape) for v in slots.values()
        ):
            return "holds an optimizer state that does not fit this model"
    if not _same_layout(state["scheduler"], fresh_sched):
        return "holds a malformed learning-rate schedule"
    if r > 0 and read_targets(workdir, r, key) is None:
        return f"needs {targets_file(workdir, r).name} (round {r}'s targets), which is missing or unreadable"
    return None


def agree_on_resume(state: dict[str, Any] | None, path: Path, ranks, failure: BaseException | None = None) -> None:
    """Every rank resumes from the same point, or every rank stops: ranks that read different
    checkpoints (work directories that are not one shared folder) would train different models,
    and a rank that failed to set up would leave the others waiting in a collective."""
    point = None if state is None else (int(state["round"]), int(state["iteration"]))
    mine = ("failed", f"{type(failure).__name__}: {failure}") if failure is not None else point
    points = ranks.all_gather(mine)
    if failure is not None:
        raise failure
    failed = [(r, p[1]) for r, p in enumerate(points) if isinstance(p, tuple) and p and p[0] == "failed"]
    if failed:
        raise RuntimeError(f"maskrcnn: torchrun rank {failed[0][0]} failed to set up training ({failed[0][1]})")
    if any(p != points[0] for p in points):
        seen = ", ".join(f"rank {r}: {'none' if p is None else f'round {p[0]} iteration {p[1]}'}" for r, p in enumerate(points))
        raise uisbench.ConfigError(
            f"maskrcnn: the torchrun ranks read different checkpoints at {path} ({seen}); every rank must see "
            "the same work directory: put --workdir on a file system that all nodes share."
        )


# ---- self-training targets -------------------------------------------------------------------------


def targets_file(workdir: Path, r: int) -> Path:
    return workdir / f"maskrcnn-targets-round{r}.json"


def read_targets(workdir: Path, r: int, key: str) -> tuple[dict[int, list[uisbench.Prediction]], dict[str, Any]] | None:
    """Round ``r``'s saved targets and their info if the file is this run's and well-formed, else ``None``
    (a work directory may come from elsewhere: its files are checked, not trusted)."""
    path = targets_file(workdir, r)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("key") != key:
            return None
        targets = {int(k): [uisbench.Prediction.from_coco(x) for x in v] for k, v in saved["targets"].items()}
        return targets, dict(saved["info"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):  # missing, not json, malformed
        return None


def load_targets(workdir: Path, r: int, key: str) -> dict[int, list[uisbench.Prediction]]:
    saved = read_targets(workdir, r, key)
    if saved is None:  # checked by resume_problem; only a file changed since then gets here
        raise uisbench.DataError(
            f"maskrcnn: {targets_file(workdir, r)} is missing or unreadable; delete {workdir / CHECKPOINT} "
            "to train afresh."
        )
    return saved[0]


def write_targets(workdir: Path, r: int, key: str, info: dict[str, Any],
                  targets: Mapping[int, Sequence[uisbench.Prediction]]) -> None:
    uisbench.atomic_write_json(
        targets_file(workdir, r),
        {"key": key, "info": info, "targets": {str(i): [m.to_coco() for m in v] for i, v in targets.items()}},
        indent=None,
    )
