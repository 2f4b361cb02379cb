"""The order in which a model lists an image's labels: rank in ``predictions``, top-k in evaluation.

Probabilities say how likely each label is on its own; the order decides which tags come first.

- ``probability`` (the default of every preset): most probable first (the study's
  ``my_predict_func``); rank 1 is the tag a person would name first.
- ``dominant_first`` (an option: ``TrainConfig.ranking``, ``instatag train --set
  ranking=dominant_first``): first the label most likely to be the image's *dominant* label (its most
  frequent true label, the one ``dominant_recall@1`` asks for), then the others most probable first.
  With per-label probabilities ``p`` and labels in training-frequency order, a label is dominant
  when it is present and no more frequent label is: ``p_l * prod(1 - p_m)`` over the more frequent
  ``m`` (treating labels as independent). A generic label that is on half of an image's likely
  posts outranks a specific one on 70% of them exactly when the generic one is more frequent
  overall, as uploaders' tags are: it raises dominant_recall@1, but puts a generic tag ("breakfast")
above a confident specific one ("bibimbap"). docs/evaluation.md shows what each order measured.

Only the order changes: probabilities, thresholds and mAP are the same under both.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RANKINGS = ("probability", "dominant_first")


def check(ranking: str) -> str:
    if ranking not in RANKINGS:
        from .errors import UserError

        raise UserError(f"ranking must be one of {', '.join(RANKINGS)}, not {ranking!r}")
    return ranking


def dominant_probs(probs, frequency_order: Sequence[int]) -> np.ndarray:
    """P(label is the image's dominant label) per image and label, from independent marginals;
    ``frequency_order`` lists label indices from the most to the least frequent."""
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    ordered = p[:, frequency_order]
    none_above = np.cumprod(np.c_[np.ones(len(p)), 1 - ordered[:, :-1]], axis=1)
    out = np.empty_like(p)
    out[:, frequency_order] = ordered * none_above
    return out


def rank_scores(probs, ranking: str = "probability", frequency_order: Sequence[int] | None = None) -> np.ndarray:
    """Scores whose descending order (ties by output order) is the ranking; ``probs`` unchanged for
    ``probability``. ``frequency_order`` is needed for ``dominant_first``."""
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    if check(ranking) == "probability" or p.shape[1] == 0:
        return p
    if frequency_order is None or len(frequency_order) != p.shape[1]:
        raise ValueError(f"dominant_first needs the frequency order of all {p.shape[1]} labels")
    first = np.argmax(dominant_probs(p, frequency_order), axis=1)
    scores = p.copy()
    scores[np.arange(len(p)), first] = 2.0  # above every probability
    return scores


def order(probs, ranking: str = "probability", frequency_order: Sequence[int] | None = None) -> np.ndarray:
    """Label indices per image, first-ranked first."""
    return np.argsort(-rank_scores(probs, ranking, frequency_order), axis=1, kind="stable")
