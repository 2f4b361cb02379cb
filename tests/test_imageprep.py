"""The image -> tensor contract (instatag.imageprep): both training data paths draw RandomResizedCrop boxes
from one distribution (fastai's, the reference, against the tensor implementation of the memory path),
the tensor crop resamples as PIL does, the record in model.json round-trips, and the evaluation crop
and normalisation are what the Predictor runs."""

from __future__ import annotations

import random

import numpy as np
import pytest

from instatag import imageprep
from instatag.imageprep import Preprocessing

N = 4000
#: a two-sample Kolmogorov-Smirnov test at this p-value fails a statistic; with four statistics, three image
#: shapes and fixed seeds the test is deterministic, and the check that it catches the old central-square
#: crop shows it can fail
ALPHA = 1e-3


def _fastai_boxes(w: int, h: int, min_scale: float, n: int, seed: int) -> np.ndarray:
    """``n`` boxes (left, top, width, height) as fastai's RandomResizedCrop draws them on a w x h image."""
    from fastai.vision.augment import RandomResizedCrop
    from fastai.vision.core import PILImage
    from PIL import Image

    img = PILImage(Image.new("RGB", (w, h)))
    rrc = RandomResizedCrop(32, min_scale=min_scale)
    state = random.getstate()
    random.seed(seed)
    try:
        out = []
        for _ in range(n):
            rrc.before_call(img, split_idx=0)
            out.append((*rrc.tl, *rrc.cp_size))
    finally:
        random.setstate(state)
    return np.array(out, dtype=np.float64)


def _tensor_boxes(w: int, h: int, min_scale: float, n: int, seed: int) -> np.ndarray:
    import torch

    sizes = torch.tensor([[w, h]] * n)
    return imageprep.crop_boxes(sizes, min_scale, generator=torch.Generator().manual_seed(seed)).double().numpy()


def _statistics(boxes: np.ndarray, w: int, h: int) -> dict[str, np.ndarray]:
    left, top, bw, bh = boxes.T
    return {"area share": bw * bh / (w * h), "aspect": bw / bh, "centre x": (left + bw / 2) / w,
            "centre y": (top + bh / 2) / h}


def _ks_pvalues(a: np.ndarray, b: np.ndarray, w: int, h: int) -> dict[str, float]:
    from scipy.stats import ks_2samp

    sa, sb = _statistics(a, w, h), _statistics(b, w, h)
    return {k: float(ks_2samp(sa[k], sb[k]).pvalue) for k in sa}


@pytest.mark.parametrize(("w", "h", "min_scale"), [(160, 120, 0.35), (120, 160, 0.35), (96, 96, 0.08)])
def test_both_data_paths_draw_crop_boxes_from_one_distribution(w, h, min_scale):
    ref = _fastai_boxes(w, h, min_scale, N, seed=1)
    ours = _tensor_boxes(w, h, min_scale, N, seed=2)
    assert (ours[:, 0] >= 0).all() and (ours[:, 1] >= 0).all()
    assert (ours[:, 0] + ours[:, 2] <= w).all() and (ours[:, 1] + ours[:, 3] <= h).all()
    pvalues = _ks_pvalues(ref, ours, w, h)
    assert min(pvalues.values()) > ALPHA, pvalues
    # the means agree closely too (a coarse look the KS test does not need, but a reader may)
    for k, v in _statistics(ref, w, h).items():
        assert abs(v.mean() - _statistics(ours, w, h)[k].mean()) < 0.02, k


def test_the_old_central_square_crop_is_told_apart():
    """The memory path used to crop inside the central square: on a landscape image its boxes' centres
    cluster in the middle, and the same test rejects it (so the test above can fail)."""
    w, h = 160, 120
    ref = _fastai_boxes(w, h, 0.35, N, seed=1)
    square = _tensor_boxes(h, h, 0.35, N, seed=2)
    square[:, 0] += (w - h) // 2  # the central square's boxes in the whole image's coordinates
    pvalues = _ks_pvalues(ref, square, w, h)
    assert pvalues["centre x"] < 1e-6 and pvalues["area share"] < 1e-6, pvalues


def test_fallback_box_is_fastais():
    """No try fits a 400 x 40 strip at 35% of its area within ratio 3:4..4:3: the centred 53 x 40 box."""
    ref = _fastai_boxes(400, 40, 0.35, 5, seed=0)
    ours = _tensor_boxes(400, 40, 0.35, 5, seed=0)
    assert ref.tolist() == ours.tolist() == [[173, 0, 53, 40]] * 5
    assert _tensor_boxes(40, 400, 0.35, 1, seed=0).tolist() == _fastai_boxes(40, 400, 0.35, 1, seed=0).tolist()


