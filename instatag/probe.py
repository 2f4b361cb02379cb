"""A linear probe on frozen image features: which tags a photo can show, and which two it cannot tell apart.

The evidence behind ``instatag vocab suggest`` (docs/grouping.md, Suggestions), measured rather than
guessed. Inputs are plain arrays, so tests inject features: ``X`` float [n, d] (one row per image,
``instatag.features``), ``Y`` 0/1 [n, L] (the images' candidate labels), ``folds`` int [n]
(``folds_of``: from the content hash, so the same images always fall in the same fold).

- ``out_of_fold_scores``: a ridge regression head per label (scikit-learn's ``Ridge``, all labels in
  one solve) on standardised features, trained on four folds and scoring the fifth, so every image
  gets a score from a head that never saw it. The penalty is ``ALPHA_PER_IMAGE`` times the training
  images: on food10 (1,986 images, its 111 hashtag lemmas on 15 images or more, efficientnet_lite0
  at 128 px) it gave a mean AP of 0.169, against 0.166 for ``RidgeCV`` choosing a penalty per label
  from 1 to 1e5 by leave-one-out error, in a fifteenth of the time (penalties 3,000-20,000 there:
  0.164-0.169).
- ``label_evidence``: per label its average precision (AP) from those scores against chance: AP of a
  random ranking is about the label's prevalence, and its exact null distribution for the label's
  number of positives is drawn (``DRAWS`` random rankings, ``RandomDraws``) to give a one-sided
  p-value.
- ``cooccurrence_specificity``: how far the other labels on a label's images are from the other
  labels on any images: the Kullback-Leibler divergence (bits) of the two label distributions,
  against random image sets of the same size (a permutation null, ``DRAWS`` sets). A tag that "goes
  with everything" (#foodie) is about as specific as a random set of photos.
- ``pair_discrimination``: can the probe tell the photos with tag a but not b from those with b but
  not a? The ROC AUC of the difference of the two labels' standardised out-of-fold scores: about 0.5
  means the two heads see those photos alike (no head is fitted for the pair, so a few photos do not
  make an overfitted head look confused).
- ``cooccurrence``: Jaccard, overlap coefficient and normalised PMI of two labels' image sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: folds of the probe's cross-validation
N_FOLDS = 5
#: the ridge penalty per training image (standardised features)
ALPHA_PER_IMAGE = 6.0
#: random rankings / image sets per null distribution (p-values resolve to 1 / (DRAWS + 1))
DRAWS = 400


def folds_of(sha256s) -> np.ndarray:
    """The probe fold (0..N_FOLDS-1) of each image, from its content hash (hex digits 8-15: independent
    of ``labels.is_valid``, which reads digits 0-7)."""
    return np.array([int(s[8:16], 16) % N_FOLDS for s in sha256s], dtype=np.int64)


def out_of_fold_scores(X: np.ndarray, Y: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Scores float32 [n, L]: each image scored by ridge heads trained on the other folds.

    A fold with no training image, or a label without a positive in the training folds, scores 0."""
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(X, dtype=np.float32)
    Y = np.asarray(Y, dtype=np.float32)
    scores = np.zeros(Y.shape, dtype=np.float32)
    for k in np.unique(folds):
        test, train = folds == k, folds != k
        if not train.any() or not Y.shape[1]:
            continue
        scaler = StandardScaler().fit(X[train])
        head = Ridge(alpha=ALPHA_PER_IMAGE * int(train.sum())).fit(scaler.transform(X[train]), Y[train])
        scores[test] = np.asarray(head.predict(scaler.transform(X[test]))).reshape(int(test.sum()), -1)
    return scores


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision of ``score`` ranking the positives of ``y`` (scikit-learn's definition)."""
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, score)) if y.any() else float("nan")


class RandomDraws:
    """``draws`` random orderings of ``n`` images, shared by the null distributions of every label: the
    first k entries of a row are a random ranking's positions of k positives, or a random set of k images."""

    def __init__(self, n: int, seed: int = 0, draws: int = DRAWS):
        self.n, self.draws = n, draws
        self.order = np.argsort(np.random.default_rng(seed).random((draws, n)), axis=1)

    def ranking_ap(self, n_pos: int) -> np.ndarray:
        """AP of each random ranking of the ``n`` images when ``n_pos`` of them are positive."""
        if not 0 < n_pos <= self.n:
            return np.full(self.draws, np.nan)
        ranks = np.sort(self.order[:, :n_pos], axis=1) + 1
        return (np.arange(1, n_pos + 1) / ranks).mean(axis=1)

    def sets(self, k: int) -> np.ndarray:
        """Indicator float [draws, n] of a random set of ``k`` images per draw."""
        out = np.zeros((self.draws, self.n), dtype=np.float32)
        np.put_along_axis(out, self.order[:, :k], 1.0, axis=1)
        return out


def _p_value(null: np.ndarray, observed: float) -> float:
    """One-sided P(null >= observed) with the +1 correction (never 0)."""
    return (1 + int((null >= observed - 1e-12).sum())) / (len(null) + 1)


