"""How the ``timm`` plugin loads a weights file into a built timm model: :func:`load_file` sends each
layout where it is read (a big_vision ``.npz`` to timm's own loader, a Hugging Face folder through
its config, an SSL family's official file through its unwrapping, anything else as a state dict) and
:func:`load_weights` loads the result strictly, every mismatch listed in one error.

Private helper of :mod:`uisbench_builtins.timm_vit`, which re-exports :func:`load_weights`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import uisbench

from ._families import Family
from ._family_layouts import backbone_state_dict, check_model
from ._hf_layout import HFFolder


def load_weights(model: Any, state_dict: dict[str, Any], source: str, model_name: str) -> list[str]:
    """Convert ``state_dict`` with timm's checkpoint filter of ``model``'s family and load it strictly.

    Missing keys, unexpected keys and shape mismatches are all listed in one :class:`uisbench.ConfigError`.
    """
    notes: list[str] = []
    family = sys.modules.get(type(model).__module__)
    filter_fn = getattr(family, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state_dict = filter_fn(state_dict, model)
        except Exception as err:
            raise uisbench.ConfigError(
                f"weights file {source}: timm's {family.__name__}.checkpoint_filter_fn could not convert it for "
                f"{model_name!r} ({type(err).__name__}: {err}); check that `model:` names the architecture it was trained with."
            ) from err
        notes.append(f"converted by {family.__name__}.checkpoint_filter_fn")
    expected = model.state_dict()
    # the classifier timm names in the model's cfg (ViT: head, ResNet: fc, ConvNeXt: head.fc), built without one
    classifier = str((getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head")
    for name in dict.fromkeys((classifier.split(".")[0], "head")):
        if not any(k.startswith(name + ".") for k in expected) and any(k.startswith(name + ".") for k in state_dict):
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(name + ".")}
            notes.append(f"dropped the classification/projection head '{name}' (features only)")
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        problems = (
            [f"missing key {k}" for k in missing]
            + [f"unexpected key {k}" for k in unexpected]
            + [f"shape mismatch {s}" for s in shapes]
        )

        def show(items: list[str]) -> str:
            return ", ".join(items[:12]) + (f" ... ({len(items)} in all)" if len(items) > 12 else "")

        parts = [f"weights file {source} does not fit timm model {model_name!r}:"]
        if missing:
            parts.append(f"missing keys: {show(missing)};")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)};")
        if shapes:
            parts.append(f"shape mismatches: {show(shapes)};")
        parts.append("check that `model:` (and `model_kwargs:`) name the architecture this checkpoint was trained with.")
        raise uisbench.ConfigError(" ".join(parts), problems)
    model.load_state_dict(state_dict, strict=True)
    return notes


def load_file(net: Any, path: Path, checkpoint: Any, family: Family | None, model_name: str) -> tuple[str, str, list[str]]:
    """Load ``checkpoint`` (read from ``path``) into ``net``: ``(weights, weights_sha256, load_notes)``
    as :class:`~uisbench_builtins.timm_vit.TimmViT` records them."""
    if isinstance(checkpoint, uisbench.weights.NpzArchive):  # big_vision/JAX: timm's own .npz loader, strictly
        from ._family_npz import load_npz

        notes = load_npz(net, checkpoint, family, str(path), model_name)
        return str(path), uisbench.io.file_sha256(path), notes
    if isinstance(checkpoint, HFFolder):  # converted to timm's layout; net checked against its config.json
        state_dict, notes = checkpoint.fit(net, model_name)
    elif family is not None:
        state_dict, notes = backbone_state_dict(checkpoint, family, str(path))
    else:
        state_dict, notes = uisbench.weights.unwrap_state_dict(checkpoint, str(path))
    check_model(net, family, state_dict, str(path), model_name)
    notes += load_weights(net, state_dict, str(path), model_name)
    sha256 = checkpoint.sha256() if isinstance(checkpoint, HFFolder) else uisbench.io.file_sha256(path)
    return str(path), sha256, notes
