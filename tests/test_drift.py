"""instatag.drift: the statistics and when a figure is flagged (numbers only, no database)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from instatag import drift
from instatag.settings import load_settings

TH = drift.Thresholds()


def test_psi_by_hand_and_its_smoothing():
    assert drift.psi([50, 50], [50, 50]) == pytest.approx(0.0)
    r, d = np.array([50.5, 50.5]) / 101, np.array([90.5, 10.5]) / 101
    assert drift.psi([50, 50], [90, 10]) == pytest.approx(float(np.sum((d - r) * np.log(d / r))))
    assert math.isfinite(drift.psi([100, 0], [0, 100]))  # an empty category stays finite


def test_chi_square_of_homogeneity_pools_small_categories():
    same, p_same, dof = drift.chi2_homogeneity([400, 300, 300], [40, 30, 30])
    assert same == pytest.approx(0.0) and p_same == pytest.approx(1.0) and dof == 2
    _, p_shift, _ = drift.chi2_homogeneity([400, 300, 300], [90, 5, 5])
    assert p_shift < 1e-10
    # four categories with expected counts under 5 are pooled into one: 3 columns, 2 degrees of freedom
    _, _, dof = drift.chi2_homogeneity([1000, 800, 15, 15, 15, 15], [100, 80, 1, 2, 1, 2])
    assert dof == 2
    _, _, dof = drift.chi2_homogeneity([400, 300, 3, 2], [40, 30, 1, 0])  # a pool still too small is left out
    assert dof == 1
    assert drift.chi2_homogeneity([10], [5]) == (0.0, 1.0, 0)  # one category: nothing to test
    assert drift.chi2_homogeneity([10, 5], [0, 0]) == (0.0, 1.0, 0)


def test_kolmogorov_smirnov_and_fisher():
    rng = np.random.default_rng(0)
    d, p = drift.ks(rng.normal(size=400), rng.normal(size=200))
    assert d < 0.12 and p > 0.05
    d, p = drift.ks(rng.normal(size=400), rng.normal(1.0, size=200))
    assert d > 0.3 and p < 1e-10
    assert drift.ks([], [1.0]) == (None, None)
    rise, p = drift.share_rise(50, 100, 10, 1000)
    assert rise == pytest.approx(0.49) and p < 1e-20
    rise, p = drift.share_rise(2, 100, 30, 1000)
    assert rise == pytest.approx(-0.01) and p > 0.5
    assert drift.share_rise(1, 0, 1, 10) == (None, None)


def test_quality_test_never_overstates_the_evidence():
    fall, p = drift.mean_drop(0.5, 400, 0.7, 400)
    se = math.sqrt(0.25 / 400 + 0.21 / 400)
    assert fall == pytest.approx(0.2) and p == pytest.approx(0.5 * math.erfc(0.2 / se / math.sqrt(2)))
    assert drift.mean_drop(0.7, 400, 0.6, 400)[1] > 0.9  # better than validation: no evidence of a fall
    assert drift.mean_drop(0.5, 20, 0.7, 20)[1] > 0.05  # 20 photos cannot show a 0.2 fall


def _draw(shares: dict[str, float], n: int, seed: int) -> dict[str, int]:
    names = sorted(shares)
    counts = np.random.default_rng(seed).multinomial(n, [shares[k] for k in names])
    return dict(zip(names, counts.tolist(), strict=True))


MIX = {"cake": 0.2, "soup": 0.15, "salad": 0.15, "tart": 0.1, "pie": 0.1, "rice": 0.1, drift.UNLABELLED: 0.2}


@pytest.mark.parametrize("seed", range(5))
def test_a_drop_drawn_from_the_same_mix_is_not_flagged(seed):
    ref, drop = _draw(MIX, 2000, 100 + seed), _draw(MIX, 150, seed)
    fig = drift.mix_figure("tag_mix", "tag mix", ref, drop, TH, 150, 2000)
    assert fig["value"] < 0.1 and fig["p_value"] > TH.p_value and not fig["flagged"]
    assert set(fig["ref_shares"]) == set(MIX)


def test_a_drop_of_one_dish_is_flagged_and_named():
    ref = _draw(MIX, 2000, 1)
    drop = _draw({"cake": 0.85, drift.UNLABELLED: 0.15}, 150, 2)
    fig = drift.mix_figure("tag_mix", "tag mix", ref, drop, TH, 150, 2000)
    assert fig["value"] > 1.0 and fig["p_value"] < 1e-20 and fig["flagged"]
    assert fig["most_changed"][0]["category"] == "cake"
    assert re.match(r"tag mix: PSI 3\.\d+ >= 0\.2, p \S+ < 0\.01; most changed: cake 19% -> 87%", fig["message"])


def test_too_few_photos_are_never_flagged_however_large_the_shift():
    ref, drop = _draw(MIX, 2000, 1), {"cake": 12}
    fig = drift.mix_figure("tag_mix", "tag mix", ref, drop, TH, 12, 2000)
    assert fig["value"] > 1.0 and not fig["flagged"] and "fewer than 30" in fig["message"]
    fig = drift.mix_figure("tag_mix", "tag mix", ref, {}, TH, 0, 2000)
    assert fig["value"] is None and not fig["flagged"] and "not measured" in fig["message"]


def test_a_new_trending_hashtag_is_flagged_and_a_rare_one_is_not():
    ref = {"cake": 300, "rare": 10}
    drop = {"airfryer": 60, "rare": 2, "cake": 20}
    fig = drift.new_tags_figure(drop, 120, ref, 1000, ["airfryer", "rare"], TH)
    assert [t["tag"] for t in fig["tags"]] == ["airfryer"] and fig["count"] == 1  # rare's rise is chance
    assert fig["flagged"] and fig["value"] == pytest.approx(0.5) and fig["tags"][0]["flagged"]
    assert "#airfryer 0% -> 50%" in fig["message"]
    quiet = drift.new_tags_figure({"rare": 2}, 120, ref, 1000, ["rare"], TH)
    assert not quiet["flagged"] and quiet["value"] == pytest.approx(2 / 120 - 10 / 1000)  # plotted, not counted
    assert quiet["tags"] == [] and quiet["count"] == 0
    assert drift.new_tags_figure({}, 120, ref, 1000, [], TH)["value"] == 0.0


def test_distribution_share_and_quality_figures():
    rng = np.random.default_rng(3)
    ref = rng.uniform(0.3, 0.9, 400)
    assert not drift.distribution_figure("max_probability", "max p", ref, rng.uniform(0.3, 0.9, 120), TH)["flagged"]
    shifted = drift.distribution_figure("max_probability", "max p", ref, rng.uniform(0.05, 0.4, 120), TH)
    assert shifted["flagged"] and shifted["value"] > 0.5 and shifted["drop_median"] < shifted["ref_median"]
    assert drift.distribution_figure("brightness", "b", [], [1.0], TH)["note"] == "no reference"
    assert drift.share_figure("no_label", "no label", 60, 120, 20, 400, TH.no_label, TH)["flagged"]
    assert not drift.share_figure("no_label", "no label", 8, 120, 20, 400, TH.no_label, TH)["flagged"]
    assert drift.quality_figure(0.45, 200, 0.66, 360, TH)["flagged"]
    assert not drift.quality_figure(0.62, 200, 0.66, 360, TH)["flagged"]
    assert not drift.quality_figure(None, 0, 0.66, 360, TH)["flagged"]
    figs = [drift.quality_figure(0.45, 200, 0.66, 360, TH), drift.quality_figure(0.62, 200, 0.66, 360, TH)]
    assert drift.flags(figs) == [figs[0]["message"]] and "0.450 vs 0.660" in figs[0]["message"]


def test_thresholds_come_from_the_settings():
    s = load_settings(env={"INSTATAG_DRIFT_PSI": "0.3", "INSTATAG_DRIFT_P_VALUE": "0.05",
                           "INSTATAG_DRIFT_MIN_IMAGES": "10"})
    th = drift.Thresholds.from_settings(s)
    assert (th.psi, th.p_value, th.min_images, th.ks) == (0.3, 0.05, 10, 0.2)
    assert th.as_dict()["quality_drop"] == 0.1
    from instatag.settings import SettingsError

    with pytest.raises(SettingsError, match="INSTATAG_DRIFT_P_VALUE"):
        load_settings(env={"INSTATAG_DRIFT_P_VALUE": "0"})
    with pytest.raises(SettingsError, match="INSTATAG_RETRAIN_WHEN"):
        load_settings(env={"INSTATAG_RETRAIN_WHEN": "sometimes"})


def test_new_tags_are_the_unknown_hashtags_whose_share_rose():
    """One definition of a drop's new tags: a hashtag the vocabulary does not know whose share of photos rose,
    not by chance (p < INSTATAG_DRIFT_P_VALUE). #honey at 1% of the vocabulary's images and 1% of the drop's did
    not rise: not new, not listed, not counted; #once on 1 photo of 100 (0.1% before) rose by chance."""
    ref = {"honey": 10, "rare": 1, "once": 1}  # of 1000 images
    drop = {"honey": 1, "rare": 3, "airfryer": 2, "once": 1}  # of 100 photos
    fig = drift.new_tags_figure(drop, 100, ref, 1000, ["honey", "rare", "airfryer", "gone", "once"], TH)
    assert [t["tag"] for t in fig["tags"]] == ["rare", "airfryer"] and fig["count"] == 2
    assert all(t["rise"] > 0 and t["p_value"] < TH.p_value for t in fig["tags"])
    steady = drift.new_tags_figure({"honey": 1}, 100, ref, 1000, ["honey"], TH)
    assert steady["tags"] == [] and steady["count"] == 0 and steady["message"].endswith(": none")
    many = drift.new_tags_figure({f"t{i}": 5 for i in range(15)}, 100, {}, 1000, [f"t{i}" for i in range(15)], TH,
                                 top=10)
    assert len(many["tags"]) == 10 and many["count"] == 15  # the count is of all of them, the list the fastest
