"""The label order of a model (instatag.ranking) and its use in metrics and in predicted tags."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from instatag import metrics, predict, ranking
from instatag.errors import UserError

LABELS = ["generic", "dish", "side"]
COUNTS = np.array([50, 20, 5])  # generic is the most frequent label in training
ORDER = metrics.frequency_order(LABELS, COUNTS)


def brute_force_dominant(p: np.ndarray) -> np.ndarray:
    """P(label is the most frequent present label), summing over every presence pattern."""
    out = np.zeros(len(p))
    for present in itertools.product([0, 1], repeat=len(p)):
        prob = np.prod([pi if x else 1 - pi for pi, x in zip(p, present, strict=True)])
        on = [j for j in ORDER if present[j]]
        if on:
            out[on[0]] += prob
    return out


def test_dominant_probs_match_enumeration():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=(20, 3))
    expected = np.array([brute_force_dominant(row) for row in p])
    np.testing.assert_allclose(ranking.dominant_probs(p, ORDER), expected, rtol=1e-12)
    # the chance that no label is present is what is missing from 1
    np.testing.assert_allclose(ranking.dominant_probs(p, ORDER).sum(axis=1), 1 - np.prod(1 - p, axis=1))


def test_dominant_first_puts_the_likely_dominant_label_first_then_probability():
    p = np.array([[0.5, 0.7, 0.6],    # generic: 0.5; dish: 0.7 * 0.5 = 0.35 -> generic first
                  [0.2, 0.7, 0.65]])  # generic: 0.2; dish: 0.7 * 0.8 = 0.56 -> dish first
    assert ranking.order(p, "probability").tolist() == [[1, 2, 0], [1, 2, 0]]
    assert ranking.order(p, "dominant_first", ORDER).tolist() == [[0, 1, 2], [1, 2, 0]]
    np.testing.assert_array_equal(ranking.rank_scores(p, "probability"), p)


def test_bad_ranking_and_missing_order_are_errors():
    with pytest.raises(UserError, match="ranking must be"):
        ranking.rank_scores(np.zeros((1, 3)), "alphabetical")
    with pytest.raises(ValueError, match="frequency order"):
        ranking.rank_scores(np.zeros((1, 3)), "dominant_first")


def test_metrics_take_the_ranking_for_top_k_only():
    y = np.array([[1, 0, 0], [0, 1, 1]], dtype=bool)
    p = np.array([[0.5, 0.7, 0.1], [0.2, 0.7, 0.65]])
    by_prob = metrics.summary(y, p, LABELS, COUNTS, 0.5)
    ranked = metrics.summary(y, p, LABELS, COUNTS, 0.5, ranking.rank_scores(p, "dominant_first", ORDER))
    assert by_prob["dominant_recall@1"] == 0.5 and ranked["dominant_recall@1"] == 1.0
    for key in ("map", "micro_f1", "macro_f1"):
        assert ranked[key] == by_prob[key]


def test_tags_follow_the_ranking():
    p = np.array([[0.5, 0.7, 0.6]])
    ranks = ranking.rank_scores(p, "dominant_first", ORDER)
    assert predict.predict_tags(p, LABELS, 2) == [[("dish", 0.7), ("side", 0.6)]]
    assert predict.predict_tags(p, LABELS, 2, ranks=ranks) == [[("generic", 0.5), ("dish", 0.7)]]
    assert predict.tags_for_scoring(p, LABELS, 0.55, 1, ranks=ranks) == [[("generic", 0.5), ("dish", 0.7),
                                                                          ("side", 0.6)]]


def test_every_preset_ranks_by_probability_and_dominant_first_is_an_option():
    from instatag import train

    assert train.TrainConfig().ranking == "probability"
    assert {name: c.ranking for name, c in train.PRESETS.items()} == dict.fromkeys(train.PRESETS, "probability")
    assert train.config_from("default", ranking="dominant_first").ranking == "dominant_first"
