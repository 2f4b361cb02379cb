"""Model files: safetensors + JSON round trip, the hash check, metadata updates, and Predictor
rebuilding the network from the files alone (same outputs, flip TTA, thresholds)."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest

from instatag import archs, modelfile
from instatag.errors import UserError
from instatag.imageprep import center_crop_resize, load_array
from instatag.inference import Predictor

LABELS = ["cake", "soup", "salad"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An untrained resnet18 (fastai head) saved at size 32: (folder, sha256, net)."""
    import torch

    torch.manual_seed(0)
    net = archs.build("resnet18", len(LABELS)).eval()
    mean, std = archs.stats("resnet18")
    folder = tmp_path_factory.mktemp("model")
    sha = modelfile.save(folder, net.state_dict(), {"arch": "resnet18", "size": 32, "mean": mean, "std": std,
                                                    "labels": LABELS, "thresholds": None, "global_threshold": None})
    return folder, sha, net


def test_round_trip(saved):
    import torch

    folder, sha, net = saved
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors"]
    state, meta = modelfile.load(folder, sha)
    assert meta["weights_sha256"] == sha and meta["labels"] == LABELS
    assert {"torch", "fastai", "timm", "instatag"} <= set(meta["libraries"])
    ref = net.state_dict()
    assert set(state) == set(ref)  # safetensors stores the names sorted; load_state_dict goes by name
    assert all(torch.equal(state[k], ref[k]) for k in ref)
    # the file holds tensors only: no pickle opcodes, a JSON header first
    raw = (folder / modelfile.WEIGHTS).read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8:8 + header_len])
    # the path of the weights file works as well as the folder
    assert modelfile.load(folder / modelfile.WEIGHTS, sha)[1] == meta


def test_hash_mismatch_is_refused(saved, tmp_path):
    folder, sha, _ = saved
    with pytest.raises(modelfile.HashMismatch, match="does not match"):
        modelfile.load(folder, "0" * 64)
    copy = tmp_path / "copy"
    copy.mkdir()
    data = bytearray((folder / modelfile.WEIGHTS).read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in a tensor
    (copy / modelfile.WEIGHTS).write_bytes(bytes(data))
    (copy / modelfile.META).write_text((folder / modelfile.META).read_text())
    with pytest.raises(modelfile.HashMismatch):
        modelfile.load(copy, sha)
    with pytest.raises(modelfile.HashMismatch):  # None: the hash model.json states
        modelfile.load(copy, None)
    assert issubclass(modelfile.HashMismatch, UserError)
    with pytest.raises(UserError, match="no such file"):
        modelfile.load(tmp_path / "nowhere", sha)


def test_update_meta_keeps_the_hash_valid(saved, tmp_path):
    import shutil

    folder, sha, _ = saved
    copy = tmp_path / "m"
    shutil.copytree(folder, copy)
    meta = modelfile.update_meta(copy, ranking="dominant_first", frequency_order=["soup", "cake", "salad"],
                                 base_lr=np.float64(0.004))
    assert meta["base_lr"] == 0.004
    state, again = modelfile.load(copy, sha)  # model.json is outside the hash
    assert again["ranking"] == "dominant_first" and again["labels"] == LABELS
    p = Predictor(state, again, device="cpu")
    assert p.ranking == "dominant_first" and p.frequency_order == [LABELS.index(x) for x in ("soup", "cake", "salad")]


def _photos(tmp_path, n=5):
    import random

    from instatag.sample import DISHES, draw

    rng = random.Random(1)
    paths = []
    for i in range(n):
        img = draw(DISHES[i % len(DISHES)], rng, size=96).resize((60 + 7 * i, 45))
        paths.append(tmp_path / f"{i}.jpg")
        img.save(paths[-1], quality=90)
    return paths


def test_predictor_matches_the_network(saved, tmp_path):
    import torch

    folder, sha, net = saved
    p = Predictor.from_files(folder, sha, device="cpu")
    assert p.labels == LABELS and p.size == 32 and not hasattr(p, "threshold_row")  # thresholds: registry
    paths = _photos(tmp_path)
    probs = p.predict_paths(paths, batch_size=2)
    assert probs.shape == (5, 3) and probs.dtype == np.float32
    # by hand: the contract's preprocessing, then the original network
    x = torch.stack([torch.tensor(load_array(q, 32)).permute(2, 0, 1).float() / 255 for q in paths])
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in archs.stats("resnet18"))
    with torch.no_grad():
        ref = torch.sigmoid(net((x - mean) / std)).numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-5)
    # the same from PIL images, and flip TTA averages the flipped view in
    from PIL import Image

    np.testing.assert_allclose(p.predict_images([Image.open(q) for q in paths]), probs, atol=1e-6)
    with torch.no_grad():
        flipped = torch.sigmoid(net((torch.flip(x, dims=[3]) - mean) / std)).numpy()
    np.testing.assert_allclose(p.predict_paths(paths, tta=True), (ref + flipped) / 2, atol=1e-5)
    assert p.predict_paths([]).shape == (0, 3)


