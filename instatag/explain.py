"""Why a tag: Grad-CAM heatmaps of a label over the photo, and ``instatag heatmap IMAGE --label L``.

Grad-CAM (Selvaraju et al. 2017, the ``grad-cam`` package's ``GradCAM``) weighs the feature maps of
the network's last convolutional block (``target_layer``) by the mean gradient of the label's logit,
keeps the positive part and upsamples it to the model's input. The input is exactly the tensor the
model scores (``Predictor.predict_tensor``): the validation crop of ``imageprep.center_crop_resize``
(the central square, resized to the model's ``size``), scaled to [0, 1] and normalised with the model
file's mean and std; a model with ``flip_tta`` scores the mean of the image and its mirror image, and
its heatmap is the mean of both heatmaps (the mirror's flipped back). The overlay is drawn on that
crop, which is what the tag browser's square thumbnails show (``object-fit: cover`` of the stored
image is its central square).

Overlays are cached as PNG under ``<data dir>/heatmaps/<model version>/<image sha256>_<label>.png``
(written atomically): a model version's weights never change, nor does an image with a given hash.
The network is a copy of the Predictor's, used under a lock, so explaining never disturbs predictions
running in other threads of the same process.
"""

from __future__ import annotations

import copy
import io
import re
import sys
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError

#: how strongly the photo shows through the heatmap in an overlay (grad-cam's ``image_weight``)
IMAGE_WEIGHT = 0.5
#: a label as it may appear in a cache file name; others are cached under their index
_SAFE_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")

_lock = threading.RLock()  # explaining, and writing the cache (write_atomic: one writer per process)
_nets: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Heatmap:
    """One label's heatmap: ``cam`` [size, size] float32 in [0, 1] (1: the region that raised the label's
    logit most), ``crop`` [size, size, 3] uint8 (the model's input, before normalisation) and the label's
    ``probability`` from the same forward pass (as ``Predictor.predict_tensor`` gives it)."""

    label: str
    probability: float
    cam: np.ndarray
    crop: np.ndarray

    def overlay(self) -> np.ndarray:
        """The heatmap (jet colour map) blended over the crop: [size, size, 3] uint8 RGB."""
        from pytorch_grad_cam.utils.image import show_cam_on_image

        return show_cam_on_image(self.crop.astype(np.float32) / 255, self.cam, use_rgb=True,
                                 image_weight=IMAGE_WEIGHT)

    def png(self) -> bytes:
        """``overlay()`` encoded as PNG."""
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(self.overlay()).save(buf, "PNG")
        return buf.getvalue()


def target_layer(net):
    """The last convolutional block of a network of ``archs.build`` / ``build_plain``: the body's last
    module (``net[0][-1]``), whose output is the feature map the head pools. resnet18/34/50:
    ``layer4``; efficientnet_lite0: ``bn2`` (BatchNorm + ReLU6 after ``conv_head``)."""
    return net[0][-1]


