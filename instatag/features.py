"""Frozen pretrained image features, cached per backbone and image: the input of the vocabulary probe.

``image_features(settings, images)`` returns one feature vector per image (float32 [n, d]; d = 1280
for efficientnet_lite0, 512 for resnet18). The backbone is the architecture's ImageNet network
(``archs.OfflineArch``, weights from ``instatag.weights``, offline) cut where fastai cuts it for
training (``model_meta`` cut -2: global pooling and classifier removed), then average-pooled over
space. Its input is the project's one image→tensor contract (docs/ARCHITECTURE.md, Inference
preprocessing): the resized store copy through ``imageprep.load_array`` (centre square resized to
``size``), scaled to [0, 1] and normalised with ``archs.stats(arch)`` (``imageprep.Preprocessing``).

Cache: ``<data dir>/features/<backbone id>.safetensors`` with two tensors, ``sha256`` (uint8 [n, 32],
the images' content hashes) and ``features`` (float32 [n, d]); no pickle. The backbone id names
everything the numbers depend on: architecture, the weights file's sha256 prefix, input size and the
store's resized side (``efficientnet_lite0-57934424-128px-r160``). Images missing from the cache are
computed and the file is rewritten atomically, so a second run on the same images reads the file only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import imageprep
from .errors import UserError
from .settings import Settings

log = logging.getLogger(__name__)

FOLDER = "features"


@dataclass(frozen=True)
class Image:
    """One image to featurise: its content hash and its resized copy (an absolute path)."""

    sha256: str
    path: Path


def default_backbone() -> tuple[str, int]:
    """(arch, size) of the ``default`` training preset: the probe sees what training would see."""
    from .trainconfig import PRESETS

    return PRESETS["default"].arch, PRESETS["default"].size


def backbone_id(settings: Settings, arch: str, size: int) -> str:
    """The cache key of a backbone: ``<arch>-<weights sha256[:8]>-<size>px-r<resized side>``."""
    from . import archs, weights

    archs.check(arch)
    return f"{arch}-{weights.resolve(arch, settings).sha256[:8]}-{int(size)}px-r{settings.resized_side}"


def cache_path(settings: Settings, backbone: str) -> Path:
    return settings.data_dir / FOLDER / f"{backbone}.safetensors"


def read_cache(path: Path) -> dict[str, np.ndarray]:
    """sha256 -> feature vector from a cache file ({} when absent; a damaged file is a UserError)."""
    if not path.is_file():
        return {}
    from safetensors.numpy import load_file

    try:
        data = load_file(str(path))
        shas, feats = data["sha256"], data["features"]
    except Exception as exc:  # noqa: BLE001 - any damage: say which file to delete
        raise UserError(f"feature cache {path} is damaged ({exc}); delete it to recompute") from None
    if shas.ndim != 2 or shas.shape[1] != 32 or feats.shape[0] != shas.shape[0]:
        raise UserError(f"feature cache {path} is damaged (shapes {shas.shape}, {feats.shape}); delete it")
    return {bytes(row).hex(): vec for row, vec in zip(shas, feats, strict=True)}


def write_cache(path: Path, cache: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save

    from .files import write_atomic

    shas = sorted(cache)
    data = {"sha256": np.array([np.frombuffer(bytes.fromhex(s), np.uint8) for s in shas], np.uint8).reshape(-1, 32),
            "features": np.stack([cache[s] for s in shas]).astype(np.float32)}
    write_atomic(path, save(data))


def image_features(settings: Settings, images: Sequence[Image], arch: str | None = None, size: int | None = None,
                   batch_size: int = 64) -> np.ndarray:
    """Features [len(images), d] (float32) in the order given; cached images are read, the rest computed
    (with progress) and added to the cache. ``arch``/``size``: default the ``default`` preset's."""
    default_arch, default_size = default_backbone()
    arch, size = arch or default_arch, int(size or default_size)
    backbone = backbone_id(settings, arch, size)
    path = cache_path(settings, backbone)
    cache = read_cache(path)
    missing = list(dict.fromkeys(im.sha256 for im in images if im.sha256 not in cache))
    if missing:
        paths = {im.sha256: im.path for im in images}
        log.info("features: %d of %d images not cached for %s; computing them", len(missing), len(images), backbone)
        net = Backbone(settings, arch, size)
        computed = net.features([paths[s] for s in missing], batch_size)
        cache.update(zip(missing, computed, strict=True))
        write_cache(path, cache)
    if not images:
        return np.zeros((0, 0), np.float32)
    return np.stack([cache[im.sha256] for im in images]).astype(np.float32)


class Backbone:
    """An architecture's pretrained body, pooled: ``features(paths) -> float32 [n, d]``."""

    def __init__(self, settings: Settings, arch: str, size: int):
        import torch

        from . import archs
        from .inference import resolve_device

        model = archs.OfflineArch(arch, settings)(pretrained=True)
        self.body = torch.nn.Sequential(*list(model.children())[:-2]).eval()  # fastai's cut -2
        self.device = resolve_device(settings.device)
        self.body.to(self.device)
        self.size = int(size)
        mean, std = archs.stats(arch)
        self.prep = imageprep.Preprocessing(size=self.size, mean=mean, std=std)

    def features(self, paths: Sequence[Path | str], batch_size: int = 64) -> np.ndarray:
        from concurrent.futures import ThreadPoolExecutor

        import torch

        from .progress import progress

        out = []
        starts = range(0, len(paths), batch_size)
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="decode") as pool, \
                torch.inference_mode():
            for i in progress(starts, total=len(starts), desc="features", unit="batches"):
                arrays = list(pool.map(lambda p: self.prep.load_array(p), paths[i:i + batch_size]))
                x = self.prep.inputs(torch.from_numpy(np.stack(arrays)).to(self.device).permute(0, 3, 1, 2))
                out.append(self.body(x).mean(dim=(2, 3)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
