"""The `position` calibration backbone and instance-awareness's distance-matched separability.

A feature that knows only where a patch lies tells same-instance from other-instance pairs by
proximity (``separability_auroc_unmatched``); compared at equal patch distance
(``separability_auroc``, the headline) it must score 0.5, while a feature that knows instances keeps
its score, with position added or not. The figures asserted here are the README's (Metrics,
Calibration backbones).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import uisbench
from uisbench import EvalSample
from uisbench_builtins.instance_awareness import InstanceAwareness, auroc, squared_distances, stratified_auroc
from uisbench_builtins.position import PositionBackbone, sincos_code

# ---------------------------------------------------------------------------------------------
# the stratified AUROC against independent references
# ---------------------------------------------------------------------------------------------


def _reference(pos, neg, pos_strata, neg_strata):
    """Per stratum scipy's Mann-Whitney U (ties count 1/2) and sklearn's AUROC weighted by its pairs."""
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import roc_auc_score

    u_sum = weighted = pairs = 0.0
    for s in np.union1d(pos_strata, neg_strata):
        p, n = pos[pos_strata == s], neg[neg_strata == s]
        if len(p) and len(n):
            u_sum += mannwhitneyu(p, n, alternative="two-sided").statistic
            weighted += roc_auc_score(np.r_[np.ones(len(p)), np.zeros(len(n))], np.r_[p, n]) * len(p) * len(n)
            pairs += len(p) * len(n)
    return u_sum / pairs, weighted / pairs


def test_stratified_auroc_equals_per_stratum_mann_whitney():
    rng = np.random.default_rng(0)
    for n_pos, n_neg, n_strata, shift in ((60, 90, 5, 0.4), (7, 300, 12, 1.5), (200, 40, 3, 0.0)):
        pos = np.round(rng.normal(shift, 1.0, n_pos), 1)  # rounding makes ties, inside and across strata
        neg = np.round(rng.normal(0.0, 1.0, n_neg), 1)
        ps, ns = rng.integers(0, n_strata, n_pos) * 7, rng.integers(0, n_strata + 2, n_neg) * 7  # strata without positives
        by_u, by_sklearn = _reference(pos, neg, ps, ns)
        value = stratified_auroc(pos, neg, ps, ns)
        assert value == pytest.approx(by_u, abs=1e-12) and value == pytest.approx(by_sklearn, abs=1e-12)
        # the order of the scores and the names of the strata do not matter: exactly the same value
        order_p, order_n = rng.permutation(n_pos), rng.permutation(n_neg)
        assert stratified_auroc(pos[order_p], neg[order_n], ps[order_p] + 1000, ns[order_n] + 1000) == value
    # one stratum: the plain AUROC; a lone side per stratum: undefined
    assert stratified_auroc([1.0, 2.0, 0.5], [0.5, 3.0], [0, 0, 0], [0, 0]) == auroc([1.0, 2.0, 0.5], [0.5, 3.0]) == 2.5 / 6
    assert math.isnan(stratified_auroc([1.0], [0.0], [0], [1])) and math.isnan(stratified_auroc([], [], [], []))
    # a positive beaten across strata but winning within them counts as winning
    assert auroc([1.0, 3.0], [2.0, 4.0]) == 0.25 and stratified_auroc([1.0, 3.0], [2.0, 4.0], [0, 1], [9, 1]) == 0.0
    assert stratified_auroc([1.0, 3.0], [0.0, 2.0], [0, 1], [0, 1]) == 1.0


def test_squared_distances_are_integers_on_the_grid():
    rows, cols = np.array([0, 0, 3, 5]), np.array([0, 4, 4, 1])
    d2 = squared_distances(rows, cols)
    assert d2.dtype == np.int64
    expected = [[(rows[i] - rows[j]) ** 2 + (cols[i] - cols[j]) ** 2 for j in range(4)] for i in range(4)]
    np.testing.assert_array_equal(d2, expected)
    assert d2[0, 2] == 25 and d2[1, 3] == 34 and d2[2, 3] == 13  # offsets (3, 4), (5, -3), (2, -3)


# ---------------------------------------------------------------------------------------------
# the position backbone
# ---------------------------------------------------------------------------------------------


def test_position_features_are_the_sincos_code_and_ignore_the_image():
    import torch

    backbone = PositionBackbone(size=64, patch_size=8, dim=16)
    pixels = torch.stack([torch.zeros(3, 64, 64), torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))])
    fm = backbone.extract(pixels, [1, 2])
    assert fm.features.shape == (2, 16, 8, 8)
    assert torch.equal(fm.features[0], fm.features[1])  # no image content
    f = fm.features[0].double().numpy()
    # the cosine of two patches is the closed form of their offset alone: (sum_i cos(dy w_i) + cos(dx w_i)) / (dim / 2)
    omega = 10000.0 ** (-np.arange(4) / 4)
    unit = f / np.linalg.norm(f, axis=0, keepdims=True)
    for (y0, x0), (y1, x1) in (((0, 0), (2, 3)), ((5, 4), (7, 7)), ((1, 6), (1, 0)), ((3, 3), (3, 3))):
        cosine = float(unit[:, y0, x0] @ unit[:, y1, x1])
        closed = (np.cos((y1 - y0) * omega).sum() + np.cos((x1 - x0) * omega).sum()) / 8
        assert cosine == pytest.approx(closed, abs=1e-6)
    # channel layout: the row's sin, cos, then the column's sin, cos (MAE's get_2d_sincos_pos_embed)
    np.testing.assert_allclose(sincos_code(8, 16, 10000.0)[:, 2, 5], np.r_[np.sin(2 * omega), np.cos(2 * omega),
                                                                           np.sin(5 * omega), np.cos(5 * omega)])


def test_position_parameters_are_checked(host):
    spec = host.spec("backbones", "position")
    assert spec.calibration
    with pytest.raises(uisbench.ConfigError, match="dim.*multiple of 4"):
        PositionBackbone(dim=18)
    with pytest.raises(uisbench.ConfigError, match="dim"):
        PositionBackbone(dim=0)
    with pytest.raises(uisbench.ConfigError, match="base"):
        PositionBackbone(base=1.0)
    with pytest.raises(uisbench.ConfigError, match="size"):
        PositionBackbone(size=100, patch_size=8)
    assert [name for name, _ in spec.problems({"dim": 6})] == ["dim"]


# ---------------------------------------------------------------------------------------------
# the calibration figures on synth-instances
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth_features():
    """12 synth-instances val images and the features of the registry's calibration rows on them."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        host = uisbench.host.load_plugins()
    registry = uisbench.host.load_registry([], host)
    dataset = host.spec("datasets", "synth-instances").build(split="val", images=12, size=128, seed=0)
    ids = dataset.image_ids()

    def features(backbone):
        backbone.bind(dataset)
        return backbone.extract(torch.stack([backbone.preprocess(dataset.load_image(i)) for i in ids]), ids).features

    feats = {name: features(registry.build("backbones", name, host)) for name in ("position", "oracle-instance", "oracle-semantic")}
    # an imperfect instance descriptor (separability about 0.7), alone and with the position code beside it
    feats["instance"] = features(host.spec("backbones", "oracle").build(instance_weight=1.0, noise=0.3, size=128, patch_size=8))

    def unit(f):
        return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)

    feats["instance+position"] = torch.cat([unit(feats["instance"]), unit(feats["position"])], dim=1)
    return dataset, ids, feats


