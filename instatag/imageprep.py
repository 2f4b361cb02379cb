"""The image -> tensor contract: crop, resize, scale, normalise, augment. One owner for training (both data
paths), evaluation, scoring, the report, Grad-CAM and frozen features.

A ``Preprocessing`` says everything a model's input depends on; training records it in model.json
(``Preprocessing.to_meta``) and inference reads it back (``Preprocessing.from_meta``):

- **evaluation** (validation batches, evaluation, scoring, ``instatag predict``, the report): the
  central square of the image, resized to ``size`` x ``size`` with PIL's bilinear filter
  (``center_crop_resize``, ``load_array``: uint8 ``[size, size, 3]``);
- **scaling and normalisation** (``to_float``, ``standardize``): uint8 0..255 -> float 0..1, then
  ``(x - mean) / std`` per channel with the architecture's statistics (``archs.stats``: ImageNet's for
  the torchvision networks, 0.5/0.5 for the TensorFlow EfficientNet-Lite port). Functions of batched
  ``[n, 3, h, w]`` tensors on any device;
- **training augmentation**, the study's: RandomResizedCrop over the *whole* image (a box of
  ``[min_scale, max_scale]`` of the image area, width/height ratio log-uniform in ``ratio``, ten tries
  and else fastai's fallback box; the box is squashed to ``size`` x ``size``), then per batch a flip
  (p 0.5), a rotation (up to ``max_rotate`` degrees, p 0.75, black fill) and brightness and contrast
  jitter (``lighting``, p 0.75 each), then normalisation.

The reference for the crop is fastai's ``RandomResizedCrop`` (the ``files`` data path: a PIL item
transform on the CPU, what the default preset was tuned with). The ``memory`` path (``instatag.memdata``,
on the training device) draws its boxes with ``crop_boxes``, the same algorithm vectorised on tensors,
and resamples them with ``crop_batch`` (torchvision's ``roi_align``, adaptive sampling: bilinear when
enlarging, an area average when shrinking, as PIL's filter). tests/test_imageprep.py checks that both
draw boxes from the same distribution (area, aspect, centre). The flip, rotation, lighting and
normalisation after the crop are the same fastai batch transforms on both paths (``fastai_batch_tfms``).

Heavy imports (torch, torchvision, fastai, PIL) happen inside the functions.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

#: RandomResizedCrop's range of the box's width/height ratio (fastai's and torchvision's default)
RATIO = (3 / 4, 4 / 3)
#: RandomResizedCrop tries this many boxes before its fallback (fastai's)
ATTEMPTS = 10
#: model.json's ``preprocessing["version"]``: bump it when the meaning of a field changes
VERSION = 1


@dataclass(frozen=True)
class Preprocessing:
    """What a model's input is made of. ``size``: the square input side in pixels; ``mean``, ``std``: per
    channel, applied to pixels scaled to [0, 1]; the rest: the training augmentation."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    #: RandomResizedCrop: the box's share of the image area, and its width/height ratio
    min_scale: float = 0.35
    max_scale: float = 1.0
    ratio: tuple[float, float] = RATIO
    flip_p: float = 0.5
    max_rotate: float = 10.0
    rotate_p: float = 0.75
    #: brightness and contrast jitter (fastai's ``max_lighting``), each applied with ``lighting_p``
    lighting: float = 0.2
    lighting_p: float = 0.75

    # ------------------------------------------------------------------ construction and record
    @classmethod
    def for_config(cls, config) -> Preprocessing:
        """The contract a ``TrainConfig`` (or anything with ``arch``, ``size``, ``min_scale``, ``max_rotate``,
        ``lighting``) trains with; the statistics are the architecture's (``archs.stats``)."""
        from . import archs

        mean, std = archs.stats(config.arch)
        return cls(size=int(config.size), mean=tuple(mean), std=tuple(std), min_scale=float(config.min_scale),
                   max_rotate=float(config.max_rotate), lighting=float(config.lighting))

    @classmethod
    def from_meta(cls, meta: dict) -> Preprocessing:
        """From model.json: its ``preprocessing`` record, or for models written before it, ``size``,
        ``mean`` and ``std`` (their augmentation: ``params``' fields, else the defaults)."""
        rec = meta.get("preprocessing")
        if isinstance(rec, dict):
            fields = {f.name for f in dataclasses.fields(cls)}
            kw = {k: v for k, v in rec.items() if k in fields}
            for k in ("mean", "std", "ratio"):
                if k in kw:
                    kw[k] = tuple(float(v) for v in kw[k])
            return cls(**kw)
        params = meta.get("params") or {}
        extra = {k: float(params[k]) for k in ("min_scale", "max_rotate", "lighting") if params.get(k) is not None}
        return cls(size=int(meta["size"]), mean=tuple(float(v) for v in meta["mean"]),
                   std=tuple(float(v) for v in meta["std"]), **extra)

    def to_meta(self) -> dict:
        """The record model.json keeps under ``preprocessing`` (JSON types)."""
        rec: dict[str, Any] = {"version": VERSION, **dataclasses.asdict(self)}
        rec.update(mean=list(self.mean), std=list(self.std), ratio=list(self.ratio),
                   eval_crop="centre square, resized to size x size (PIL bilinear)", scale="x / 255",
                   normalize="(x - mean) / std",
                   train_crop="RandomResizedCrop over the whole image (fastai's algorithm), squashed to size x size",
                   batch_augment="flip, rotate (black fill), brightness, contrast (fastai batch transforms)")
        return rec

    # ------------------------------------------------------------------ evaluation: one image
    def center_crop_resize(self, img):
        """``center_crop_resize(img, self.size)``."""
        return center_crop_resize(img, self.size)

    def load_array(self, path: Path | str) -> np.ndarray:
        """``load_array(path, self.size)``."""
        return load_array(path, self.size)

    # ------------------------------------------------------------------ tensors, batched, any device
    def stats(self, device=None):
        """(mean, std) as float32 ``[1, 3, 1, 1]`` tensors on ``device``."""
        import torch

        return (torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1),
                torch.tensor(self.std, dtype=torch.float32, device=device).view(1, 3, 1, 1))

    def standardize(self, x):
        """``(x - mean) / std`` of a float ``[n, 3, h, w]`` batch scaled to [0, 1], on its device (float32 out)."""
        mean, std = self.stats(x.device)
        return (x.float() - mean) / std

    def inputs(self, x):
        """The network's input from evaluation crops: uint8 ``[n, 3, size, size]`` (0..255) or float (0..1),
        any device -> normalised float32 on the same device."""
        return self.standardize(to_float(x))

    # ------------------------------------------------------------------ training
    def crop_boxes(self, sizes, generator=None):
        """``crop_boxes(sizes, min_scale, max_scale, ratio)`` with this contract's parameters."""
        return crop_boxes(sizes, self.min_scale, self.max_scale, self.ratio, generator=generator)

    def random_crops(self, images, sizes, generator=None):
        """Training crops of a batch held as a canvas (``memdata``): ``images`` uint8 or float
        ``[n, 3, H, W]`` with image i in its top-left ``sizes[i] = (w, h)`` pixels; returns float32
        ``[n, 3, size, size]`` in [0, 1] on the images' device, one fresh box per image."""
        boxes = self.crop_boxes(sizes.to(images.device), generator)
        return crop_batch(images, boxes, self.size)

    def batch_augmentations(self) -> list:
        """The fastai batch transforms after the crop (flip, rotation, lighting), for both data paths.
        ``setup_aug_tfms`` fuses the affine ones into one ``grid_sample`` with the FIRST one's padding, so
        each says zeros (black fill), as the study's rotation did."""
        from fastai.vision.augment import Brightness, Contrast, Flip, PadMode, Rotate

        return [
            Flip(p=self.flip_p, pad_mode=PadMode.Zeros),
            Rotate(max_deg=self.max_rotate, p=self.rotate_p, pad_mode=PadMode.Zeros),
            Brightness(max_lighting=self.lighting, p=self.lighting_p),
            Contrast(max_lighting=self.lighting, p=self.lighting_p),
        ]

    def fastai_normalize(self, device=None):
        """fastai's ``Normalize`` with this contract's statistics (fastai's ``vision_learner`` looks for one in
        the loaders and would add its own without it)."""
        from fastai.vision.data import Normalize

        return Normalize(*self.stats(device))

    def fastai_batch_tfms(self, device=None) -> list:
        """Training batch transforms after the crop, then normalisation: what both data paths run per batch
        (fastai skips the augmentations on the validation set, normalisation runs on both)."""
        from fastai.vision.augment import setup_aug_tfms

        return [*setup_aug_tfms(self.batch_augmentations()), self.fastai_normalize(device)]

    def fastai_item_tfms(self) -> list:
        """The ``files`` path's item transforms: fastai's RandomResizedCrop on training items (the reference
        crop), the evaluation crop (``center_crop_resize``) on validation items."""
        from fastai.vision.augment import RandomResizedCrop
        from fastai.vision.core import PILImage
        from fasttransform import Transform

        size = self.size

        class TrainCrop(RandomResizedCrop):
            split_idx = 0  # training set only

        class ValidCrop(Transform):
            split_idx, order = 1, 1  # validation set only: exactly the inference preprocessing

            def encodes(self, x):  # no annotation: this module's are strings, which type dispatch cannot resolve
                return center_crop_resize(x, size) if isinstance(x, PILImage) else x  # the type is kept

        return [TrainCrop(size, min_scale=self.min_scale, max_scale=self.max_scale, ratio=self.ratio), ValidCrop()]

    def sample_crops(self, image: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
        """``n`` training crops of one uint8 ``[h, w, 3]`` image as uint8 ``[n, size, size, 3]`` (the report's
        Figure 3), drawn with ``crop_boxes`` and ``crop_batch`` under a private seeded generator."""
        import torch

        h, w = image.shape[:2]
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None].expand(n, -1, -1, -1)
        sizes = torch.tensor([[w, h]] * n)
        crops = self.random_crops(x, sizes, torch.Generator().manual_seed(seed))
        return crops.mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