def test_preprocessing_is_the_centre_square(tmp_path):
    from PIL import Image

    img = Image.new("RGB", (90, 30), (0, 0, 0))
    img.paste((255, 255, 255), (30, 0, 60, 30))  # a white centre square between black sides
    out = np.asarray(center_crop_resize(img, 16))
    assert out.shape == (16, 16, 3) and out.min() == 255
    img.save(tmp_path / "x.png")
    assert load_array(tmp_path / "x.png", 16).min() == 255
    with pytest.raises(UserError, match="no such image"):
        load_array(tmp_path / "missing.jpg", 16)
    (tmp_path / "bad.jpg").write_bytes(b"<html>")
    with pytest.raises(UserError, match="not a readable image"):
        load_array(tmp_path / "bad.jpg", 16)


# --------------------------------------------------------------------------- inference without fastai
@pytest.mark.parametrize("arch", archs.names())
@pytest.mark.parametrize(("output_bias", "ps"), [(False, 0.5), (True, 0.0)])
def test_plain_network_is_fastai_s_bit_for_bit(arch, output_bias, ps):
    """build_plain (inference, no fastai import) has the layout of fastai's create_vision_model as
    vision_learner builds it (ps 0: no Dropout layers), and the same outputs, bit for bit."""
    import torch
    from fastai.vision.learner import create_vision_model

    torch.manual_seed(0)
    ref = create_vision_model(archs.fastai_arch(arch), 4, pretrained=False, ps=ps)
    if output_bias:
        archs.add_output_bias(ref, torch.randn(4))
    plain = archs.build_plain(arch, 4, output_bias=output_bias, ps=ps)
    state = ref.state_dict()
    assert [(k, v.shape) for k, v in plain.state_dict().items()] == [(k, v.shape) for k, v in state.items()]
    plain.load_state_dict(state, strict=True)
    x = torch.randn(3, 3, 48, 48)
    with torch.inference_mode():
        assert torch.equal(plain.eval()(x), ref.eval()(x))


@pytest.mark.slow
def test_predictor_loads_without_importing_fastai(saved):
    import subprocess
    import sys

    folder, sha, _ = saved
    script = (f"import sys; from instatag.inference import Predictor; "
              f"Predictor.from_files({str(folder)!r}, {sha!r}, device='cpu'); "
              "assert 'fastai' not in sys.modules, 'fastai imported'")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


# --------------------------------------------------------------------------- one load per process
def test_cache_reuses_a_model_until_its_files_change(saved, tmp_path, monkeypatch):
    import os
    import shutil

    from instatag import inference

    folder, sha, _ = saved
    copy = tmp_path / "m"
    shutil.copytree(folder, copy)
    loads = []
    real_load = modelfile.load
    monkeypatch.setattr(modelfile, "load", lambda *a: loads.append(a) or real_load(*a))
    monkeypatch.setattr(inference, "_cache", OrderedDict())  # no version loaded yet in this process
    first = Predictor.from_files(copy, sha, device="cpu")
    assert Predictor.from_files(copy / modelfile.WEIGHTS, sha, device="cpu") is first and len(loads) == 1  # no re-hash
    # a changed model.json: loaded again, seen
    modelfile.update_meta(copy, ranking="dominant_first")
    second = Predictor.from_files(copy, sha, device="cpu")
    assert second is not first and second.ranking == "dominant_first" and len(loads) == 2
    assert Predictor.from_files(copy, sha, device="cpu") is second
    # a flipped bit, same size, mtime put back: still noticed (the ctime moved), and refused
    weights = copy / modelfile.WEIGHTS
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    with open(weights, "r+b") as fh:
        fh.write(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(modelfile.HashMismatch):
        Predictor.from_files(copy, sha, device="cpu")
    # another model in place of the file, with its own hash: that one, never the old one
    other = tmp_path / "other"
    import torch

    torch.manual_seed(1)
    mean, std = archs.stats("resnet18")
    other_sha = modelfile.save(other, archs.build("resnet18", 2).state_dict(), {
        "arch": "resnet18", "size": 32, "mean": mean, "std": std, "labels": ["x", "y"]})
    shutil.copyfile(other / modelfile.WEIGHTS, weights)
    shutil.copyfile(other / modelfile.META, copy / modelfile.META)
    assert Predictor.from_files(copy, other_sha, device="cpu").labels == ["x", "y"]
    with pytest.raises(modelfile.HashMismatch):
        Predictor.from_files(copy, sha, device="cpu")
    # a fresh start verifies again
    n = len(loads)
    monkeypatch.setattr(inference, "_cache", OrderedDict())  # no version loaded yet in this process
    Predictor.from_files(copy, other_sha, device="cpu")
    assert len(loads) == n + 1
    monkeypatch.setattr(inference, "_cache", OrderedDict())  # no version loaded yet in this process
