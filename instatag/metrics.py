"""Multi-label metrics, threshold tuning and the popularity baseline (numpy only).

Inputs everywhere: ``y_true`` is an ``[n_images, n_labels]`` 0/1 (or bool) matrix, ``probs`` an
``[n_images, n_labels]`` float matrix in the same label order, ``labels`` the label names in that
order and ``counts`` the training frequency of each label (same order). The exact definitions are
in ``docs/evaluation.md``; in short:

- *top-k* of an image: its k first-ranked labels (``instatag.ranking``; by default, and under the
  ``probability`` ranking, the k labels with the highest probability), ties by output order.
- ``dominant_recall@k``: per image with a true label, D = its k true labels with the highest training
  frequency (all when it has k or fewer; ties by label name), score = |D ∩ top-k| / |D|; the mean.
- ``precision@k`` / ``recall@k``: per image with a true label, |top-k ∩ true| / k and / |true|; means.
- ``AP`` of a label: scikit-learn's ``average_precision_score`` (step-wise, ties grouped);
  ``mAP``: the mean AP over labels with at least one positive.
- A label is predicted when ``prob >= threshold``; micro-F1 pools every label, macro-F1 averages the
  per-label F1 over labels with at least one positive.
- Undefined values (recall of a label without positives, precision of a label never predicted,
  a mean over nothing) are ``None``, never NaN, so the results are valid JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

#: the k values reported for dominant_recall@k, precision@k and recall@k
KS = (1, 2)
#: the popularity baseline predicts its BASELINE_K most frequent training labels
BASELINE_K = 2
#: default floor for tuned thresholds
THRESHOLD_FLOOR = 0.05


def _arrays(y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 2 or y.shape != p.shape:
        raise ValueError(f"y_true {y.shape} and probs {p.shape} must be matrices of the same shape")
    return y, p


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def frequency_order(labels: Sequence[str], counts) -> list[int]:
    """Label indices from the most to the least frequent in training; ties by label name."""
    counts = list(counts)
    return sorted(range(len(labels)), key=lambda j: (-counts[j], labels[j]))


def top_k(probs, k: int) -> np.ndarray:
    """``[n, min(k, n_labels)]`` indices of the highest probabilities per row; ties by output order."""
    p = np.asarray(probs)
    return np.argsort(-p, axis=1, kind="stable")[:, :k]


def dominant_recall_at_k(y_true, probs, labels: Sequence[str], counts, k: int) -> float | None:
    """Mean over images with a true label of |D ∩ top-k| / |D| (see the module docstring)."""
    y, p = _arrays(y_true, probs)
    rank = np.empty(len(labels), dtype=np.int64)
    rank[frequency_order(labels, counts)] = np.arange(len(labels))  # 0 = most frequent
    tops = top_k(p, k)
    scores = []
    for row, top in zip(y, tops, strict=True):
        true = np.flatnonzero(row)
        if not len(true):
            continue
        dominant = true[np.argsort(rank[true])][:k]
        scores.append(len(np.intersect1d(dominant, top)) / len(dominant))
    return _mean(scores)


def precision_recall_at_k(y_true, probs, k: int) -> tuple[float | None, float | None]:
    """(precision@k, recall@k): means over images with a true label of |top-k ∩ true| / k and / |true|."""
    y, p = _arrays(y_true, probs)
    keep = y.any(axis=1)
    if not keep.any():
        return None, None
    y, p = y[keep], p[keep]
    hits = np.take_along_axis(y, top_k(p, k), axis=1).sum(axis=1)
    return float(np.mean(hits / k)), float(np.mean(hits / y.sum(axis=1)))


def average_precision(y_true_col, scores) -> float | None:
    """AP of one label, as scikit-learn computes it: sum over distinct score thresholds of
    (R_t - R_t-1) * P_t. ``None`` when the label has no positive."""
    y = np.asarray(y_true_col).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # each distinct score's last index
    tp = np.cumsum(y)[last_of_tie]
    predicted = last_of_tie + 1
    precision = tp / predicted
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


#: AP from which a label counts as learned "well"; "partly" from LEARNED_LIFT times the baseline's AP
LEARNED_AP, LEARNED_LIFT = 0.7, 2.0


def learned(ap: float | None, baseline_ap: float | None) -> str | None:
    """How well a label was learned, from its AP and the popularity baseline's (the label's share of
    positives): "well" (AP >= 0.7), "partly" (at least twice the baseline's), "hardly" (less: a photo
    tells little about it); None when undefined (no positives)."""
    if ap is None or not baseline_ap:
        return None
    return "well" if ap >= LEARNED_AP else "partly" if ap >= LEARNED_LIFT * baseline_ap else "hardly"


def _as_threshold_row(thresholds, n_labels: int) -> np.ndarray:
    t = np.asarray(thresholds, dtype=np.float64)
    return np.full(n_labels, float(t)) if t.ndim == 0 else t


def label_counts(y_true, probs, thresholds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label (tp, fp, fn) when a label is predicted at ``prob >= threshold``."""
    y, p = _arrays(y_true, probs)
    pred = p >= _as_threshold_row(thresholds, y.shape[1])
    tp = (pred & y).sum(axis=0)
    return tp, (pred & ~y).sum(axis=0), (~pred & y).sum(axis=0)


