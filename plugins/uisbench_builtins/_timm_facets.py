"""How a :class:`~uisbench_builtins.timm_vit.TimmViT` computes its facet of a transformer block, as a
``(B, C, g, g)`` patch grid: the attention's key/query/value projection of the block's normed input
(captured by a forward pre-hook, :func:`attention_input`; the projection's weights found in any of
timm's attention layouts, :func:`projection`), or the block's output tokens (:func:`block_tokens`);
the precision they are computed in (:func:`autocast_context`).
The module docstring of :mod:`uisbench_builtins.timm_vit` says what each facet is.

Private helper of :mod:`uisbench_builtins.timm_vit`; torch is imported inside functions.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import uisbench

if TYPE_CHECKING:
    import torch

QKV_INDEX = {"query": 0, "key": 1, "value": 2}


class _StopForward(Exception):
    """Raised by the attention pre-hook once it has what it needs: the rest of the network is not run."""


def autocast_context(device_type: str, precision: str):
    """bf16 autocast on CUDA (``auto``/``bf16``), on CPU only when ``bf16`` is asked; else a no-op."""
    import torch

    if precision == "bf16" or (precision == "auto" and device_type == "cuda"):
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def patch_grid(tokens: torch.Tensor, g: int, num_prefix_tokens: int | None, model_name: str) -> torch.Tensor:
    """``(B, N, C)`` tokens (prefix first) or a ``(B, h, w, C)`` grid -> ``(B, C, g, g)``, prefix dropped."""
    if tokens.ndim == 4:  # SAM: a grid has no prefix tokens
        return tokens.permute(0, 3, 1, 2)
    if num_prefix_tokens is None:
        raise uisbench.ConfigError(
            f"backbone {model_name}: the model gives a token sequence but no num_prefix_tokens, so which tokens are "
            "patches is unknown; use a timm ViT that declares it."
        )
    n = tokens.shape[1] - num_prefix_tokens
    if n != g * g:
        raise uisbench.DataError(
            f"backbone {model_name}: {tokens.shape[1]} tokens less {num_prefix_tokens} prefix tokens "
            f"(the model's num_prefix_tokens) is {n} patch tokens, not the {g}x{g} grid."
        )
    return tokens[:, num_prefix_tokens :].reshape(len(tokens), g, g, -1).permute(0, 3, 1, 2)


def attention_input(model: Any, layer: int, pixels: torch.Tensor, g: int, model_name: str) -> torch.Tensor:
    """What ``model.blocks[layer].attn`` receives (its block's normed input), as ``(B, N, C)`` tokens or a
    ``(B, g, g, C)`` grid: a forward pre-hook captures it and stops the forward there."""
    captured: list[Any] = []

    def hook(module: Any, args: Any, kwargs: Any) -> None:
        captured.append(args[0] if args else kwargs["x"])
        raise _StopForward

    handle = model.blocks[layer].attn.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model.forward_features(pixels)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise uisbench.ConfigError(
            f"backbone {model_name}: blocks[{layer}].attn was never called by forward_features; use facet: token."
        )
    x = captured[0]
    if x.ndim == 4 and (x.shape[0] != len(pixels) or tuple(x.shape[1:3]) != (g, g)):
        # SAM's windowed blocks: (B * windows, w, w, C) windows of the grid padded to a multiple
        # of w; put them back in place and crop the padding (timm's window_unpartition).
        w = x.shape[1]
        n = -(-g // w)
        x = x.reshape(len(pixels), n, n, w, w, -1).permute(0, 1, 3, 2, 4, 5).reshape(len(pixels), n * w, n * w, -1)
        x = x[:, :g, :g]
    return x


def projected(model: Any, layer: int, facet: str, pixels: torch.Tensor, g: int, num_prefix_tokens: int | None,
              model_name: str) -> torch.Tensor:
    """The facet's projection of the attention input, heads concatenated: ``(B, C, g, g)``."""
    import torch.nn.functional as F

    weight, bias = projection(model.blocks[layer].attn, facet, model_name, layer)
    x = attention_input(model, layer, pixels, g, model_name)
    return patch_grid(F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype)), g, num_prefix_tokens, model_name)


def block_tokens(model: Any, layer: int, pixels: torch.Tensor, g: int, num_prefix_tokens: int | None,
                 model_name: str) -> torch.Tensor:
    """Patch tokens of ``model.blocks[layer]`` after the final norm (SAM: its neck): ``(B, C, g, g)``."""
    if hasattr(model, "forward_intermediates"):
        (out,) = model.forward_intermediates(
            pixels, indices=[layer], norm=True, stop_early=True, output_fmt="NCHW", intermediates_only=True
        )
        return out
    return patch_grid(model.forward_features(pixels), g, num_prefix_tokens, model_name)


def projection(attn: Any, facet: str, where: str, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, bias)`` of ``attn``'s query/key/value projection, from the module's own parameters:

    - a fused ``qkv`` Linear (rows: q, k, v, each heads-major: timm's reshape to (3, heads, head_dim)),
      its bias slice plus any separate ``q_bias``/``k_bias``/``v_bias`` (EVA-02, DINOv3 ``_qkvb``:
      timm adds those through ``F.linear``; EVA's ``k_bias`` is a zero buffer);
    - separate ``q_proj``/``k_proj``/``v_proj`` Linears (EVA ``qkv_fused=False``).
    """
    import torch

    i = QKV_INDEX[facet]
    letter = "qkv"[i]
    qkv = getattr(attn, "qkv", None)
    if isinstance(qkv, torch.nn.Linear):
        d = qkv.out_features // 3
        weight = qkv.weight[i * d : (i + 1) * d]
        parts = [b for b in (None if qkv.bias is None else qkv.bias[i * d : (i + 1) * d], getattr(attn, f"{letter}_bias", None)) if b is not None]
        bias = None if not parts else parts[0] if len(parts) == 1 else parts[0] + parts[1]
        return weight, bias
    proj = getattr(attn, f"{letter}_proj", None)
    if isinstance(proj, torch.nn.Linear):
        return proj.weight, proj.bias
    raise uisbench.ConfigError(
        f"{where}: blocks[{layer}].attn ({type(attn).__name__}) has neither a fused qkv Linear nor {letter}_proj; use facet: token."
    )
