"""Offline pretrained weights: efficientnet_lite0 from its pip package, loaded by position into timm's
tf_ variant; resnet18 from torchvision's cache or a configured file, hash checked; clear errors."""

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


# --------------------------------------------------------------------------- efficientnet_lite0
def test_efficientnet_lite0_resolves_from_its_package(settings):
    wf = weights.resolve("efficientnet_lite0", settings)
    assert wf.path.name == weights.EFFICIENTNET_LITE0_FILE and wf.path.is_file()
    assert wf.sha256.startswith("57934424")


def test_efficientnet_lite0_loads_by_position():
    import torch

    src = weights.load_state_dict(weights.resolve("efficientnet_lite0", load_settings(env={})).path)
    model = weights.efficientnet_lite0(pretrained=True)
    dst = model.state_dict()
    assert len(src) == len(dst) == 296
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


def test_missing_efficientnet_weights_name_the_file(settings, tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "_efficientnet_lite0_candidates", lambda: [tmp_path / "torch" / "hub" / "checkpoints"
                                                                          / weights.EFFICIENTNET_LITE0_FILE])
    with pytest.raises(UserError) as err:
        weights.resolve("efficientnet_lite0", settings)
    msg = str(err.value)
    assert weights.EFFICIENTNET_LITE0_PACKAGE in msg and str(tmp_path / "torch") in msg and "--no-pretrained" in msg


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
def test_efficientnet_lite0_sees_food_in_food10(food10):
    """The loaded ImageNet classifier calls real dish photos food: ImageNet classes 923 (plate) to 969
    are the food classes (potpie, burrito, meat loaf, ...). A miswired network would not."""
    import numpy as np
    import torch

    from instatag.imageprep import load_array

    rows = list(csv.DictReader((food10 / "classes.csv").open()))
    photos, seen = [], set()
    for r in rows:
        path = food10 / r["drop"] / f"{r['post']}.jpg"
        if r["food101_class"] not in seen and path.is_file():
            seen.add(r["food101_class"])
            photos.append(path)
    assert len(photos) == 10
    x = torch.tensor(np.stack([load_array(p, 224) for p in photos])).permute(0, 3, 1, 2).float() / 255
    model = weights.efficientnet_lite0(pretrained=True).eval()
    with torch.no_grad():
        top = model((x - 0.5) / 0.5).argmax(1)
    food = ((top >= 923) & (top <= 969)).sum().item()
    assert food >= 8, top.tolist()