@dataclass(frozen=True)
class LabelProbe:
    """One label's probe evidence."""

    n: int  # images with the label
    prevalence: float  # n / images probed
    ap: float  # average precision of the out-of-fold scores
    chance: float  # mean AP of a random ranking (about the prevalence)
    p_value: float  # P(random ranking's AP >= ap), one-sided, with the +1 correction

    @property
    def lift(self) -> float:
        return self.ap / self.chance if self.chance else float("nan")


def label_evidence(Y: np.ndarray, scores: np.ndarray, draws: RandomDraws | None = None) -> list[LabelProbe]:
    """Per label: AP of its scores against the AP of random rankings."""
    n = len(Y)
    draws = draws or RandomDraws(n)
    out = []
    for j in range(Y.shape[1]):
        y = Y[:, j] > 0
        n_pos = int(y.sum())
        ap = average_precision(y, scores[:, j])
        null = draws.ranking_ap(n_pos)
        out.append(LabelProbe(n_pos, n_pos / n if n else 0.0, ap, float(np.mean(null)), _p_value(null, ap)))
    return out


@dataclass(frozen=True)
class Specificity:
    """How specific a label's co-occurring labels are (``cooccurrence_specificity``)."""

    kl_bits: float  # KL(other labels on its images || other labels on all images)
    null_bits: float  # the mean of that divergence for random image sets of the same size
    p_value: float  # P(random set's divergence >= kl_bits)
    top: str | None  # the label it co-occurs with most above chance (highest lift), if any
    top_lift: float  # P(top | label) / P(top)

    @property
    def ratio(self) -> float:
        return self.kl_bits / self.null_bits if self.null_bits > 0 else float("inf")


def _kl_bits(counts: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """KL(counts normalised || reference) in bits, per row of ``counts`` ([..., m]); 0 for an empty row."""
    counts = np.atleast_2d(counts)
    total = counts.sum(axis=1, keepdims=True)
    q = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    terms = np.where(q > 0, q * np.log2(np.where(q > 0, q, 1) / reference), 0.0)
    return terms.sum(axis=1)


def cooccurrence_specificity(Y: np.ndarray, j: int, reference: np.ndarray, names,
                             draws: RandomDraws | None = None) -> Specificity | None:
    """The specificity of label ``j``'s co-occurrence with the ``reference`` labels (bool mask [L];
    ``j`` itself is left out). None when the label never co-occurs with a reference label, so there
    is nothing to measure."""
    ref = np.asarray(reference, dtype=bool).copy()
    ref[j] = False
    Yr = Y[:, ref].astype(np.float64)
    totals = Yr.sum(axis=0)
    mine = Y[:, j] > 0
    counts = Yr[mine].sum(axis=0)
    if counts.sum() == 0 or totals.sum() == 0:
        return None
    reference_dist = totals / totals.sum()
    observed = float(_kl_bits(counts, reference_dist)[0])
    k, n = int(mine.sum()), len(Y)
    draws = draws or RandomDraws(n)
    null = _kl_bits((draws.sets(k) @ Yr.astype(np.float32)).astype(np.float64), reference_dist)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.where(totals > 0, (counts / k) / (totals / n), 0.0)
    best = int(np.argmax(lift))
    ref_names = [name for name, keep in zip(names, ref, strict=True) if keep]
    return Specificity(observed, float(null.mean()), _p_value(null, observed), ref_names[best], float(lift[best]))


@dataclass(frozen=True)
class Cooccurrence:
    both: int
    only_a: int
    only_b: int
    jaccard: float  # |A ∩ B| / |A ∪ B|
    overlap: float  # |A ∩ B| / min(|A|, |B|)
    npmi: float  # log(P(a,b) / (P(a) P(b))) / -log P(a,b); -1 when they never co-occur


def cooccurrence(ya: np.ndarray, yb: np.ndarray) -> Cooccurrence:
    a, b = ya > 0, yb > 0
    n = len(a)
    both, na, nb = int((a & b).sum()), int(a.sum()), int(b.sum())
    union = int((a | b).sum())
    if both == 0:
        npmi = -1.0
    elif both == n:
        npmi = 1.0
    else:
        pab, pa, pb = both / n, na / n, nb / n
        npmi = float(np.log(pab / (pa * pb)) / -np.log(pab))
    return Cooccurrence(both, na - both, nb - both, both / union if union else 0.0,
                        both / min(na, nb) if min(na, nb) else 0.0, npmi)


#: images needed on each side (a without b, b without a) to measure whether the probe tells them apart
MIN_EXCLUSIVE = 8


def pair_discrimination(scores_a: np.ndarray, scores_b: np.ndarray, ya: np.ndarray, yb: np.ndarray) -> float | None:
    """ROC AUC of z(scores_a) - z(scores_b) (each standardised over all images) separating the photos with a
    but not b (positive) from those with b but not a; None when either side has fewer than MIN_EXCLUSIVE."""
    from sklearn.metrics import roc_auc_score

    a, b = ya > 0, yb > 0
    if (a & ~b).sum() < MIN_EXCLUSIVE or (b & ~a).sum() < MIN_EXCLUSIVE:
        return None

    def z(s):
        s = np.asarray(s, dtype=np.float64)
        return (s - s.mean()) / (s.std() or 1.0)

    diff = z(scores_a) - z(scores_b)
    only = a ^ b
    return float(roc_auc_score(a[only], diff[only]))
