"""big_vision / JAX ViT ``.npz`` archives (SigLIP's official release) loaded into a timm model.

Private helper of :mod:`uisbench_builtins.timm_vit`. The archive is never unpickled:
:func:`uisbench.weights.read_npz` checks it from its headers, :func:`load_npz` hands it to timm's own
big_vision loader and checks that every parameter was set and every array read. torch is imported
inside functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import uisbench

from ._families import Family
from ._family_inspect import describe_npz
from ._family_layouts import mismatch_message, recognise

__all__ = ["load_npz"]


class _ReadLog:
    """A read-only file that notes where each read starts. Opening a zip member reads its local
    header (``zipfile.sizeFileHeader`` bytes at the member's ``header_offset``) first, so the members
    numpy opened while timm loaded are known exactly, without wrapping numpy or timm."""

    def __init__(self, path: Path):
        import io

        self._fh = io.FileIO(path, "rb")
        self.name = str(path)
        self.reads: set[tuple[int, int]] = set()

    def read(self, size: int = -1) -> bytes:
        self.reads.add((self._fh.tell(), size))
        return self._fh.read(size)

    def __getattr__(self, name: str) -> Any:  # seek, tell, seekable, close ...
        return getattr(self._fh, name)

    def __repr__(self) -> str:
        return repr(self.name)


def load_npz(net: Any, archive: Any, fam: Family | None, source: str, model_name: str) -> list[str]:
    """Load a big_vision/JAX ViT ``.npz`` into timm model ``net`` with timm's own loader
    (``VisionTransformer.load_pretrained`` = ``vision_transformer._load_weights``: flax kernels
    transposed, attention heads flattened, position embeddings resampled), strictly:

    - the file's width, depth, heads, patch size, CLS token and MAP head are checked against the
      model first (timm's loader would leave extra blocks unread and flatten any head split);
    - every parameter of the model is set by the file (they are NaN before the load);
    - every array of the image tower is read by timm, bar the projection head (the zip members
      numpy opened are logged at the file level: :class:`_ReadLog`).

    numpy reads the archive with ``allow_pickle=False`` (timm's ``_load_npz_checkpoint``); the
    archive was checked member by member before (:func:`uisbench.weights.read_npz`).
    """
    import zipfile

    import torch

    if not hasattr(net, "load_pretrained") or not hasattr(net, "blocks") or not hasattr(net, "attn_pool"):
        raise uisbench.ConfigError(
            f"weights file {source}: a big_vision/JAX ViT .npz loads into a timm VisionTransformer (e.g. model: "
            f"vit_base_patch16_siglip_224), not {model_name!r}."
        )
    found = recognise(archive)
    if fam is not None and found is not fam:
        raise uisbench.ConfigError(mismatch_message(archive, fam, source, "it is a .npz archive of big_vision/JAX arrays"))
    info = describe_npz(archive, found)
    if "problem" in info:
        raise uisbench.ConfigError(f"weights file {source}: {info['problem']}.")
    prefix = info["npz_prefix"]
    ps = net.patch_embed.patch_size
    have = {"width": int(net.embed_dim), "depth": len(net.blocks), "heads": int(net.blocks[0].attn.num_heads),
            "patch_size": int(ps[0] if isinstance(ps, (tuple, list)) else ps), "cls_token": net.cls_token is not None,
            "map_head": net.attn_pool is not None}
    wrong = [f"{k} {info[k]} in the file, {v} in the model" for k, v in have.items() if info.get(k) is not None and info[k] != v]
    if wrong:
        raise uisbench.ConfigError(
            f"weights file {source} does not fit timm model {model_name!r}: {'; '.join(wrong)}. "
            f"`platform weights inspect {source}` prints the entry that fits (model {info.get('model')!r}, depth {info['depth']}, "
            f"{info['heads']} heads)."
        )
    with torch.no_grad():
        for param in net.parameters():
            param.fill_(float("nan"))  # what the file leaves unset stays NaN
    log = _ReadLog(archive.path)
    try:
        with torch.no_grad():
            net.load_pretrained(log, prefix=prefix)
    except KeyError as err:
        missing = str(err.args[0]).removesuffix(" is not a file in the archive")  # numpy's NpzFile message
        raise uisbench.ConfigError(
            f"weights file {source}: the array {missing!r} that timm's big_vision loader reads for {model_name!r} is not in "
            "the archive; check that `model:` names the architecture it was trained with."
        ) from None
    except (RuntimeError, ValueError) as err:
        raise uisbench.ConfigError(
            f"weights file {source}: timm's vision_transformer._load_weights could not load it into {model_name!r} ({err}); "
            "check `model:` and `model_kwargs:`."
        ) from None
    finally:
        log.close()
    with zipfile.ZipFile(archive.path) as zf:
        at = {i.header_offset: i.filename[: -len(".npy")] for i in zf.infolist()}
    read = {at[pos] for pos, size in log.reads if size == zipfile.sizeFileHeader and pos in at}
    unset = [k for k, v in net.state_dict().items() if v.is_floating_point() and bool(torch.isnan(v).any())]
    head = {f"{prefix}{h}/{w}" for h in ("head", "pre_logits") for w in ("kernel", "bias")}
    unread = sorted(k for k in archive if k.startswith(prefix) and k not in read and k not in head)
    if unset or unread:
        parts = [f"weights file {source} does not fit timm model {model_name!r}:"]
        if unset:
            parts.append(f"not set by the file: {', '.join(unset[:12])}{' ...' if len(unset) > 12 else ''};")
        if unread:
            parts.append(f"arrays timm's loader did not read: {', '.join(unread[:12])}{' ...' if len(unread) > 12 else ''};")
        parts.append("check that `model:` (and `model_kwargs:`) name the architecture this archive was trained with.")
        raise uisbench.ConfigError(" ".join(parts))
    return list(info["notes"]) + [f"loaded by timm's vision_transformer._load_weights: {len(read)} arrays, every array of '{prefix}' "
                                  "but the projection head"]