def _photo(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth synthetic photo with some edges: uint8 [h, w, 3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([128 + 100 * np.sin(xx / 9 + c) * np.cos(yy / 13 - c) for c in range(3)], axis=-1)
    img[(xx // 20 + yy // 20) % 2 == 0] *= 0.6
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("box", [(10, 5, 140, 105), (30, 20, 60, 50), (0, 0, 160, 120), (50, 40, 32, 32)])
def test_tensor_crop_resamples_as_pil(box):
    """crop_batch (memory path) against PIL's crop + bilinear resize (fastai's files path) of the same box:
    shrinking, enlarging, the whole image and a 1:1 copy."""
    import torch
    from PIL import Image

    img = _photo(160, 120)
    left, top, bw, bh = box
    ref = np.asarray(Image.fromarray(img).crop((left, top, left + bw, top + bh)).resize((32, 32), Image.BILINEAR))
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    out = imageprep.crop_batch(x, torch.tensor([box]), 32)[0].permute(1, 2, 0).numpy() * 255
    diff = np.abs(out - ref.astype(np.float64))
    # PIL's bilinear filter spans twice the shrink factor, roi_align averages over the shrink factor: close
    assert diff.mean() < 4.0 and np.percentile(diff, 99) < 20, (diff.mean(), np.percentile(diff, 99))
    if (bw, bh) == (32, 32):
        np.testing.assert_allclose(out, ref, atol=0.01)


def test_random_crops_of_a_canvas_are_pils_crops_of_the_image():
    """The memory path's crops of an image held on a larger canvas (boxes reaching its right and bottom
    edges included) against PIL's crop + resize of the image alone: the padding never shows."""
    import torch
    from PIL import Image

    img = _photo(100, 60, seed=1)
    x = torch.from_numpy(np.stack([imageprep.canvas(img, 128)] * 64))
    boxes = imageprep.crop_boxes(torch.tensor([[100, 60]] * 64), 0.08, generator=torch.Generator().manual_seed(0))
    boxes[0] = torch.tensor([40, 20, 60, 40])  # to the bottom-right corner
    out = imageprep.crop_batch(x, boxes, 24).permute(0, 2, 3, 1).numpy() * 255
    pil = Image.fromarray(img)
    ref = np.stack([np.asarray(pil.crop((lf, tp, lf + bw, tp + bh)).resize((24, 24), Image.BILINEAR))
                    for lf, tp, bw, bh in boxes.tolist()]).astype(np.float64)
    diff = np.abs(out - ref)
    assert diff.mean() < 3.0 and diff[0].max() < 24, (diff.mean(), diff[0].max())
    # a white image on its canvas: every crop white to its edges (zero padding would darken them by ~10%)
    white = torch.from_numpy(np.stack([imageprep.canvas(np.full((60, 100, 3), 255, np.uint8), 128)] * 64))
    crops = imageprep.crop_batch(white, boxes, 24)
    assert torch.allclose(crops, torch.ones_like(crops))
    with pytest.raises(ValueError, match="does not fit"):
        imageprep.canvas(img, 80)


def test_the_record_round_trips_and_old_models_read():
    from types import SimpleNamespace

    config = SimpleNamespace(arch="efficientnet_lite0", size=128, min_scale=0.5, max_rotate=5.0, lighting=0.1)
    prep = Preprocessing.for_config(config)
    assert prep.mean == prep.std == (0.5, 0.5, 0.5) and prep.ratio == imageprep.RATIO
    import json

    meta = {"preprocessing": json.loads(json.dumps(prep.to_meta()))}
    assert Preprocessing.from_meta(meta) == prep
    assert meta["preprocessing"]["version"] == imageprep.VERSION
    resnet = Preprocessing.for_config(SimpleNamespace(**{**vars(config), "arch": "resnet18"}))
    assert resnet.mean == (0.485, 0.456, 0.406) and resnet.std == (0.229, 0.224, 0.225)
    old = {"size": 64, "mean": [0.1, 0.2, 0.3], "std": [1, 1, 1], "params": {"min_scale": 0.4}}
    assert Preprocessing.from_meta(old) == Preprocessing(64, (0.1, 0.2, 0.3), (1.0, 1.0, 1.0), min_scale=0.4)


def test_inputs_scale_and_normalise_on_any_dtype():
    import torch

    prep = Preprocessing(size=4, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
    std = torch.tensor(prep.std).view(1, 3, 1, 1)
    expected = (x.float() / 255 - mean) / std
    torch.testing.assert_close(prep.inputs(x), expected)
    torch.testing.assert_close(prep.inputs(x.float() / 255), expected)
    assert x.dtype == torch.uint8  # the input is left alone


def test_sample_crops_are_reproducible_uint8():
    prep = Preprocessing(size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    img = _photo(160, 120)
    a, b = prep.sample_crops(img, 6, seed=3), prep.sample_crops(img, 6, seed=3)
    assert a.shape == (6, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, prep.sample_crops(img, 6, seed=4))
