"""Training data held on the training device, augmented per batch there (``data_path="memory"``).

fastai's DataBlock pipeline (``fitting.dataloaders``) decodes and crops every image on the CPU in
every epoch; on a GPU that starves the network (the study's 30 epochs at 64 px ran at about 1,100
images/s on an H200, bound by that per-item work). Here each resized-store image is decoded once,
into a uint8 tensor on the device:

- training: the whole image in the top-left corner of a ``train_side`` x ``train_side`` canvas
  (``imageprep.canvas``), its own pixels when its longest side fits (the store's copies at the default
  sizes), else shrunk to fit, with its width and height kept beside it;
- validation: exactly the evaluation crop (``imageprep.load_array`` at ``size``).

Each training batch is then cropped and augmented on the device by the contract of
``instatag.imageprep``: a fresh RandomResizedCrop box per image over the whole image, drawn from the
same distribution as fastai's on the ``files`` path (``Preprocessing.random_crops``), then the same
fastai batch transforms as that path (flip, rotation, lighting, Normalize). The order of batches
follows fastai's seeded shuffling.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import imageprep

log = logging.getLogger(__name__)

#: "auto" holds the data in memory only below this many bytes of decoded pixels
MAX_BYTES = 8 << 30


def train_side(size: int, resized_side: int) -> int:
    return max(size, min(2 * size, resized_side))


def nbytes(n_train: int, n_valid: int, size: int, resized_side: int) -> int:
    return 3 * (n_train * train_side(size, resized_side) ** 2 + n_valid * size ** 2)


def _pool(workers: int | None):
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(workers or min(16, os.cpu_count() or 1), thread_name_prefix="decode")


def decode(paths: Sequence[Path | str], side: int, workers: int | None = None) -> np.ndarray:
    """``[n, 3, side, side]`` uint8: each file's evaluation crop at ``side`` (``imageprep.load_array``)."""
    out = np.empty((len(paths), 3, side, side), np.uint8)

    def one(i: int) -> None:
        out[i] = imageprep.load_array(paths[i], side).transpose(2, 0, 1)

    with _pool(workers) as pool:
        list(pool.map(one, range(len(paths))))
    return out


def decode_whole(paths: Sequence[Path | str], side: int, workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(canvas uint8 ``[n, 3, side, side]``, sizes int64 ``[n, 2]``): each file's whole image on its canvas
    (``imageprep.canvas``), as it is when its longest side is at most ``side``, else shrunk (PIL bilinear)
    to a longest side of ``side``; ``sizes[i]`` is its (width, height) there."""
    from PIL import Image

    out = np.empty((len(paths), 3, side, side), np.uint8)
    sizes = np.empty((len(paths), 2), np.int64)

    def one(i: int) -> None:
        img = imageprep.open_rgb(paths[i])
        w, h = img.size
        if max(w, h) > side:
            k = side / max(w, h)
            w, h = min(side, max(1, round(w * k))), min(side, max(1, round(h * k)))
            img = img.resize((w, h), Image.Resampling.BILINEAR)
        out[i] = imageprep.canvas(np.asarray(img), side)
        sizes[i] = (w, h)

    with _pool(workers) as pool:
        list(pool.map(one, range(len(paths))))
    return out, sizes


def _loader_class():
    from fastai.data.load import DataLoader

    class MemoryDL(DataLoader):
        """Batches gathered from tensors already on the device; ``after_batch`` does the rest. With ``crop``
        (a ``Preprocessing``) and ``sizes``, ``x`` holds canvases and each batch is cropped by the contract."""

        def __init__(self, x, y, crop=None, sizes=None, **kwargs):
            self.x, self.y, self.crop, self.sizes = x, y, crop, sizes
            super().__init__(range(len(x)), **kwargs)

        def create_batches(self, samps):
            import torch
            from fastai.torch_core import TensorImage, TensorMultiCategory

            idx = torch.tensor(list(samps), dtype=torch.long)
            stop = len(idx) - len(idx) % self.bs if self.drop_last else len(idx)
            for i in range(0, stop, self.bs):
                b = idx[i:i + self.bs].to(self.x.device)
                if self.crop is None:
                    xb = imageprep.to_float(self.x[b])
                else:
                    xb = self.crop.random_crops(self.x[b], self.sizes[b])
                yield TensorImage(xb), TensorMultiCategory(self.y[b])

    return MemoryDL


def dataloaders(items: Sequence, labels: Sequence[str], config, device: str, valid_idx: Sequence[int],
                resized_side: int):
    """fastai DataLoaders (train, valid) over ``items`` (labels.Item) held in memory on ``device``, for a
    ``TrainConfig``; ``valid_idx``: the validation split's indices into ``items``; ``resized_side``: the
    longest side of the store's resized copies (Settings.resized_side)."""
    import time

    import torch
    from fastai.data.core import DataLoaders
    from fasttransform import Pipeline

    t0 = time.perf_counter()
    prep = imageprep.Preprocessing.for_config(config)
    valid_set = set(valid_idx)
    train_idx = [i for i in range(len(items)) if i not in valid_set]
    index = {label: j for j, label in enumerate(labels)}

    def targets(idx):
        y = torch.zeros(len(idx), len(labels))
        for row, i in enumerate(idx):
            y[row, [index[label] for label in items[i].labels]] = 1.0
        return y.to(device)

    side = train_side(config.size, resized_side)
    canvas, sizes = decode_whole([items[i].resized_path for i in train_idx], side)
    x_train, sizes = torch.from_numpy(canvas).to(device), torch.from_numpy(sizes).to(device)
    x_valid = torch.from_numpy(decode([items[i].resized_path for i in valid_idx], config.size)).to(device)
    batch_tfms = prep.fastai_batch_tfms(device)  # the augmentations run on the training set only (split_idx 0)
    MemoryDL = _loader_class()
    train = MemoryDL(x_train, targets(train_idx), crop=prep, sizes=sizes, bs=config.bs, shuffle=True,
                     drop_last=True, device=device, after_batch=Pipeline(batch_tfms, split_idx=0))
    valid = MemoryDL(x_valid, targets(valid_idx), bs=config.bs * 2, device=device,
                     after_batch=Pipeline(batch_tfms, split_idx=1))
    log.info("data in memory on %s: %d training images on %d px canvases, %d validation images at %d px (%.0f MB) "
             "in %.1fs", device, len(train_idx), side, len(valid_idx), config.size,
             (x_train.numel() + x_valid.numel()) / 1e6, time.perf_counter() - t0)
    return DataLoaders(train, valid, device=device)