def gradcam(net, layer, x, index: int, flip: bool = False) -> tuple[np.ndarray, float]:
    """Grad-CAM of output ``index`` for one normalised input ``x`` [1, 3, H, W]: (cam [H, W] float32 in
    [0, 1], sigmoid of the output). With ``flip``, the mean over ``x`` and its mirror image (the mirror's
    cam flipped back), as a model with flip TTA scores. ``net`` must not be in use by other threads."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    batch = torch.cat([x, torch.flip(x, dims=[3])]) if flip else x
    with GradCAM(model=net, target_layers=[layer]) as cam:
        maps = cam(input_tensor=batch, targets=[ClassifierOutputTarget(index)] * len(batch))
        p = torch.sigmoid(cam.outputs[:, index].detach().float()).mean().item()
    out = (maps[0] + maps[1][:, ::-1]) / 2 if flip else maps[0]
    return np.ascontiguousarray(out, dtype=np.float32), float(p)


def _net(predictor):
    """A float32 copy of the predictor's network, kept as long as the predictor. Only the target layer's
    parameters require gradients: its output then does, and backpropagation stops there instead of
    walking the whole body (the same heatmap, at about a third of the cost)."""
    net = _nets.get(predictor)
    if net is None:
        import torch

        net = copy.deepcopy(predictor.net).float().to(memory_format=torch.contiguous_format).eval()
        net.requires_grad_(False)
        target_layer(net).requires_grad_(True)
        _nets[predictor] = net
    return net


def explain(predictor, image, label: str) -> Heatmap:
    """The heatmap of ``label`` for a PIL image (any size and mode) under a ``Predictor``.

    Raises UserError for a label the model does not have."""
    import torch

    if label not in predictor.labels:
        raise UserError(f"{label!r} is not a label of this model (it has {len(predictor.labels)}: "
                        f"{', '.join(predictor.labels[:10])}{', ...' if len(predictor.labels) > 10 else ''})")
    crop = np.asarray(predictor.prep.center_crop_resize(image.convert("RGB")))
    x = predictor.inputs(torch.from_numpy(crop.copy()).permute(2, 0, 1)[None])  # exactly predict_tensor's input
    with _lock:
        cam, p = gradcam(_net(predictor), target_layer(_net(predictor)), x, predictor.labels.index(label),
                         flip=predictor.tta)
    return Heatmap(label, p, cam, crop)


# --------------------------------------------------------------------------- cache
def cache_path(settings, model_version_id: int, image_sha256: str, label: str, labels: list[str]) -> Path:
    """``<data dir>/heatmaps/<model version>/<image sha256>_<label>.png`` (a label unfit for a file name:
    ``#<its index>``)."""
    if not re.fullmatch(r"[0-9a-f]{64}", image_sha256):
        raise ValueError(f"not a sha256: {image_sha256!r}")
    name = label if _SAFE_LABEL.match(label) else f"#{labels.index(label)}"
    return settings.data_dir / "heatmaps" / str(int(model_version_id)) / f"{image_sha256}_{name}.png"


def cached_png(settings, model_version_id: int, image_path: Path, image_sha256: str, label: str) -> Path:
    """The overlay PNG of ``label`` for a stored image under a model version, computed on first use
    (``explain`` on the image file, as scoring reads it) and cached (``cache_path``). Raises UserError
    for an unknown label or an unreadable model or image file."""
    from PIL import Image, UnidentifiedImageError

    from .files import write_atomic
    from .inference import Predictor

    predictor = Predictor.for_version(settings, model_version_id)
    if label not in predictor.labels:
        raise UserError(f"{label!r} is not a label of model version {model_version_id}")
    path = cache_path(settings, model_version_id, image_sha256, label, predictor.labels)
    with _lock:
        if path.is_file():
            return path
        try:
            with Image.open(image_path) as img:
                heat = explain(predictor, img, label)
        except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
            raise UserError(f"{image_path}: not a readable image ({exc})") from None
        write_atomic(path, heat.png())
    return path


# --------------------------------------------------------------------------- CLI
def explain_file(settings, file: Path, label: str, model: str | int = "champion") -> tuple[int, Heatmap]:
    """(model version id, heatmap) of ``label`` for an ad-hoc image file, read as ``instatag predict``
    reads it (``predict.load_image``: the resized copy ingest would store), so the probability is the
    one ``predict`` prints."""
    from . import registry
    from .inference import Predictor
    from .predict import load_image

    model_id = registry.find(settings, model)
    predictor = Predictor.for_version(settings, model_id)
    image = load_image(Path(file), settings.resized_side, settings.max_pixels)
    return model_id, explain(predictor, image, label)


def _explain_cmd(args, settings) -> int:
    from .files import write_atomic

    model_id, heat = explain_file(settings, args.file, args.label, args.model)
    out = args.output or Path(f"{Path(args.file).stem}_{args.label}_heatmap.png")
    if out.is_dir():
        raise UserError(f"{out}: is a folder; give a file name for the PNG")
    write_atomic(out, heat.png())
    print(out)
    print(f"#{args.label} {heat.probability:.2f} (model version {model_id}; heatmap {heat.cam.shape[1]}x"
          f"{heat.cam.shape[0]} px over the model's centre crop)", file=sys.stderr)
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser(
        "heatmap",
        help="write a Grad-CAM heatmap PNG: where in a photo the model sees a tag",
        description="Write the Grad-CAM heatmap of one label for an image file, over the model's view of it "
        "(the central square at the model's input size), as a PNG: red where the image raised the label's "
        "score most. Uses the champion model (or --model VERSION); the image is read as `instatag predict` "
        "reads it, and the printed probability is the one it prints. Nothing is written to the database.",
    )
    p.add_argument("file", type=Path, metavar="IMAGE", help="an image file (JPEG, PNG, ...)")
    p.add_argument("--label", required=True, metavar="L", help="the label (tag) to explain, e.g. pasta")
    p.add_argument("--model", default="champion", help="'champion' (default), 'latest' or a model version number")
    p.add_argument("--output", "-o", type=Path, metavar="PNG",
                   help="where to write the overlay (default: IMAGE's name + _LABEL_heatmap.png, here)")
    p.set_defaults(handler=_explain_cmd)