# --------------------------------------------------------------------------- evaluation crop (PIL)
def center_crop_resize(img, size: int):
    """The central square of a PIL image, resized to ``size`` x ``size`` (bilinear)."""
    from PIL import Image

    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.BILINEAR)


def open_rgb(path: Path | str):
    """A PIL RGB image from a file, loaded; UserError for a missing or unreadable file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{path}: not a readable image ({exc})") from None


def load_array(path: Path | str, size: int) -> np.ndarray:
    """An image file as a ``size`` x ``size`` x 3 uint8 array: the evaluation crop. UserError for a
    missing or unreadable file."""
    return np.asarray(center_crop_resize(open_rgb(path), size))


def to_float(x):
    """uint8 ``[n, 3, h, w]`` 0..255 -> float32 0..1; a float tensor (already 0..1) -> float32. Any device."""
    import torch

    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


# --------------------------------------------------------------------------- training crop (tensors)
def canvas(image: np.ndarray, side: int) -> np.ndarray:
    """A uint8 ``[h, w, 3]`` image (``h, w <= side``) in the top-left corner of a uint8 ``[3, side, side]``
    canvas, the rest filled with the image's last row and column repeated (so resampling at the box's
    edge sees what PIL sees: the edge pixel, not padding). Batches of canvases with the images' sizes are
    what ``Preprocessing.random_crops`` crops."""
    h, w = image.shape[:2]
    if h > side or w > side:
        raise ValueError(f"a {w} x {h} image does not fit a {side} px canvas")
    return np.pad(image, ((0, side - h), (0, side - w), (0, 0)), mode="edge").transpose(2, 0, 1)


def crop_boxes(sizes, min_scale: float, max_scale: float = 1.0, ratio: tuple[float, float] = RATIO,
               attempts: int = ATTEMPTS, generator=None):
    """Random boxes, one per image, drawn as fastai's ``RandomResizedCrop.before_call`` draws them.

    ``sizes``: int ``[n, 2]`` (width, height) in pixels, on any device. Each of ``attempts`` tries draws
    an area share uniform in ``[min_scale, max_scale]`` and a width/height ratio log-uniform in
    ``ratio``, rounds width and height to whole pixels (half to even, as Python's ``round``) and keeps the
    first box that fits; its top-left corner is uniform over the whole pixels where it fits. When none
    fits: the largest centred box whose ratio is clamped into ``ratio`` (fastai's fallback). Returns
    int64 ``[n, 4]`` (left, top, width, height) on the sizes' device; ``generator`` (on that device)
    makes it reproducible."""
    import torch

    dev = sizes.device
    n = sizes.shape[0]
    w = sizes[:, 0].to(torch.float64)[:, None]
    h = sizes[:, 1].to(torch.float64)[:, None]
    u = torch.rand(n, attempts, 2, generator=generator, device=dev, dtype=torch.float64)
    area = (min_scale + (max_scale - min_scale) * u[..., 0]) * w * h
    r = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[..., 1])
    nw, nh = torch.round(torch.sqrt(area * r)), torch.round(torch.sqrt(area / r))
    fits = (nw <= w) & (nh <= h)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)
    bw, bh = nw.gather(1, first)[:, 0], nh.gather(1, first)[:, 0]
    w, h = w[:, 0], h[:, 0]
    corner = torch.rand(n, 2, generator=generator, device=dev, dtype=torch.float64)
    left = torch.floor(corner[:, 0] * (w - bw + 1)).clamp(max=w - bw)
    top = torch.floor(corner[:, 1] * (h - bh + 1)).clamp(max=h - bh)
    # fastai's fallback: int() truncates
    aspect = w / h
    fw = torch.where(aspect > ratio[1], torch.floor(h * ratio[1]), w)
    fh = torch.where(aspect < ratio[0], torch.floor(w / ratio[0]), h)
    ok = fits.any(dim=1)
    bw, bh = torch.where(ok, bw, fw), torch.where(ok, bh, fh)
    left = torch.where(ok, left, torch.div(w - fw, 2, rounding_mode="floor"))
    top = torch.where(ok, top, torch.div(h - fh, 2, rounding_mode="floor"))
    return torch.stack([left, top, bw, bh], dim=1).to(torch.int64)


def crop_batch(images, boxes, size: int):
    """Each image's box resized to ``size`` x ``size``: ``images`` uint8 (0..255) or float (0..1)
    ``[n, 3, H, W]``, ``boxes`` int ``[n, 4]`` (left, top, width, height) in pixels -> float32
    ``[n, 3, size, size]`` in [0, 1] on the images' device. torchvision's ``roi_align`` with pixel-edge
    coordinates (``aligned``) and adaptive sampling: bilinear when the box is enlarged, the average of
    ceil(box / size) samples per output pixel and axis when it is shrunk (PIL's bilinear filter also
    widens with the shrink factor)."""
    import torch
    from torchvision.ops import roi_align

    x = to_float(images)
    b = boxes.to(device=x.device, dtype=torch.float32)
    idx = torch.arange(len(b), device=x.device, dtype=torch.float32)
    rois = torch.stack([idx, b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], dim=1)
    return roi_align(x, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