def _separability(synth_features, name):
    dataset, ids, feats = synth_features
    metric = InstanceAwareness()
    for k, image_id in enumerate(ids):
        metric.update(EvalSample(dataset.record(image_id), dataset.ground_truth(image_id), [], feats[name][k]))
    return metric


def test_position_scores_chance_matched_and_high_unmatched(synth_features):
    values = _separability(synth_features, "position").compute()
    assert abs(values["separability_auroc"] - 0.5) <= 0.03, values  # measured 0.5015
    assert values["separability_auroc_unmatched"] > 0.8, values  # measured 0.847: proximity alone


def test_oracles_keep_their_calibration_values_matched(synth_features):
    instance = _separability(synth_features, "oracle-instance").compute()
    semantic = _separability(synth_features, "oracle-semantic").compute()
    assert instance["separability_auroc"] >= 0.95, instance  # measured 1.000
    assert abs(semantic["separability_auroc"] - 0.5) <= 0.05, semantic  # measured 0.504


def test_position_added_to_instance_identity_scores_as_instance_identity(synth_features):
    alone = _separability(synth_features, "instance").compute()
    both = _separability(synth_features, "instance+position").compute()
    assert alone["separability_auroc"] > 0.65, alone  # measured 0.713
    assert both["separability_auroc"] == pytest.approx(alone["separability_auroc"], abs=0.02), (alone, both)  # 0.712
    # unmatched, the position code adds its proximity bonus (measured 0.708 -> 0.837)
    assert both["separability_auroc_unmatched"] > alone["separability_auroc_unmatched"] + 0.08, (alone, both)


def test_bootstrap_resamples_the_matched_value(synth_features):
    _, ids, _ = synth_features
    metric = _separability(synth_features, "instance")
    values = metric.compute()
    assert "separability_auroc" in metric.headline and "separability_auroc_unmatched" not in metric.headline
    assert set(values) == set(metric.higher_is_better)
    whole, half = metric.resample([list(ids), list(ids[:6])])
    assert whole["separability_auroc"] == values["separability_auroc"]
    fresh = InstanceAwareness()
    dataset, _, feats = synth_features
    for k, image_id in enumerate(ids[:6]):
        fresh.update(EvalSample(dataset.record(image_id), dataset.ground_truth(image_id), [], feats["instance"][k]))
    assert half["separability_auroc"] == fresh.compute()["separability_auroc"]
