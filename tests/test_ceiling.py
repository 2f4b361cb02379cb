"""bench/ceiling.py: the dish oracle's metrics on generated data whose answer is known."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SPEC = importlib.util.spec_from_file_location("ceiling", Path(__file__).resolve().parents[1] / "bench" / "ceiling.py")
ceiling = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(ceiling)

LABELS = ["common", "pie", "ribs", "rare"]


def test_dominant_matrix_takes_the_most_frequent_true_label():
    y = np.array([[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0]], dtype=bool)
    d = ceiling.dominant_matrix(y, [0, 1, 2, 3])
    assert d.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]


def test_group_rates_are_the_fitted_members_mean():
    y = np.array([[1], [0], [1], [1], [0]])
    groups = np.array(["a", "a", "a", "b", "c"])
    fit = np.array([True, True, False, True, False])
    rates = ceiling.group_rates(y, groups, fit)[:, 0]
    assert rates.tolist() == pytest.approx([0.5, 0.5, 0.5, 1.0, 2 / 3])  # "c" has no fitted member: all's mean


def test_tied_photos_are_ordered_at_random_for_map():
    """Photos of one dish tie; AP of the ties themselves counts each tie at its end, below what a random
    order gives on average, which is what a model that knows only the dish can do."""
    y, groups = _data(400, tags_follow_dish=False, seed=3)
    everyone = np.ones(len(y), dtype=bool)
    res = ceiling.oracle_metrics(y, groups, LABELS, y.sum(0), everyone, everyone)
    assert res["map_ties_grouped"] < res["map"] and res["map_range"][0] <= res["map"] <= res["map_range"][1]


def _data(n: int, tags_follow_dish: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    groups = rng.choice(["apple_pie", "ribs"], n)
    y = np.zeros((n, len(LABELS)), dtype=bool)
    y[:, 0] = rng.random(n) < 0.6  # a generic tag on 60% of the posts, whatever the dish: the most frequent
    if tags_follow_dish:
        y[:, 1] = groups == "apple_pie"
        y[:, 2] = groups == "ribs"
    else:
        y[:, 1], y[:, 2] = rng.random(n) < 0.5, rng.random(n) < 0.5
    y[:, 3] = rng.random(n) < 0.05
    return y, groups


def test_tags_fixed_by_the_dish_are_learnable_and_the_generic_tag_is_not():
    y, groups = _data(2000, tags_follow_dish=True)
    valid = np.arange(len(y)) % 5 == 0
    res = ceiling.oracle_metrics(y, groups, LABELS, y[~valid].sum(0), ~valid, valid)
    ap = res["per_label_ap"]
    assert ap["pie"] == pytest.approx(1.0) and ap["ribs"] == pytest.approx(1.0)
    assert ap["common"] == pytest.approx(y[valid, 0].mean(), abs=0.08)  # chance: the label's base rate
    # the dominant label: "common" when present (it is the most frequent), else the dish's tag: the best
    # guess is "common" everywhere, right on 60% of the images, however well the dish is known
    assert res["dominant_best@1"] == pytest.approx(0.6, abs=0.06)
    assert res["dominant_first"]["dominant_recall@2"] > 0.95


def test_without_a_link_between_dish_and_tags_the_oracle_is_chance():
    y, groups = _data(2000, tags_follow_dish=False)
    everyone = np.ones(len(y), dtype=bool)
    res = ceiling.oracle_metrics(y, groups, LABELS, y.sum(0), everyone, everyone)
    chance = np.mean([y[:, j].mean() for j in range(len(LABELS))])
    assert res["map"] == pytest.approx(chance, abs=0.05)
