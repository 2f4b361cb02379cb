"""Drift figures of a drop against a reference, each an effect size with a test and a flag (numpy, scipy).

Gathering the data (the drop's photos, the champion's training data and validation predictions) is
``instatag.drops``' job; here only counts and values go in, and JSON-able figures come out:
``{"name", "statistic", "value", "p_value", "threshold", "n", "n_ref", "flagged", "message", ...}``.

The statistics (docs/drops.md gives the reasoning and the thresholds' scale):

- a **mix** of categories (the tag mix: each label's images and the unlabelled images; the top-1
  labels): the population stability index ``PSI = sum((d - r) * ln(d / r))`` over the categories'
  shares, 0.5 added to every count first so that an empty category stays finite (by convention
  under 0.1: stable, 0.1-0.25: a moderate shift, over 0.25: a large one). Its test is Pearson's
  chi-square test of homogeneity of the 2 x K table of counts (``scipy.stats.chi2_contingency``),
  with the categories whose expected count is under 5 pooled into one. In the tag mix an image with
  several labels counts once per label, so the test is slightly too eager there; the PSI threshold
  keeps it honest.
- a **distribution** (the highest probability of each photo, its longest side, its brightness):
  the two-sample Kolmogorov-Smirnov statistic D, the largest gap between the two cumulative
  distributions (0..1), and its p-value (``scipy.stats.ks_2samp``).
- a **share** (photos with no label over its threshold; photos carrying a hashtag the vocabulary
  does not know): the rise, drop share - reference share, and the one-sided Fisher exact test that
  the drop's share is higher (``scipy.stats.fisher_exact``). A drop's *new tags* are the hashtags
  the vocabulary does not know whose share rose (``new_tags_figure``).
- **quality**: how far the fresh-label dominant_recall@2 falls below the model's validation figure;
  its test is a one-sided z-test with each mean's variance bounded by m(1 - m)/n (the largest a
  mean of scores in [0, 1] can have), so it never overstates the evidence.

A figure is flagged when the drop has at least ``min_images`` photos for it, its p-value is under
``p_value`` (it is not chance) and its effect is at or over its threshold (it is big enough to matter).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from .settings import Settings

#: added to every count before shares are compared in PSI
SMOOTHING = 0.5
#: categories whose expected count is under this are pooled for the chi-square test
MIN_EXPECTED = 5.0
#: category name of the images without a label in the tag mix
UNLABELLED = "(no label)"


@dataclass(frozen=True)
class Thresholds:
    """When a figure is flagged: the settings ``INSTATAG_DRIFT_<NAME>`` (their defaults and meaning are
    in instatag.settings, the one owner; docs/drops.md)."""

    #: photos (labelled photos for quality) a drop needs before any of its figures is flagged
    min_images: int = Settings.drift_min_images
    #: significance level of every test
    p_value: float = Settings.drift_p_value
    #: PSI of the tag mix and of the top-1 labels
    psi: float = Settings.drift_psi
    #: Kolmogorov-Smirnov D of the highest probability, the image size and the brightness
    ks: float = Settings.drift_ks
    #: rise of the share of photos with no label over its threshold
    no_label: float = Settings.drift_no_label
    #: rise of the share of photos carrying a hashtag the vocabulary does not know
    new_tag_share: float = Settings.drift_new_tag_share
    #: fall of the fresh-label dominant_recall@2 below the validation figure
    quality_drop: float = Settings.drift_quality_drop

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(**{f.name: getattr(settings, "drift_" + f.name) for f in fields(cls)})

    def as_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- statistics
def shares(counts: Sequence[float], smoothing: float = SMOOTHING) -> np.ndarray:
    """Shares of the categories after adding ``smoothing`` to every count."""
    c = np.asarray(counts, dtype=np.float64) + smoothing
    return c / c.sum()


def psi(ref_counts: Sequence[float], drop_counts: Sequence[float], smoothing: float = SMOOTHING) -> float:
    """Population stability index of two count vectors over the same categories (>= 0)."""
    r, d = shares(ref_counts, smoothing), shares(drop_counts, smoothing)
    return float(np.sum((d - r) * np.log(d / r)))


def chi2_homogeneity(ref_counts: Sequence[float], drop_counts: Sequence[float]) -> tuple[float, float, int]:
    """(chi-square, p-value, degrees of freedom) of the test that both samples come from one mix.
    Categories empty in both are left out; those with an expected count under MIN_EXPECTED in either
    row are pooled into one (left out when the pool is still too small). p = 1 with fewer than two
    categories left."""
    from scipy.stats import chi2_contingency

    table = np.array([ref_counts, drop_counts], dtype=np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0, 0
    rows, total = table.sum(axis=1), table.sum()
    small = (np.outer(rows, table.sum(axis=0)) / total < MIN_EXPECTED).any(axis=0)
    if small.any():
        pooled = table[:, small].sum(axis=1, keepdims=True)
        table = table[:, ~small]
        if (rows * pooled.sum() / total >= MIN_EXPECTED).all():
            table = np.hstack([table, pooled])
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0, 0
    res = chi2_contingency(table, correction=False)
    return float(res.statistic), float(res.pvalue), int(res.dof)


def ks(ref_values: Sequence[float], drop_values: Sequence[float]) -> tuple[float | None, float | None]:
    """(Kolmogorov-Smirnov D, p-value) of two samples; (None, None) when either is empty."""
    if not len(ref_values) or not len(drop_values):
        return None, None
    from scipy.stats import ks_2samp

    res = ks_2samp(np.asarray(ref_values, dtype=np.float64), np.asarray(drop_values, dtype=np.float64))
    return float(res.statistic), float(res.pvalue)


def share_rise(k: int, n: int, k_ref: int, n_ref: int) -> tuple[float | None, float | None]:
    """(drop share - reference share, one-sided Fisher exact p that the drop's share is higher);
    (None, None) when either sample is empty."""
    if not n or not n_ref:
        return None, None
    from scipy.stats import fisher_exact

    p = fisher_exact([[k, n - k], [k_ref, n_ref - k_ref]], alternative="greater").pvalue
    return k / n - k_ref / n_ref, float(p)


def mean_drop(fresh: float, n: int, valid: float, n_valid: int) -> tuple[float, float]:
    """(valid - fresh, one-sided p that the fresh mean is lower): a z-test whose variances are
    bounded by m(1 - m)/n, the largest for a mean of n scores in [0, 1]."""
    from scipy.stats import norm

    fall = valid - fresh
    var = fresh * (1 - fresh) / max(n, 1) + valid * (1 - valid) / max(n_valid, 1)
    if var <= 0:
        return fall, 0.0 if fall > 0 else 1.0
    return fall, float(norm.sf(fall / math.sqrt(var)))


# --------------------------------------------------------------------------- figures
def _judge(fig: dict, th: Thresholds, n_min: int, what: str) -> dict:
    """Set ``flagged`` and ``message`` of a figure (value, p_value, threshold, n already in it)."""
    value, p, threshold = fig["value"], fig["p_value"], fig["threshold"]
    if value is None:
        fig.update(flagged=False, message=f"{what}: not measured ({fig.get('note') or 'no data'})")
        return fig
    big = value >= threshold
    real = p is not None and p < th.p_value
    enough = fig["n"] >= n_min
    fig["flagged"] = bool(big and real and enough)
    stat = f"{fig['statistic']} {value:.3f}"
    test = "" if p is None else f", p {p:.2g}"
    if fig["flagged"]:
        fig["message"] = f"{what}: {stat} >= {threshold:g}{test} < {th.p_value:g}"
    elif big and not enough:
        fig["message"] = f"{what}: {stat}{test}; not flagged: {fig['n']} photos, fewer than {n_min}"
    elif big:
        fig["message"] = f"{what}: {stat}{test}; not flagged: p not under {th.p_value:g}"
    else:
        fig["message"] = f"{what}: {stat}{test} (threshold {threshold:g})"
    return fig


def _top_changes(names: Sequence[str], ref: np.ndarray, drop: np.ndarray, n: int = 3) -> list[dict]:
    r, d = ref / max(ref.sum(), 1), drop / max(drop.sum(), 1)
    order = np.argsort(-np.abs(d - r), kind="stable")[:n]
    return [{"category": names[i], "ref_share": float(r[i]), "drop_share": float(d[i])} for i in order]


def mix_figure(name: str, what: str, ref: Mapping[str, int], drop: Mapping[str, int], th: Thresholds,
               n: int, n_ref: int) -> dict:
    """A mix of categories (PSI and chi-square) as a figure; ``n``/``n_ref``: photos behind the counts."""
    names = sorted(set(ref) | set(drop))
    r = np.array([ref.get(k, 0) for k in names], dtype=np.float64)
    d = np.array([drop.get(k, 0) for k in names], dtype=np.float64)
    fig = {"name": name, "statistic": "PSI", "threshold": th.psi, "n": n, "n_ref": n_ref}
    if not names or not r.sum() or not d.sum():
        fig.update(value=None, p_value=None, note="no photos")
        return _judge(fig, th, th.min_images, what)
    chi2, p, dof = chi2_homogeneity(r, d)
    fig.update(value=psi(r, d), p_value=p, chi2=chi2, dof=dof,
               ref_shares={k: float(v) for k, v in zip(names, r / r.sum(), strict=True)},
               drop_shares={k: float(v) for k, v in zip(names, d / d.sum(), strict=True)},
               most_changed=_top_changes(names, r, d))
    fig = _judge(fig, th, th.min_images, what)
    if fig["flagged"]:
        fig["message"] += "; most changed: " + ", ".join(
            f"{c['category']} {c['ref_share']:.0%} -> {c['drop_share']:.0%}" for c in fig["most_changed"])
    return fig


def distribution_figure(name: str, what: str, ref: Sequence[float], drop: Sequence[float], th: Thresholds,
                        unit: str = "") -> dict:
    """Two samples of a value (Kolmogorov-Smirnov) as a figure, with their medians."""
    d, p = ks(ref, drop)
    fig = {"name": name, "statistic": "KS D", "value": d, "p_value": p, "threshold": th.ks, "n": len(drop),
           "n_ref": len(ref), "unit": unit,
           "ref_median": float(np.median(ref)) if len(ref) else None,
           "drop_median": float(np.median(drop)) if len(drop) else None}
    if d is None:
        fig["note"] = "no reference" if not len(ref) else "no photos"
    fig = _judge(fig, th, th.min_images, what)
    if fig["flagged"]:
        fig["message"] += f"; median {fig['ref_median']:.3g} -> {fig['drop_median']:.3g}{unit}"
    return fig


def share_figure(name: str, what: str, k: int, n: int, k_ref: int, n_ref: int, threshold: float,
                 th: Thresholds) -> dict:
    """The rise of a share (one-sided Fisher exact test) as a figure."""
    rise, p = share_rise(k, n, k_ref, n_ref)
    fig = {"name": name, "statistic": "rise", "value": rise, "p_value": p, "threshold": threshold, "n": n,
           "n_ref": n_ref, "drop_share": k / n if n else None, "ref_share": k_ref / n_ref if n_ref else None}
    if rise is None:
        fig["note"] = "no reference" if not n_ref else "no photos"
    fig = _judge(fig, th, th.min_images, what)
    if fig["flagged"]:
        fig["message"] += f"; {fig['ref_share']:.0%} -> {fig['drop_share']:.0%} of the photos"
    return fig


def new_tags_figure(drop_counts: Mapping[str, int], n: int, ref_counts: Mapping[str, int], n_ref: int,
                    unknown: Iterable[str], th: Thresholds, top: int = 10) -> dict:
    """The drop's *new tags*: the hashtags the vocabulary does not know (``unknown``) whose share of
    photos rose, and not by chance (one-sided Fisher exact test, p under ``th.p_value``); a hashtag
    whose share held or fell is not new, however rare. ``count``: how many there are; ``tags``: the
    ``top`` of them by rise (each with its share before and after, rise and p). The figure's value
    is the highest rise of any unknown hashtag (with its p), so a chance rise shows in the plot but
    is never counted; flagged when a new tag's rise reaches ``th.new_tag_share`` (enough photos
    given)."""
    candidates = []
    for tag in unknown:
        k, k_ref = drop_counts.get(tag, 0), ref_counts.get(tag, 0)
        if n and n_ref and k / n > k_ref / n_ref:
            candidates.append({"tag": tag, "n": k, "drop_share": k / n, "ref_share": k_ref / n_ref,
                               "rise": k / n - k_ref / n_ref, "p_value": share_rise(k, n, k_ref, n_ref)[1]})
    candidates.sort(key=lambda r: (-r["rise"], r["tag"]))
    rising = [r for r in candidates if r["p_value"] < th.p_value]
    rows = rising[:top]
    for r in rows:
        r["flagged"] = bool(r["rise"] >= th.new_tag_share and n >= th.min_images)
    fig = {"name": "new_tags", "statistic": "rise", "threshold": th.new_tag_share, "n": n, "n_ref": n_ref,
           "tags": rows, "count": len(rising)}
    what = "new tags (hashtags the vocabulary does not know whose share rose)"
    if not candidates:
        if n and n_ref:
            fig.update(value=0.0, p_value=1.0, flagged=False, message=f"{what}: none")
        else:
            fig.update(value=None, p_value=None, flagged=False, message=f"{what}: not measured (no photos)")
        return fig
    lead = next((r for r in rows if r["flagged"]), candidates[0])
    fig.update(value=lead["rise"], p_value=lead["p_value"])
    fig = _judge(fig, th, th.min_images, f"{what}: {len(rising)}; fastest #{lead['tag']}")
    flagged = [r for r in rows if r["flagged"]]
    if flagged:
        fig["message"] = "new tags rose (hashtags the vocabulary does not know): " + ", ".join(
            f"#{r['tag']} {r['ref_share']:.0%} -> {r['drop_share']:.0%} (p {r['p_value']:.2g})" for r in flagged) + \
            f" (threshold +{th.new_tag_share:g})"
    return fig


def quality_figure(fresh: float | None, n: int, valid: float | None, n_valid: int, th: Thresholds) -> dict:
    """The fall of the fresh-label dominant_recall@2 below the validation figure as a figure."""
    what = "fresh-label dominant_recall@2 below the validation figure"
    fig = {"name": "quality", "statistic": "fall", "threshold": th.quality_drop, "n": n, "n_ref": n_valid,
           "fresh": fresh, "valid": valid}
    if fresh is None or valid is None:
        fig.update(value=None, p_value=None,
                   note="no labelled photo" if fresh is None else "the model has no validation figure")
        return _judge(fig, th, th.min_images, what)
    fall, p = mean_drop(fresh, n, valid, n_valid)
    fig.update(value=fall, p_value=p)
    fig = _judge(fig, th, th.min_images, what)
    if fig["flagged"]:
        fig["message"] += f"; {fresh:.3f} vs {valid:.3f} on validation"
    return fig


def flags(figures: Iterable[dict]) -> list[str]:
    """The messages of the flagged figures."""
    return [f["message"] for f in figures if f.get("flagged")]
