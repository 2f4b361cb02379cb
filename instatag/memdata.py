"""Training data held on the training device, augmented per batch there (``data_path="memory"``).

fastai's DataBlock pipeline (``train.dataloaders``) decodes and crops every image on the CPU in
every epoch; on a GPU that starves the network (the study's 30 epochs at 64 px ran at about 1,100
images/s on an H200, bound by that per-item work). Here each resized-store image is decoded once,
into a uint8 tensor on the device:

- training: the central square at ``2 x size``, or at the store's resized side when that is smaller
  (room for RandomResizedCrop to zoom in without upsampling; food photos are nearly square, so
  little is lost at the sides);
- validation: exactly the inference preprocessing (``inference.center_crop_resize`` at ``size``).

Each training batch then gets the study's augmentation on the device, per image: RandomResizedCrop
(area share in ``[min_scale, 1]``, aspect ratio in ``[3/4, 4/3]``) is one more affine matrix, fused
by fastai with the flip and the rotation into a single ``grid_sample`` with black fill, followed by
the lighting transforms and Normalize. The order of batches follows fastai's seeded shuffling.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: "auto" holds the data in memory only below this many bytes of decoded pixels
MAX_BYTES = 8 << 30


def train_side(size: int, resized_side: int) -> int:
    return max(size, min(2 * size, resized_side))


def nbytes(n_train: int, n_valid: int, size: int, resized_side: int) -> int:
    return 3 * (n_train * train_side(size, resized_side) ** 2 + n_valid * size ** 2)


def decode(paths: Sequence[Path | str], side: int, workers: int | None = None) -> np.ndarray:
    """``[n, 3, side, side]`` uint8: each file's central square resized to ``side`` (bilinear)."""
    from concurrent.futures import ThreadPoolExecutor

    from .inference import load_array

    out = np.empty((len(paths), 3, side, side), np.uint8)

    def one(i: int) -> None:
        out[i] = load_array(paths[i], side).transpose(2, 0, 1)

    with ThreadPoolExecutor(workers or min(16, os.cpu_count() or 1), thread_name_prefix="decode") as pool:
        list(pool.map(one, range(len(paths))))
    return out


def crop_mat(x, min_scale: float, ratio: tuple[float, float] = (3 / 4, 4 / 3)):
    """Per image, the affine matrix ([bs, 3, 3], output -> source coordinates in [-1, 1]) of a random
    crop covering ``[min_scale, 1]`` of the area with a width/height ratio in ``ratio``."""
    import torch

    bs = x.size(0)
    area = torch.empty(bs, device=x.device).uniform_(min_scale, 1.0)
    log_r = torch.empty(bs, device=x.device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    w = (area * log_r.exp()).sqrt().clamp(max=1.0)
    h = (area / log_r.exp()).sqrt().clamp(max=1.0)
    tx = (torch.rand(bs, device=x.device) * 2 - 1) * (1 - w)
    ty = (torch.rand(bs, device=x.device) * 2 - 1) * (1 - h)
    mat = torch.zeros(bs, 3, 3, device=x.device)
    mat[:, 0, 0], mat[:, 1, 1], mat[:, 0, 2], mat[:, 1, 2], mat[:, 2, 2] = w, h, tx, ty, 1.0
    return mat


def _loader_class():
    from fastai.data.load import DataLoader

    class MemoryDL(DataLoader):
        """Batches gathered from tensors already on the device; ``after_batch`` does the rest."""

        def __init__(self, x, y, **kwargs):
            self.x, self.y = x, y
            super().__init__(range(len(x)), **kwargs)

        def create_batches(self, samps):
            import torch
            from fastai.torch_core import TensorImage, TensorMultiCategory

            idx = torch.tensor(list(samps), dtype=torch.long)
            stop = len(idx) - len(idx) % self.bs if self.drop_last else len(idx)
            for i in range(0, stop, self.bs):
                b = idx[i:i + self.bs].to(self.x.device)
                yield TensorImage(self.x[b].float().div_(255)), TensorMultiCategory(self.y[b])

    return MemoryDL


def dataloaders(items: Sequence, labels: Sequence[str], config, device: str, valid_idx: Sequence[int],
                resized_side: int):
    """fastai DataLoaders (train, valid) over ``items`` held in memory on ``device``; ``resized_side``:
    the longest side of the store's resized copies."""
    import time

    import torch
    from fastai.data.core import DataLoaders
    from fastai.vision.augment import AffineCoordTfm, PadMode, setup_aug_tfms
    from fastai.vision.data import Normalize
    from fasttransform import Pipeline

    from . import archs
    from .train import batch_augmentations

    t0 = time.perf_counter()
    valid_set = set(valid_idx)
    train_idx = [i for i in range(len(items)) if i not in valid_set]
    index = {label: j for j, label in enumerate(labels)}

    def targets(idx):
        y = torch.zeros(len(idx), len(labels))
        for row, i in enumerate(idx):
            y[row, [index[label] for label in items[i].labels]] = 1.0
        return y.to(device)

    def pixels(idx, side):
        return torch.from_numpy(decode([items[i].resized_path for i in idx], side)).to(device)

    side = train_side(config.size, resized_side)
    x_train, x_valid = pixels(train_idx, side), pixels(valid_idx, config.size)
    mean, std = (torch.tensor(s, device=device).view(1, 3, 1, 1) for s in archs.stats(config.arch))
    normalize = Normalize(mean, std)
    # the crop first: the fused transform takes its output size, black fill (PadMode.Zeros) and align_corners
    # (False: what torch's affine_grid and grid_sample did when fastai's default None reached them, with a warning)
    crop = AffineCoordTfm(aff_fs=lambda x: crop_mat(x, config.min_scale), size=config.size, pad_mode=PadMode.Zeros,
                          align_corners=False)
    augment = setup_aug_tfms([crop, *batch_augmentations(config)])
    MemoryDL = _loader_class()
    train = MemoryDL(x_train, targets(train_idx), bs=config.bs, shuffle=True, drop_last=True, device=device,
                     after_batch=Pipeline([*augment, normalize], split_idx=0))
    valid = MemoryDL(x_valid, targets(valid_idx), bs=config.bs * 2, device=device,
                     after_batch=Pipeline([normalize], split_idx=1))
    log.info("data in memory on %s: %d training images at %d px, %d validation images at %d px (%.0f MB) in %.1fs",
             device, len(train_idx), side, len(valid_idx), config.size,
             (x_train.numel() + x_valid.numel()) / 1e6, time.perf_counter() - t0)
    return DataLoaders(train, valid, device=device)
