"""Metrics against hand-computed examples: ties, images with one label, labels without positives."""

from __future__ import annotations

import json

import numpy as np
import pytest

from instatag import metrics as m

LABELS = ["a", "b", "c", "d"]
COUNTS = [10, 5, 5, 1]  # b and c tie in training frequency: b comes first by name
Y = np.array([
    [0, 1, 1, 1],  # img1: three labels
    [0, 0, 0, 1],  # img2: one label
    [0, 0, 0, 0],  # img3: no label, ignored by the per-image metrics
    [1, 1, 0, 0],  # img4: two labels
])
P = np.array([
    [0.1, 0.3, 0.9, 0.5],  # top: c, d, b, a
    [0.2, 0.1, 0.3, 0.8],  # top: d, c
    [0.5, 0.5, 0.5, 0.5],
    [0.25, 0.25, 0.25, 0.25],  # all tied: top-k by output order (a, b)
])


def test_dominant_recall_by_hand():
    # k=1: img1 D={b} (b/c tie -> name), T={c}: 0; img2 D={d}, T={d}: 1; img4 D={a}, T={a}: 1
    assert m.dominant_recall_at_k(Y, P, LABELS, COUNTS, 1) == pytest.approx(2 / 3)
    # k=2: img1 D={b,c}, T={c,d}: 1/2; img2 D={d} (one label), T={d,c}: 1; img4 D={a,b}, T={a,b}: 1
    assert m.dominant_recall_at_k(Y, P, LABELS, COUNTS, 2) == pytest.approx(2.5 / 3)


def test_dominant_recall_tie_by_label_name_decides():
    y = np.array([[0, 1, 1, 0]])
    p_c = np.array([[0.0, 0.1, 0.9, 0.0]])
    p_b = np.array([[0.0, 0.9, 0.1, 0.0]])
    assert m.dominant_recall_at_k(y, p_c, LABELS, COUNTS, 1) == 0.0
    assert m.dominant_recall_at_k(y, p_b, LABELS, COUNTS, 1) == 1.0
    # same counts but c renamed before b alphabetically: now c is dominant
    assert m.dominant_recall_at_k(y, p_c, ["a", "z", "c", "d"], COUNTS, 1) == 1.0


def test_dominant_recall_without_any_labelled_image_is_none():
    assert m.dominant_recall_at_k(np.zeros((2, 4)), P[:2], LABELS, COUNTS, 1) is None


def test_precision_recall_at_k_by_hand():
    p1, r1 = m.precision_recall_at_k(Y, P, 1)
    assert p1 == pytest.approx(1.0)  # c, d, a are all true
    assert r1 == pytest.approx((1 / 3 + 1 + 1 / 2) / 3)
    p2, r2 = m.precision_recall_at_k(Y, P, 2)
    assert p2 == pytest.approx((1 + 0.5 + 1) / 3)  # img2: {d, c} holds one true label
    assert r2 == pytest.approx((2 / 3 + 1 + 1) / 3)


def test_average_precision_by_hand():
    # label a: the only positive is ranked second of four -> precision 1/2 at recall 1
    assert m.average_precision(Y[:, 0], P[:, 0]) == pytest.approx(0.5)
    # ties are one threshold: 2 positives among the 3 tied top scores
    assert m.average_precision([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.1]) == pytest.approx(2 / 3)
    # perfect ranking
    assert m.average_precision([0, 1, 1], [0.1, 0.8, 0.9]) == pytest.approx(1.0)
    # a label without positives has no AP
    assert m.average_precision([0, 0, 0], [0.3, 0.2, 0.1]) is None


def test_average_precision_matches_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        y = rng.random(n) < 0.3
        if not y.any():
            y[0] = True
        s = np.round(rng.random(n), 1)  # rounding makes ties
        assert m.average_precision(y, s) == pytest.approx(sklearn_metrics.average_precision_score(y, s))


def test_map_skips_labels_without_positives():
    y = np.array([[1, 0], [0, 0]])
    p = np.array([[0.9, 0.8], [0.1, 0.2]])
    s = m.summary(y, p, ["x", "never"], [3, 1], 0.5)
    assert s["map"] == pytest.approx(1.0)  # "never" has no positive and is not averaged
    assert s["n_labels_with_positives"] == 1
    table = m.per_label(y, p, ["x", "never"], 0.5)
    assert table["never"] == {"precision": 0.0, "recall": None, "f1": None, "ap": None, "support": 0}


def test_f1_and_per_label_at_thresholds_by_hand():
    t = np.array([0.5, 0.2, 0.5, 0.5])
    # predicted (p >= t): img1 b,c,d  img2 d  img3 a,b,c,d  img4 b
    # a: tp0 fp1 fn1 | b: tp2 fp1 fn0 | c: tp1 fp1 fn0 | d: tp2 fp1 fn0
    tp, fp, fn = m.label_counts(Y, P, t)
    assert tp.tolist() == [0, 2, 1, 2] and fp.tolist() == [1, 1, 1, 1] and fn.tolist() == [1, 0, 0, 0]
    s = m.summary(Y, P, LABELS, COUNTS, t)
    assert s["micro_f1"] == pytest.approx(2 * 5 / (2 * 5 + 4 + 1))
    assert s["macro_f1"] == pytest.approx(np.mean([0, 4 / 5, 2 / 3, 4 / 5]))
    table = m.per_label(Y, P, LABELS, t)
    assert table["b"]["precision"] == pytest.approx(2 / 3) and table["b"]["recall"] == 1.0
    assert table["a"]["precision"] == 0.0 and table["a"]["recall"] == 0.0 and table["a"]["support"] == 1
    assert table["d"]["support"] == 2


