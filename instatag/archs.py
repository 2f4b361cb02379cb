"""Networks: one builder for training (fastai's ``vision_learner``) and for inference.

fastai's ``vision_learner`` accepts any callable ``arch(pretrained=...)`` returning an ImageNet
classifier; it cuts off the classifier (``cut``), adds its head and splits the parameter groups
(``split``) as ``model_meta`` says. ``OfflineArch`` is such a callable whose pretrained path loads
the offline weights of ``instatag.weights``. ``build`` goes through the same fastai function
(``create_vision_model``), so the network rebuilt for inference (``pretrained=False``, then
``load_state_dict``) has exactly the training network's layout, and never needs the pretrained
weights or a pickle. ``build_plain`` makes the same network without importing fastai, for inference.
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
    "efficientnet_lite1": (HALF_STATS, "default"),
    "efficientnet_lite2": (HALF_STATS, "default"),
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

        if self.name in weights.EFFICIENTNET_LITE:
            return weights.efficientnet_lite(self.name, self.settings, pretrained)
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


def build_plain(arch: str, n_out: int, output_bias: bool = False, ps: float = 0.5):
    """The network ``build`` makes, from torch, timm and torchvision alone: importing fastai costs a fresh
    process several seconds, and every scoring task is one (Airflow 3). The same modules under the same
    names, so a state dict of ``build`` loads strictly and gives bit-identical outputs (tests/test_predict.py
    compares them). The layout is fastai 2.8's ``create_vision_model`` as ``vision_learner`` calls it: the
    classifier's children up to its ``cut`` (-2), then ``create_head(nf, n_out, ps=ps)``: concat pooling
    (max, average), flatten, then BatchNorm1d, Dropout(ps / 2), Linear(2 nf, 512, no bias), ReLU, BatchNorm1d,
    Dropout(ps), Linear(512, n_out) (with ``output_bias`` a bias); a Dropout with p 0 is left out, as fastai
    does. ``ps``: the head's dropout the model was trained with (TrainConfig.ps); only the layout depends on
    it (dropout does nothing at inference)."""
    import torch
    from torch import nn

    class AdaptiveConcatPool2d(nn.Module):  # fastai.layers.AdaptiveConcatPool2d(1)
        def __init__(self):
            super().__init__()
            self.ap, self.mp = nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1)

        def forward(self, x):
            return torch.cat([self.mp(x), self.ap(x)], 1)

    model = OfflineArch(check(arch), Settings())(pretrained=False)
    nf = model.num_features if hasattr(model, "num_features") else model.fc.in_features  # timm | torchvision
    body = nn.Sequential(*list(model.children())[:-2])
    head = [AdaptiveConcatPool2d(), nn.Flatten(), *head_layers(2 * nf, n_out, ps, output_bias)]
    return nn.Sequential(body, nn.Sequential(*head))


def head_layers(n_in: int, n_out: int, ps: float = 0.5, output_bias: bool = False) -> list:
    """fastai's ``create_head`` after its pooling, for pooled features ``[bs, n_in]``: BatchNorm1d,
    Dropout(ps / 2), Linear(n_in, 512, no bias), ReLU, BatchNorm1d, Dropout(ps), Linear(512, n_out) (with
    ``output_bias`` a bias); a Dropout with p 0 is left out, as fastai does."""
    from torch import nn

    layers = []
    for width, n_next, p, last in ((n_in, 512, ps / 2, False), (512, n_out, ps, True)):
        layers.append(nn.BatchNorm1d(width))
        if p:
            layers.append(nn.Dropout(p))
        layers.append(nn.Linear(width, n_next, bias=last and output_bias))
        if not last:
            layers.append(nn.ReLU(inplace=True))
    return layers


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