def _f1(tp, fp, fn) -> float | None:
    denominator = 2 * tp + fp + fn
    return float(2 * tp / denominator) if denominator else None


def per_label(y_true, probs, labels: Sequence[str], thresholds) -> dict[str, dict]:
    """{label: precision, recall, f1, ap, support} at ``thresholds``."""
    y, p = _arrays(y_true, probs)
    tp, fp, fn = label_counts(y, p, thresholds)
    out = {}
    for j, label in enumerate(labels):
        support = int(tp[j] + fn[j])
        out[label] = {
            "precision": float(tp[j] / (tp[j] + fp[j])) if tp[j] + fp[j] else None,
            "recall": float(tp[j] / support) if support else None,
            "f1": _f1(tp[j], fp[j], fn[j]) if support else None,
            "ap": average_precision(y[:, j], p[:, j]),
            "support": support,
        }
    return out


#: the metrics that depend on the order of each image's labels (the ranking); the others use the
#: probabilities alone
RANKED_METRICS = tuple(f"dominant_recall@{k}" for k in KS) + tuple(
    name for k in KS for name in (f"precision@{k}", f"recall@{k}"))


def ranked_metrics(y_true, ranks, labels: Sequence[str], counts) -> dict:
    """The top-k metrics (``RANKED_METRICS``) when ``ranks`` (``[n_images, n_labels]`` scores,
    ``ranking.rank_scores``) order each image's labels, highest first."""
    y, r = _arrays(y_true, ranks)
    out: dict = {f"dominant_recall@{k}": dominant_recall_at_k(y, r, labels, counts, k) for k in KS}
    for k in KS:
        out[f"precision@{k}"], out[f"recall@{k}"] = precision_recall_at_k(y, r, k)
    return out


def summary(y_true, probs, labels: Sequence[str], counts, thresholds, ranks=None) -> dict:
    """Every summary metric of one set of predictions (the per-label table is ``per_label``).
    ``ranks``: scores that order each image's labels for the top-k metrics (``ranking.rank_scores``);
    default: the probabilities."""
    y, p = _arrays(y_true, probs)
    r = p if ranks is None else _arrays(y, ranks)[1]
    table = per_label(y, p, labels, thresholds)
    tp, fp, fn = label_counts(y, p, thresholds)
    top = ranked_metrics(y, r, labels, counts)
    out: dict = {
        "n_images": int(y.any(axis=1).sum()),
        "n_labels": len(labels),
        "n_labels_with_positives": int(y.any(axis=0).sum()),
    }
    out.update({f"dominant_recall@{k}": top[f"dominant_recall@{k}"] for k in KS})
    out["map"] = _mean(row["ap"] for row in table.values())
    out["micro_f1"] = _f1(tp.sum(), fp.sum(), fn.sum())
    out["macro_f1"] = _mean(row["f1"] for row in table.values())
    for k in KS:
        out[f"precision@{k}"], out[f"recall@{k}"] = top[f"precision@{k}"], top[f"recall@{k}"]
    return out


# --------------------------------------------------------------------------- baseline
def baseline_probs(n_images: int, labels: Sequence[str], counts) -> np.ndarray:
    """The popularity baseline's scores: the same for every image, strictly decreasing with training
    frequency (ties by label name), so its top-k are the k most frequent training labels."""
    n = len(labels)
    scores = np.empty(n)
    scores[frequency_order(labels, counts)] = (n - np.arange(n)) / (n + 1)
    return np.tile(scores, (n_images, 1))


