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
``instatag.imageprep`` (``Preprocessing.train_batch``): a fresh RandomResizedCrop box per image over the
whole image, drawn from the same distribution as fastai's on the ``files`` path, then fastai's flip,
rotation and lighting as one tensor implementation, then normalisation. ``resident`` holds the tensors
for both training engines: ``dataloaders`` wraps them for fastai's Learner (the order of batches follows
fastai's seeded shuffling), ``instatag.fastfit`` uses them directly. ``Prefetch`` decodes them in a
thread while a fresh training process is still importing torch.
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


def may_have_cuda(device: str) -> bool:
    """Whether ``Settings.device`` may resolve to CUDA, judged without importing torch (its import is the
    work a prefetch overlaps): "cuda", or "auto" on a machine with an NVIDIA device node."""
    if device != "auto":
        return device == "cuda"
    return any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version"))


class Prefetch:
    """The pixels ``resident`` will hold, decoded in a background thread from the moment the items are known,
    while the training process goes on importing torch and starting CUDA (PIL releases the GIL while it
    decodes and resizes). ``result()`` waits for them: (training canvases, their sizes, validation pixels)
    as ``decode_whole`` and ``decode`` return them; an error in the thread is raised there."""

    def __init__(self, items: Sequence, valid_idx: Sequence[int], size: int, resized_side: int):
        import threading

        self.key = (tuple(valid_idx), len(items), size, train_side(size, resized_side))
        valid_set = set(valid_idx)
        train_paths = [it.resized_path for i, it in enumerate(items) if i not in valid_set]
        valid_paths = [items[i].resized_path for i in valid_idx]
        self._result, self._error = None, None

        def work() -> None:
            try:
                self._result = (*decode_whole(train_paths, self.key[3]), decode(valid_paths, size))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller of result()
                self._error = exc

        self._thread = threading.Thread(target=work, name="prefetch", daemon=True)
        self._thread.start()

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


def _loader_class():
    from fastai.data.load import DataLoader

    class MemoryDL(DataLoader):
        """Batches gathered from tensors already on the device; ``after_batch`` normalises them. With ``prep``
        (a ``Preprocessing``) and ``sizes``, ``x`` holds canvases and each batch is cropped and augmented by
        the contract (``random_crops``, ``augment``)."""

        def __init__(self, x, y, prep=None, sizes=None, **kwargs):
            self.x, self.y, self.prep, self.sizes = x, y, prep, sizes
            super().__init__(range(len(x)), **kwargs)

        def create_batches(self, samps):
            import torch
            from fastai.torch_core import TensorImage, TensorMultiCategory

            idx = torch.tensor(list(samps), dtype=torch.long)
            stop = len(idx) - len(idx) % self.bs if self.drop_last else len(idx)
            for i in range(0, stop, self.bs):
                b = idx[i:i + self.bs].to(self.x.device)
                if self.prep is None:
                    xb = imageprep.to_float(self.x[b])
                else:
                    xb = self.prep.augment(self.prep.random_crops(self.x[b], self.sizes[b]))
                yield TensorImage(xb), TensorMultiCategory(self.y[b])

    return MemoryDL


def resident(items: Sequence, labels: Sequence[str], config, device: str, valid_idx: Sequence[int],
             resized_side: int, prefetch: Prefetch | None = None):
    """The data of a ``TrainConfig`` on ``device``: (x_train, sizes, y_train, x_valid, y_valid). ``x_train``
    uint8 ``[n, 3, S, S]`` canvases (``S = train_side``; ``imageprep.canvas``) with ``sizes`` int64 ``[n, 2]``
    (each image's width, height there); ``x_valid`` uint8 ``[m, 3, size, size]``, the evaluation crops;
    ``y_*`` float32 multi-hot ``[n | m, len(labels)]`` in ``labels`` order. The training images are the
    items outside ``valid_idx`` (the validation split's indices into ``items``), in item order;
    ``resized_side``: the longest side of the store's resized copies (Settings.resized_side);
    ``prefetch``: the pixels decoded ahead for the same items, split and sizes (ignored when any differs)."""
    import time

    import torch

    t0 = time.perf_counter()
    valid_set = set(valid_idx)
    train_idx = [i for i in range(len(items)) if i not in valid_set]
    index = {label: j for j, label in enumerate(labels)}

    def targets(idx):
        y = torch.zeros(len(idx), len(labels))
        for row, i in enumerate(idx):
            y[row, [index[label] for label in items[i].labels]] = 1.0
        return y.to(device)

    side = train_side(config.size, resized_side)
    ahead = prefetch is not None and prefetch.key == (tuple(valid_idx), len(items), config.size, side)
    if ahead:
        canvas, sizes, valid = prefetch.result()
    else:
        canvas, sizes = decode_whole([items[i].resized_path for i in train_idx], side)
        valid = decode([items[i].resized_path for i in valid_idx], config.size)
    x_train, sizes, x_valid = (torch.from_numpy(a).to(device) for a in (canvas, sizes, valid))
    log.info("data in memory on %s: %d training images on %d px canvases, %d validation images at %d px (%.0f MB) "
             "in %.2fs%s", device, len(train_idx), side, len(valid_idx), config.size,
             (x_train.numel() + x_valid.numel()) / 1e6, time.perf_counter() - t0, " (decoded ahead)" if ahead else "")
    return x_train, sizes, targets(train_idx), x_valid, targets(list(valid_idx))


def dataloaders(items: Sequence, labels: Sequence[str], config, device: str, valid_idx: Sequence[int],
                resized_side: int):
    """fastai DataLoaders (train, valid) over ``items`` (labels.Item) held in memory on ``device``
    (``resident``), for a ``TrainConfig``; ``valid_idx``: the validation split's indices into ``items``;
    ``resized_side``: the longest side of the store's resized copies (Settings.resized_side). Training
    batches: ``Preprocessing.random_crops`` and ``augment``; both: fastai's ``Normalize`` (the Learner
    looks for it) with the contract's statistics."""
    from fastai.data.core import DataLoaders
    from fasttransform import Pipeline

    prep = imageprep.Preprocessing.for_config(config)
    x_train, sizes, y_train, x_valid, y_valid = resident(items, labels, config, device, valid_idx, resized_side)
    MemoryDL = _loader_class()
    train = MemoryDL(x_train, y_train, prep=prep, sizes=sizes, bs=config.bs, shuffle=True, drop_last=True,
                     device=device, after_batch=Pipeline([prep.fastai_normalize(device)], split_idx=0))
    valid = MemoryDL(x_valid, y_valid, bs=config.bs * 2, device=device,
                     after_batch=Pipeline([prep.fastai_normalize(device)], split_idx=1))
    return DataLoaders(train, valid, device=device)
