"""SigLIP's official release is a big_vision ``.npz``: read without unpickling, recognised by
`platform weights inspect` (patch size, width, depth, heads, MAP head and no CLS => SigLIP), loaded
by timm's own big_vision loader strictly (every parameter set, every array of the image tower read),
and its key facet equals a computation from the archive's arrays in numpy alone.

The tiny archive follows big_vision's parameter names: google-research/big_vision
big_vision/models/vit.py (``embedding`` Conv kernel (p, p, 3, D), ``pos_embedding`` (1, N, D), no
``cls`` with ``pool_type="map"``, ``Transformer/encoderblock_N/{LayerNorm_0, MultiHeadDotProductAttention_0,
LayerNorm_1, MlpBlock_0/Dense_0|1}``, ``Transformer/encoder_norm``, ``MAPHead_0/{probe, ...}``, ``head``)
under big_vision/models/proj/image_text/two_towers.py's ``img`` tower (``params/img/``), beside the
text tower ``txt`` and the ``t``/``b`` scalars; flax's MultiHeadDotProductAttention kernels are
(D, heads, head_dim). These are the names timm's vision_transformer.py::_load_weights reads.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

import uisbench
from helpers import weights_inspect

P, D, H, MLP, SIZE = 16, 768, 12, 3072, 64  # SigLIP B/16's real width and heads, one block, a 4x4 grid
G = SIZE // P


def _big_vision_arrays(D: int = D, H: int = H, MLP: int = MLP) -> dict[str, np.ndarray]:  # noqa: N803
    rng = np.random.default_rng(0)

    def r(*shape, scale=0.02):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    def ln(stem):
        return {f"{stem}/scale": 1 + r(D, scale=0.1), f"{stem}/bias": r(D, scale=0.1)}

    def mha(stem):
        out = {f"{stem}/{n}/kernel": r(D, H, D // H) for n in ("query", "key", "value")}
        out.update({f"{stem}/{n}/bias": r(H, D // H) for n in ("query", "key", "value")})
        out.update({f"{stem}/out/kernel": r(H, D // H, D), f"{stem}/out/bias": r(D)})
        return out

    def mlp(stem):
        return {f"{stem}/Dense_0/kernel": r(D, MLP), f"{stem}/Dense_0/bias": r(MLP), f"{stem}/Dense_1/kernel": r(MLP, D),
                f"{stem}/Dense_1/bias": r(D)}

    img = "params/img/"
    a = {f"{img}embedding/kernel": r(P, P, 3, D, scale=0.05), f"{img}embedding/bias": r(D), f"{img}pos_embedding": r(1, G * G, D)}
    for i in range(1):
        b = f"{img}Transformer/encoderblock_{i}/"
        a.update({**ln(b + "LayerNorm_0"), **mha(b + "MultiHeadDotProductAttention_0"), **ln(b + "LayerNorm_1"), **mlp(b + "MlpBlock_0")})
    a.update(ln(f"{img}Transformer/encoder_norm"))
    m = f"{img}MAPHead_0/"
    a.update({f"{m}probe": r(1, 1, D), **mha(m + "MultiHeadDotProductAttention_0"), **ln(m + "LayerNorm_0"), **mlp(m + "MlpBlock_0")})
    a.update({f"{img}head/kernel": r(D, 32), f"{img}head/bias": r(32)})
    # the text tower and SigLIP's temperature and bias: left out
    a.update({"params/txt/Embed_0/embedding": r(10, 32), "params/t": r(1), "params/b": r(1)})
    return a


@pytest.fixture(scope="module")
def arrays():
    return _big_vision_arrays()


#: a narrow SigLIP-layout archive for the failure cases (width 64, 4 heads, MLP 128), and its model
SMALL = {"depth": 1, "embed_dim": 64, "num_heads": 4, "mlp_ratio": 2.0}


@pytest.fixture(scope="module")
def small():
    return _big_vision_arrays(64, 4, 128)


def _write(path, arrays):
    np.savez(path, **arrays)
    return path


def _numpy_key(a: dict[str, np.ndarray], pixels: np.ndarray) -> np.ndarray:
    """Block 0's attention key from the archive's arrays alone: flax's VALID Conv on NHWC patches, plus
    pos_embedding (no CLS), LayerNorm_0 (flax's eps 1e-6), then x @ key/kernel + key/bias, heads
    concatenated: (B, D, g, g)."""
    img, blk = "params/img/", "params/img/Transformer/encoderblock_0/"
    x = pixels.transpose(0, 2, 3, 1).astype(np.float64)  # NHWC
    b = len(x)
    patches = x.reshape(b, G, P, G, P, 3).transpose(0, 1, 3, 2, 4, 5)  # (b, i, j, u, v, c)
    t = np.einsum("bijuvc,uvcd->bijd", patches, a[f"{img}embedding/kernel"]) + a[f"{img}embedding/bias"]
    t = t.reshape(b, G * G, D) + a[f"{img}pos_embedding"][0]
    y = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + 1e-6)
    y = y * a[f"{blk}LayerNorm_0/scale"] + a[f"{blk}LayerNorm_0/bias"]
    k = y @ a[f"{blk}MultiHeadDotProductAttention_0/key/kernel"].reshape(D, D) + a[f"{blk}MultiHeadDotProductAttention_0/key/bias"].reshape(D)
    return k.reshape(b, G, G, D).transpose(0, 3, 1, 2)


def _build(host, path, **params):
    spec = host.spec("backbones", "timm")
    return spec.build(**{"model": "vit_base_patch16_siglip_224", "model_kwargs": {"depth": 1}, "weights": str(path), "size": SIZE,
                         "precision": "fp32", **params})


def test_big_vision_npz_inspected_loaded_strictly_and_its_key_is_the_numpy_one(host, arrays, tmp_path):
    path = _write(tmp_path / "webli_en_b16_224_63724782.npz", arrays)
    code, out = weights_inspect(path)
    assert code == 0, out
    for line in ("# family: siglip", "# patch_size: 16", "# depth: 1", "# width: 768", "# heads: 12", "# cls_token: False",
                 "# map_head: True"):
        assert line in out, out
    assert "left out params/b, params/t, params/txt/" in out, out
    ((name, entry),) = yaml.safe_load(out)["backbones"].items()
    assert entry["family"] == "siglip" and entry["model"] == "vit_base_patch16_siglip_224" and entry["model_kwargs"] == {"depth": 1}
    mine = tmp_path / "mine.yaml"
    mine.write_text(out)
    reg = uisbench.host.load_registry([str(mine)], host)  # what `platform validate mine.yaml` checks
    params = {k: v for k, v in reg.resolved_params(reg.entry("backbones", name), host).items() if k not in ("plugin", "description")}
    bb = host.spec("backbones", "timm").build(**{**params, "size": SIZE, "precision": "fp32"})
    prov = bb.provenance()
    assert prov["family"] == "siglip" and prov["prefix_tokens"] == 0 and prov["mean"] == [0.5, 0.5, 0.5]
    assert any("every array of 'params/img/'" in n for n in prov["load_notes"]), prov["load_notes"]
    pixels = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    features = bb.extract(pixels, [1, 2]).features
    expected = torch.from_numpy(_numpy_key(arrays, pixels.numpy())).float()
    torch.testing.assert_close(features, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({**SMALL, "depth": 2}, r"depth 1 in the file, 2 in the model"),
    ({**SMALL, "embed_dim": 96, "num_heads": 4}, r"width 64 in the file, 96 in the model"),
    ({**SMALL, "num_heads": 8}, r"heads 4 in the file, 8 in the model"),
    ({**SMALL, "class_token": True, "global_pool": "token"}, r"cls_token False in the file, True in the model"),
])
def test_wrong_architecture_fails_loudly(host, small, tmp_path, kwargs, message):
    path = _write(tmp_path / "siglip.npz", small)
    with pytest.raises(uisbench.ConfigError, match=message):
        _build(host, path, model_kwargs=kwargs)


def test_the_narrow_archive_loads(host, small, tmp_path):
    """The failure cases below differ from a loading archive by the one thing they name."""
    bb = _build(host, _write(tmp_path / "siglip.npz", small), model_kwargs=SMALL)
    assert bb.family.name == "siglip" and bb.provenance()["prefix_tokens"] == 0


def test_an_array_timm_does_not_read_or_a_missing_one_fails_loudly(host, small, tmp_path):
    blk = "params/img/Transformer/encoderblock_0/"
    stray = _write(tmp_path / "stray.npz", {**small, f"{blk}LayerNorm_2/scale": np.ones(64, np.float32)})
    with pytest.raises(uisbench.ConfigError, match=r"arrays timm's loader did not read: .*encoderblock_0/LayerNorm_2/scale"):
        _build(host, stray, model_kwargs=SMALL)
    missing = _write(tmp_path / "missing.npz", {k: v for k, v in small.items() if k != f"{blk}MlpBlock_0/Dense_1/bias"})
    with pytest.raises(uisbench.ConfigError, match=r"'params/img/Transformer/encoderblock_0/MlpBlock_0/Dense_1/bias' that timm's "
                                                   r"big_vision loader reads .* is not in the archive"):
        _build(host, missing, model_kwargs=SMALL)


def test_a_parameter_the_file_does_not_set_fails_loudly(host, small, tmp_path):
    path = _write(tmp_path / "siglip.npz", small)  # a register token: big_vision's SigLIP has none to give it
    with pytest.raises(uisbench.ConfigError, match=r"not set by the file: reg_token"):
        _build(host, path, model_kwargs={**SMALL, "reg_tokens": 1, "no_embed_class": True})


def test_npz_of_another_family_or_with_objects_is_refused(host, small, tmp_path):
    path = _write(tmp_path / "siglip.npz", small)
    with pytest.raises(uisbench.ConfigError, match=r"not in DINO's official layout.*looks like a SigLIP file: write `family: siglip`"):
        _build(host, path, family="dino", model_kwargs=SMALL)
    objects = tmp_path / "objects.npz"
    np.savez(objects, **{"params/img/embedding/kernel": np.array([{"code": 1}], dtype=object)})
    with pytest.raises(uisbench.DataError, match=r"dtype object .* unpickling; uisbench refuses it"):
        uisbench.weights.read_checkpoint(objects, npz=True)


def test_so400m_and_scanned_layouts_are_read_from_headers_alone(tmp_path):
    """SigLIP So400m/14 (width 1152, 27 blocks, 16 heads) as big_vision saves scanned encoders
    (vit.py ``scan=True``: one ``Transformer/encoderblock/...`` array per parameter, blocks stacked on
    axis 0): the entry names timm's so400m model; only the arrays' headers are looked at."""
    from uisbench_builtins._family_inspect import inspect_entry

    A = uisbench.weights.NpzArray  # noqa: N806
    img, blk = "params/img/", "params/img/Transformer/encoderblock/"
    heads = {f"{blk}LayerNorm_0/scale": A((27, 1152), "<f4"),
             f"{blk}MultiHeadDotProductAttention_0/query/kernel": A((27, 1152, 16, 72), "<f4"),
             f"{img}embedding/kernel": A((14, 14, 3, 1152), "<f4"), f"{img}MAPHead_0/probe": A((1, 1, 1152), "<f4"),
             "params/txt/Embed_0/embedding": A((10, 1152), "<f4")}
    info = inspect_entry(uisbench.weights.NpzArchive(tmp_path / "webli_en_so400m_224_57633886.npz", heads), "so400m.npz")
    assert info["family"] == "siglip" and (info["depth"], info["width"], info["heads"], info["patch_size"]) == (27, 1152, 16, 14)
    assert info["entry"]["model"] == "vit_so400m_patch14_siglip_224" and "model_kwargs" not in info["entry"], info