def baseline_thresholds(labels: Sequence[str], counts, k: int = BASELINE_K) -> np.ndarray:
    """Thresholds under which the baseline predicts exactly its ``k`` most frequent labels."""
    scores = baseline_probs(1, labels, counts)[0]
    cut = np.sort(scores)[::-1][min(k, len(labels)) - 1] if len(labels) else 1.0
    return np.full(len(labels), cut)


# --------------------------------------------------------------------------- thresholds
def _best_threshold(y_col: np.ndarray, p_col: np.ndarray, floor: float) -> tuple[float | None, float]:
    """The threshold (>= floor) maximising this label's F1, and that F1; (None, 0) when none helps.

    Candidate cuts are the distinct scores: predicting the top i images. The threshold is set half-way
    between the last score predicted and the next lower one (or the floor when there is none; never
    below ``floor``), so a re-computed probability a hair lower still passes; ties in F1 go to the
    higher threshold."""
    n_pos = int(y_col.sum())
    if n_pos == 0:
        return None, 0.0
    order = np.argsort(-p_col, kind="stable")
    y, s = y_col[order], p_col[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[last_of_tie]
    f1 = 2 * tp / (n_pos + last_of_tie + 1)
    f1[s[last_of_tie] < floor] = -1.0  # cuts that would need a threshold below the floor
    best = int(np.argmax(f1))  # first maximum = highest threshold
    if f1[best] <= 0:
        return None, 0.0
    lowest_in = s[last_of_tie[best]]
    next_out = s[last_of_tie[best] + 1] if last_of_tie[best] + 1 < len(s) else floor
    return float(max(floor, (lowest_in + next_out) / 2)), float(f1[best])


def tune_global_threshold(y_true, probs, floor: float = THRESHOLD_FLOOR) -> float:
    """One threshold for every label, maximising micro-F1 (the default for labels without a tuned one)."""
    y, p = _arrays(y_true, probs)
    t, _ = _best_threshold(y.ravel(), p.ravel(), floor)
    return 0.5 if t is None else t


def tune_thresholds(y_true, probs, floor: float = THRESHOLD_FLOOR) -> tuple[np.ndarray, float]:
    """(per-label thresholds, global threshold): each label's threshold maximises its F1 on these
    predictions, never below ``floor``; labels without a positive (or where no threshold gives a true
    positive) get the global threshold."""
    y, p = _arrays(y_true, probs)
    global_t = tune_global_threshold(y, p, floor)
    out = np.full(y.shape[1], global_t)
    for j in range(y.shape[1]):
        t, _ = _best_threshold(y[:, j], p[:, j], floor)
        if t is not None:
            out[j] = t
    return out, global_t


def thresholds_for(labels: Sequence[str], stored: Mapping[str, float] | None, default: float) -> np.ndarray:
    """Thresholds in ``labels`` order from a {label: threshold} mapping, ``default`` where missing."""
    stored = stored or {}
    return np.array([float(stored.get(label, default)) for label in labels])


def evaluate_predictions(y_true, probs, labels: Sequence[str], counts, thresholds, ranks=None) -> dict:
    """Model and popularity-baseline metrics on the same images (``ranks``: the model's ranking scores):
    {"model": summary, "baseline": summary, "per_label": {label: {..., "threshold", "baseline": {...}}}}."""
    y, p = _arrays(y_true, probs)
    b_probs = baseline_probs(len(y), labels, counts)
    b_thresholds = baseline_thresholds(labels, counts)
    thresholds = _as_threshold_row(thresholds, len(labels))
    table = per_label(y, p, labels, thresholds)
    b_table = per_label(y, b_probs, labels, b_thresholds)
    for j, label in enumerate(labels):
        table[label]["threshold"] = float(thresholds[j])
        table[label]["baseline"] = {key: b_table[label][key] for key in ("precision", "recall", "f1", "ap")}
    return {
        "model": summary(y, p, labels, counts, thresholds, ranks),
        "baseline": summary(y, b_probs, labels, counts, b_thresholds),
        "per_label": table,
    }
