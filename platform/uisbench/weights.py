"""Reading weights files safely, and finding the state dict inside published checkpoints.

Weights files are downloaded and shared: nothing in one may run code. :func:`read_checkpoint` loads
``.safetensors`` files and ``torch.save`` files with torch's weights-only unpickler, and tells the
ways a file can be wrong apart (not a checkpoint, a plain pickle, damaged, holding Python objects) in
a :class:`uisbench.DataError` that says what to do. :func:`unwrap_state_dict` finds the network's
state dict in the layouts DINO, MAE, Lightning, DDP and torch.compile write. Example::

    checkpoint = uisbench.weights.read_checkpoint(path, param="weights")
    state_dict, notes = uisbench.weights.unwrap_state_dict(checkpoint, str(path))
    model.load_state_dict(state_dict)

NumPy ``.npz`` archives (big_vision's SigLIP and the JAX ViT releases) are read by :func:`read_npz`
(or ``read_checkpoint(path, npz=True)``): never unpickled, every member's header checked before any
array is materialised, and handed over as an :class:`NpzArchive` of shapes for a loader that knows
the layout (the ``timm`` plugin gives it to timm's own big_vision loader).

torch, numpy and safetensors are imported inside the functions: importing this module is free.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError

__all__ = ["WRAPPER_KEYS", "NpzArchive", "NpzArray", "read_checkpoint", "read_npz", "unwrap_state_dict"]

#: Bounds on a .npz archive, checked from its zip directory and member headers before any array is
#: read: SigLIP so400m's two towers are ~2,000 arrays and ~4.5 GB.
NPZ_MAX_MEMBERS = 100_000
NPZ_MAX_BYTES = 64 * 2**30

#: Keys under which published checkpoints wrap their state dict, in the order we look for them:
#: DINO's full checkpoints hold ``teacher`` (the network DINO evaluates) and ``student``; MAE's hold
#: ``model``; Lightning and many others ``state_dict``.
WRAPPER_KEYS = ("teacher", "model", "state_dict", "model_ema", "state_dict_ema", "module")

#: How torch.save files begin: its zip format, and its legacy format (the magic number pickled with protocol 2).
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


def read_checkpoint(path: str | Path, param: str = "weights", *, npz: bool = False) -> Any:
    """Load a ``.safetensors`` file or a ``torch.save`` file with torch's weights-only unpickler.

    ``npz=True``: a NumPy ``.npz`` archive is returned as an :class:`NpzArchive` (:func:`read_npz`)
    for a caller that loads that layout; by default it is refused with the fix.

    Weights files are downloaded and shared, so nothing in one may run code: only tensors and plain
    containers are rebuilt, plus ``argparse.Namespace`` (DINO's full checkpoints store their
    ``args``). Everything else is a :class:`DataError` that says which case it is and what
    to do, ``param`` naming the registry parameter that points at the file:

    - empty, or not a torch or safetensors file at all (a plain pickle, an HTML error page, ...);
    - a torch file that is damaged (truncated zip, broken pickle);
    - a torch file holding Python objects the weights-only loader refuses (named in the message).
    """
    import argparse

    import torch

    from .io import regular_file_problem

    path = Path(path)
    problem = regular_file_problem(path)  # before any open: a FIFO would block, /dev/zero never end
    if problem:
        raise DataError(f"{param} file {path} {problem}; set `{param}:` to a checkpoint file.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:
            raise DataError(f"{param} file {path}: not a readable safetensors file ({err}); re-download it.") from err
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_LEGACY_MAGIC))
    except OSError as err:
        raise DataError(f"{param} file {path}: cannot be read ({err.strerror}); check the path.") from err
    if not head:
        raise DataError(f"{param} file {path}: the file is empty; re-download it.")
    if head[:1] == b"\x80" and not head.startswith(_LEGACY_MAGIC):
        raise DataError(
            f"{param} file {path}: a plain Python pickle, not a torch checkpoint; uisbench never unpickles those "
            "(unpickling can run code). Save the weights with torch.save(state_dict, ...) or as '.safetensors'."
        )
    if not head.startswith((_ZIP_MAGIC, _LEGACY_MAGIC)):
        # No byte of the file is shown: a wrong path may point at a secret (a symbolic link to a password
        # file), and this message goes to results.json and bench.log, which get shared.
        text = all(32 <= b < 127 or b in b"\t\r\n" for b in head)
        raise DataError(
            f"{param} file {path}: not a torch checkpoint (it does not start as torch.save's zip or legacy files "
            f"do{'; it begins like a text file, e.g. an HTML error page' if text else ''}); expected a file written "
            "by torch.save or a '.safetensors' file. Check the path, and re-download the file if it is a damaged copy."
        )
    if head.startswith(_ZIP_MAGIC) and _zip_names(path) and all(n.endswith(".npy") for n in _zip_names(path)):
        if npz:
            return read_npz(path, param)
        raise DataError(
            f"{param} file {path}: a NumPy .npz archive (as big_vision's SigLIP and JAX ViT releases are), not a torch "
            "checkpoint; this plugin reads torch files only. The `timm` backbone plugin reads it (`plugin: timm`, "
            "`platform weights inspect` prints the entry), or use the same weights as a state dict (e.g. "
            "timm/vit_base_patch16_siglip_224.webli)."
        )
    if head.startswith(_ZIP_MAGIC) and _is_torchscript(path):
        raise DataError(
            f"{param} file {path}: a TorchScript archive (as OpenAI's CLIP .pt files are), not a state dict; uisbench does not "
            "load TorchScript (its code would run). Use the same weights as a state dict: open_clip's or timm's "
            "(e.g. timm/vit_base_patch16_clip_224.openai), or, for a file you trust, save "
            "torch.jit.load(path).state_dict() with torch.save and point `" + param + ":` at that."
        )
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    if safe_globals is not None:
        allow = safe_globals([argparse.Namespace])
    else:  # torch 2.4: process-wide allow-list
        torch.serialization.add_safe_globals([argparse.Namespace])
        allow = contextlib.nullcontext()
    try:
        with allow:
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        refused = _refused_globals(path, err)
        # Not chained: torch's own message recommends turning the safe loader off, which is exactly
        # what must not be done with a file of unknown origin; ours names what matters.
        if refused:
            raise DataError(
                f"{param} file {path}: besides weights it holds Python objects ({', '.join(refused)}) that the safe "
                "(weights-only) loader refuses to rebuild, because rebuilding them can run code. Get a "
                "'.safetensors' or state-dict-only version from its publisher; or, only for a file from a source "
                "you trust, load it once as its authors document, save the state dict alone with "
                f"torch.save(checkpoint['model'], 'weights_only.pth') and set `{param}:` to weights_only.pth."
            ) from None
        raise DataError(
            f"{param} file {path}: damaged torch checkpoint ({_torch_reason(err)}); it is truncated or corrupt: "
            "re-download it."
        ) from None


@dataclass(frozen=True)
class NpzArray:
    """One array of a .npz archive as its header describes it (nothing read): shape and dtype."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        import numpy as np

        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class NpzArchive(Mapping[str, NpzArray]):
    """A checked NumPy ``.npz`` archive: its arrays by name (``np.savez`` keys, e.g. big_vision's
    ``params/img/embedding/kernel``) with shapes and dtypes, read from the headers alone.

    It is a mapping of :class:`NpzArray` so layout code reads shapes as from a state dict; the
    arrays themselves are loaded by whoever knows the layout, from :attr:`path`, with
    ``numpy.load(path, allow_pickle=False)``, or one at a time with :meth:`array`.
    """

    def __init__(self, path: Path, arrays: Mapping[str, NpzArray]):
        self.path = Path(path)
        self._arrays = dict(arrays)

    def __getitem__(self, name: str) -> NpzArray:
        return self._arrays[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def array(self, name: str) -> Any:
        """One array, as numpy reads it (never unpickled)."""
        import numpy as np

        with np.load(self.path, allow_pickle=False) as archive:
            return archive[name]

    def __repr__(self) -> str:
        return f"NpzArchive({str(self.path)!r}, {len(self)} arrays)"


def read_npz(path: str | Path, param: str = "weights") -> NpzArchive:
    """Check a NumPy ``.npz`` archive without materialising an array and describe its arrays.

    From the zip directory and each member's ``.npy`` header only: at most :data:`NPZ_MAX_MEMBERS`
    members, every one a ``.npy`` array of a plain numeric dtype (an object array would need
    unpickling: refused), its header's shape times item size equal to the bytes the member holds,
    and :data:`NPZ_MAX_BYTES` in all. A :class:`DataError` names the file and what is wrong.
    """
    import zipfile

    import numpy as np

    from .io import regular_file_problem

    path = Path(path)
    problem = regular_file_problem(path)
    if problem:
        raise DataError(f"{param} file {path} {problem}; set `{param}:` to a checkpoint file.")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{param} file {path}: not a readable .npz archive ({err}); re-download it.") from None
    arrays: dict[str, NpzArray] = {}
    with zf:
        infos = zf.infolist()
        if len(infos) > NPZ_MAX_MEMBERS:
            raise DataError(f"{param} file {path}: {len(infos)} members, more than the {NPZ_MAX_MEMBERS} a weights archive may have.")
        total = sum(i.file_size for i in infos)
        if total > NPZ_MAX_BYTES:
            raise DataError(f"{param} file {path}: {total / 2**30:.1f} GiB uncompressed, more than {NPZ_MAX_BYTES / 2**30:.0f} GiB.")
        for info in infos:
            if not info.filename.endswith(".npy"):
                raise DataError(f"{param} file {path}: member {info.filename!r} is not a .npy array; not a .npz weights archive.")
            name = info.filename[: -len(".npy")]
            try:
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                    else:  # (3, 0) only adds utf-8 field names of structured dtypes: not weights
                        raise ValueError(f"unsupported .npy format version {version}")
                    header = fh.tell()
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
                raise DataError(f"{param} file {path}: member {name!r} has no readable .npy header ({err}); re-download it.") from None
            if dtype.hasobject or dtype.kind not in "biuf":
                raise DataError(
                    f"{param} file {path}: array {name!r} has dtype {dtype} (Python objects or non-numeric), which "
                    "weights never have and numpy could only read by unpickling; uisbench refuses it."
                )
            entry = NpzArray(tuple(int(d) for d in shape), dtype.str)
            if entry.nbytes != info.file_size - header:
                raise DataError(
                    f"{param} file {path}: array {name!r} declares {entry.shape} {dtype} ({entry.nbytes} bytes) but the "
                    f"member holds {info.file_size - header}; the archive is damaged: re-download it."
                )
            arrays[name] = entry
    if not arrays:
        raise DataError(f"{param} file {path}: an empty .npz archive; re-download it.")
    return NpzArchive(path, arrays)


def _zip_names(path: Path) -> list[str]:
    """The member names of a zip file; empty when it is damaged (torch.load then says so)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _is_torchscript(path: Path) -> bool:
    """A torch.jit.save zip holds its modules' code (``<name>/code/__torch__/...``); torch.save's never does."""
    return any("/code/__torch__/" in name for name in _zip_names(path))


def _refused_globals(path: Path, err: Exception) -> list[str]:
    """The Python globals (``module.name``) a torch file needs beyond what the weights-only loader
    accepts: listed from the zip's pickle without running it where torch can, else from the error."""
    import torch

    names = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
    if scan is not None:
        try:
            names = [n for n in scan(str(path)) if n != "argparse.Namespace"] or names
        except Exception:  # a legacy (non-zip) or damaged file: keep what the error said
            pass
    return sorted(set(names))


def _torch_reason(err: Exception) -> str:
    """The informative part of a torch.load error: the unpickler's own complaint when there is one
    (torch wraps it in advice to disable the safe loader), else the first line."""
    text = str(err)
    found = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if found:
        return found.group(1).strip()
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def _is_state_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(checkpoint: Any, source: str) -> tuple[dict[str, Any], list[str]]:
    """The backbone's state dict inside a published checkpoint, plus notes on what was done.

    - wrappers ``teacher`` (DINO), ``model`` (MAE), ``state_dict``, ... are descended into;
    - ``module.`` / ``_orig_mod.`` prefixes (DDP, torch.compile) are stripped;
    - DINO's ``backbone.`` prefix is stripped and the keys outside it (its ``head.`` projection) dropped;
    - MAE's decoder (``decoder_*``, ``mask_token``) is dropped when present.
    """
    notes: list[str] = []
    obj = checkpoint
    for _ in range(4):
        if _is_state_dict(obj):
            break
        if not isinstance(obj, Mapping):
            break
        key = next((k for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if key is None:
            break
        notes.append(f"unwrapped '{key}'")
        obj = obj[key]
    if not _is_state_dict(obj):
        keys = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise DataError(
            f"weights file {source}: no state dict found (top-level keys: {keys}); expected a state dict or one "
            f"wrapped in one of {', '.join(WRAPPER_KEYS)}."
        )
    sd = dict(obj)
    for prefix in ("module.", "_orig_mod."):
        if any(k.startswith(prefix) for k in sd):
            sd = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}
            notes.append(f"stripped '{prefix}'")
    if any(k.startswith("backbone.") for k in sd):
        dropped = sorted({k.split(".")[0] for k in sd if not k.startswith("backbone.")})
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        notes.append("stripped 'backbone.'" + (f", dropped {', '.join(dropped)}" if dropped else ""))
    if any(k.startswith("decoder_") for k in sd):
        sd = {k: v for k, v in sd.items() if not (k.startswith("decoder_") or k == "mask_token")}
        notes.append("dropped the MAE decoder")
    return sd, notes
