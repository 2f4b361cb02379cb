"""Networks: one builder for training (fastai's ``vision_learner``) and for inference.

fastai's ``vision_learner`` accepts any callable ``arch(pretrained=...)`` returning an ImageNet
classifier; it cuts off the classifier (``cut``), adds its head and splits the parameter groups
(``split``) as ``model_meta`` says. ``OfflineArch`` is such a callable whose pretrained path loads
the offline weights of ``instatag.weights``. ``build`` goes through the same fastai function
(``create_vision_model``), so the network rebuilt for inference (``pretrained=False``, then
``load_state_dict``) has exactly the training network's layout, and never needs the pretrained
weights or a pickle.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError
from .settings import Settings

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: the TensorFlow EfficientNet-Lite ports expect inputs scaled to [-1, 1]
HALF_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

#: arch name -> (normalisation stats, fastai split: "resnet" = 3 groups, "default" = body/head)
ARCHS = {
    "resnet18": (IMAGENET_STATS, "resnet"),
    "resnet34": (IMAGENET_STATS, "resnet"),
    "resnet50": (IMAGENET_STATS, "resnet"),
    "efficientnet_lite0": (HALF_STATS, "default"),
}


def names() -> list[str]:
    return list(ARCHS)


def check(arch: str) -> str:
    if arch not in ARCHS:
        raise UserError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    return arch


def stats(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the architecture's pretrained weights expect, for training and inference alike."""
    return ARCHS[check(arch)][0]


@dataclass(frozen=True)
class OfflineArch:
    """``arch`` for fastai: ``OfflineArch(name, settings)(pretrained=True)`` is the ImageNet classifier."""

    name: str
    settings: Settings

    def __call__(self, pretrained: bool = False):
        from . import weights

        if self.name == "efficientnet_lite0":
            return weights.efficientnet_lite0(self.settings, pretrained)
        return weights.torchvision_model(self.name, self.settings, pretrained)


def fastai_arch(arch: str, settings: Settings | None = None) -> OfflineArch:
    """The callable to give ``vision_learner``, registered in fastai's ``model_meta`` (cut, split, stats)."""
    from fastai.vision.learner import _resnet_split, default_split, model_meta

    stats_, split = ARCHS[check(arch)]
    fn = OfflineArch(arch, settings or Settings())
    model_meta[fn] = {"cut": -2, "split": _resnet_split if split == "resnet" else default_split,
                      "stats": [list(stats_[0]), list(stats_[1])]}
    return fn


def build(arch: str, n_out: int, pretrained: bool = False, settings: Settings | None = None,
          output_bias: bool = False):
    """The network ``vision_learner`` trains (body + fastai head with ``n_out`` outputs); with
    ``output_bias`` its last layer has biases (``add_output_bias``)."""
    from fastai.vision.learner import create_vision_model

    net = create_vision_model(fastai_arch(arch, settings), n_out, pretrained=pretrained)
    return add_output_bias(net) if output_bias else net


def add_output_bias(net, bias=None):
    """Give the head's last linear layer (fastai's has none: a BatchNorm precedes it) a bias, zero or
    ``bias``; the weights stay. Returns ``net``, changed in place."""
    import torch

    head = net[-1]
    old = head[-1]
    new = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        new.weight.copy_(old.weight)
        new.bias.copy_(torch.zeros(old.out_features) if bias is None else torch.as_tensor(bias))
    head[-1] = new
    return net
