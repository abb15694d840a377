"""The few-label stage's rules: nested, seeded subsets; budgets; labels saved on interpolated curves."""

from __future__ import annotations

import pytest

from uisbench.bench.stages.finetune import choose_subset, labels_saved, resolve_budgets


def test_budgets_resolve_counts_and_percentages():
    assert resolve_budgets((0, 8, "10%", 8, 500), 48) == [0, 5, 8, 48]
    assert resolve_budgets(("1%",), 20) == [1]  # at least one image


@pytest.mark.parametrize("selection", ["random", "uncertain"])
def test_subsets_are_nested_and_deterministic(selection):
    ids = list(range(100, 160))
    uncertainty = {i: (i * 37 % 11) / 10 for i in ids}
    small, large = (choose_subset(ids, k, selection, seed=3, uncertainty=uncertainty) for k in (8, 16))
    assert large[:8] == small and len(set(large)) == 16 and set(large) <= set(ids)
    assert choose_subset(ids[::-1], 16, selection, seed=3, uncertainty=uncertainty) == large  # order of the input is irrelevant
    if selection == "random":
        assert choose_subset(ids, 16, selection, seed=4) != large  # another seed, another subset
    else:
        assert [uncertainty[i] for i in large] == sorted(uncertainty[i] for i in large)  # least sure first
        assert max(uncertainty[i] for i in large) <= min(uncertainty[i] for i in ids if i not in large)


def test_labels_saved_interpolates_the_baseline_curve():
    pseudo = [(0, 0.30), (8, 0.40), (16, 0.45)]
    assert labels_saved(pseudo, [(8, 0.10), (16, 0.20), (48, 0.40)]) == (32.0, "32.0")  # 0.30 halfway 16 -> 48
    assert labels_saved(pseudo, [(8, 0.10), (16, 0.20)]) == (None, ">16")  # never reached
    assert labels_saved(pseudo, [(8, 0.35), (16, 0.50)]) == (8.0, "<=8")  # already at the first budget
    assert labels_saved([(0, None)], [(8, 0.1)]) == (None, "-")