def test_summary_is_json_safe_and_complete():
    s = m.summary(Y, P, LABELS, COUNTS, 0.5)
    json.dumps(s, allow_nan=False)
    for key in ("dominant_recall@1", "dominant_recall@2", "map", "micro_f1", "macro_f1",
                "precision@1", "precision@2", "recall@1", "recall@2"):
        assert isinstance(s[key], float), key
    assert s["n_images"] == 3


def test_popularity_baseline_predicts_the_most_frequent_labels():
    bp = m.baseline_probs(4, LABELS, COUNTS)
    assert (m.top_k(bp, 2) == [[0, 1]] * 4).all()  # a (10), then b (5, before c by name)
    assert m.baseline_thresholds(LABELS, COUNTS).tolist() == [bp[0, 1]] * 4
    res = m.evaluate_predictions(Y, P, LABELS, COUNTS, 0.5)
    b = res["baseline"]
    # k=1 T={a}: img1 D={b} 0, img2 D={d} 0, img4 D={a} 1;  k=2 T={a,b}: 1/2, 0, 1
    assert b["dominant_recall@1"] == pytest.approx(1 / 3)
    assert b["dominant_recall@2"] == pytest.approx(1.5 / 3)
    # constant scores: AP = prevalence over the 4 images
    assert res["per_label"]["a"]["baseline"]["ap"] == pytest.approx(1 / 4)
    assert b["map"] == pytest.approx(np.mean([1 / 4, 2 / 4, 1 / 4, 2 / 4]))
    # the baseline predicts a and b for every image: a tp1 fp3, b tp2 fp2, c fn1, d fn2
    assert b["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 5 + 3))
    assert res["per_label"]["b"]["baseline"]["recall"] == 1.0
    assert res["per_label"]["c"]["baseline"]["recall"] == 0.0
    assert res["per_label"]["b"]["threshold"] == 0.5
    assert res["model"]["dominant_recall@2"] == pytest.approx(2.5 / 3)


def test_tune_threshold_maximises_f1_with_a_floor():
    y = np.array([1, 1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.3, 0.1])
    # F1 of the cuts top1..top5: .5 .8 .667 .857 .75 -> top 4, half-way between 0.3 and 0.1
    t, f1 = m._best_threshold(y, p, 0.0)
    assert t == pytest.approx(0.2) and f1 == pytest.approx(6 / 7)
    assert m._best_threshold(y, p, 0.25)[0] == pytest.approx(0.25)  # same cut, threshold lifted to the floor
    assert m._best_threshold(y, p, 0.5)[0] == pytest.approx(0.75)  # top 4 is below the floor: top 2


def test_tune_threshold_ties_go_to_the_higher_threshold():
    # top1 and top4 both give F1 2/3
    t, _ = m._best_threshold(np.array([1, 0, 0, 1]), np.array([0.9, 0.6, 0.5, 0.2]), 0.05)
    assert t == pytest.approx(0.75)


def test_tune_thresholds_per_label_and_global():
    y = np.array([[1, 0, 0], [1, 0, 1], [0, 0, 1], [0, 0, 0]])
    p = np.array([[0.9, 0.4, 0.2], [0.6, 0.3, 0.7], [0.5, 0.2, 0.6], [0.1, 0.9, 0.65]])
    thresholds, global_t = m.tune_thresholds(y, p, floor=0.05)
    assert thresholds[0] == pytest.approx(0.55)  # 0.9, 0.6 in; 0.5 out
    assert thresholds[1] == global_t  # no positive: the global threshold
    # label 2: 0.7 (+), 0.65 (-), 0.6 (+): F1 of top1 2/3, top3 4/5 -> all three, half-way to 0.2
    assert thresholds[2] == pytest.approx(0.4)
    assert 0.05 <= global_t <= 1
    # the tuned thresholds beat any other threshold on these predictions
    for j in (0, 2):
        best = m.per_label(y[:, [j]], p[:, [j]], ["x"], thresholds[j])["x"]["f1"]
        for other in np.linspace(0.05, 1, 40):
            assert m.per_label(y[:, [j]], p[:, [j]], ["x"], other)["x"]["f1"] <= best + 1e-12


def test_global_threshold_maximises_micro_f1():
    rng = np.random.default_rng(1)
    y = rng.random((30, 5)) < 0.3
    p = np.clip(y * 0.4 + rng.random((30, 5)) * 0.6, 0, 1)
    g = m.tune_global_threshold(y, p)
    best = m.summary(y, p, list("abcde"), [1] * 5, g)["micro_f1"]
    for other in np.linspace(0.05, 1, 60):
        assert m.summary(y, p, list("abcde"), [1] * 5, other)["micro_f1"] <= best + 1e-12


def test_thresholds_for_maps_labels_with_a_default():
    assert m.thresholds_for(["a", "b"], {"b": 0.3}, 0.5).tolist() == [0.5, 0.3]
