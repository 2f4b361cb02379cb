"""Grad-CAM heatmaps (instatag.explain): a hand-set network whose label is decided by a bright square,
the heatmap of real architectures on the model's exact input, and ``instatag heatmap``."""

from __future__ import annotations

import io

import numpy as np
import pytest
from builders import LABELS, SIZE, client_for, make_champion
from PIL import Image

from instatag import archs, cli, explain, modelfile
from instatag.errors import UserError
from instatag.inference import Predictor


def square_net():
    """body: a 1x1 conv with two channels, brightness (0) and darkness (1), then ReLU; head: average pool
    and a linear layer. Label 0 ("bright") = ch0 - ch1, label 1 ("dark") = ch1 - ch0."""
    import torch
    from torch import nn

    conv = nn.Conv2d(3, 2, 1)
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 1, 1], [-1, -1, -1]]).view(2, 3, 1, 1) / 3)
        conv.bias.copy_(torch.tensor([0.0, 1.0]))
        lin.weight.copy_(torch.tensor([[4.0, -4], [-4, 4]]))
        lin.bias.zero_()
    return nn.Sequential(nn.Sequential(conv, nn.ReLU()),
                         nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), lin)).eval()


def square_image(quadrant: tuple[int, int], size: int = 32):
    """A dim grey [1, 3, size, size] tensor (values in [0, 1]) with a white square inside ``quadrant``
    (row, column: 0 top/left, 1 bottom/right)."""
    import torch

    x = torch.full((1, 3, size, size), 0.2)
    h = size // 2
    r, c = quadrant[0] * h + h // 4, quadrant[1] * h + h // 4
    x[..., r:r + h // 2, c:c + h // 2] = 1.0
    return x


def quadrant_of_max(cam: np.ndarray) -> tuple[int, int]:
    r, c = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return int(r >= cam.shape[0] // 2), int(c >= cam.shape[1] // 2)


@pytest.mark.parametrize("quadrant", [(0, 0), (0, 1), (1, 0), (1, 1)])
@pytest.mark.parametrize("flip", [False, True])
def test_heatmap_is_highest_over_the_square_that_decides_the_label(quadrant, flip):
    net = square_net()
    cam, p = explain.gradcam(net, explain.target_layer(net), square_image(quadrant), 0, flip=flip)
    assert cam.shape == (32, 32) and cam.dtype == np.float32
    assert 0.0 <= cam.min() and cam.max() == pytest.approx(1.0, abs=1e-4)
    assert quadrant_of_max(cam) == quadrant
    assert 0 < p < 1
    # the opposite label ("dark") is decided by the background: its heatmap is low over the square
    dark, _ = explain.gradcam(net, explain.target_layer(net), square_image(quadrant), 1, flip=flip)
    h = 16
    r, c = quadrant[0] * h + h // 4, quadrant[1] * h + h // 4
    assert dark[r:r + h // 2, c:c + h // 2].max() < 0.1 < dark.max()


def test_target_layer_is_the_last_conv_block_of_each_arch():
    import torch

    for arch in archs.names():
        if arch == "resnet50":
            continue  # the same torchvision layout as resnet18/34, only slower to build
        net = archs.build_plain(arch, 3).eval()
        seen = []
        handle = explain.target_layer(net).register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.shape))
        with torch.no_grad():
            net(torch.zeros(1, 3, 64, 64))
        handle.remove()
        assert len(seen) == 1 and len(seen[0]) == 4 and seen[0][-1] == 2, (arch, seen)  # 64 px / 32


def test_heatmap_of_a_model_uses_the_tensor_it_scored(tiny_model_dir):
    predictor = Predictor.from_files(tiny_model_dir, device="cpu")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    heat = explain.explain(predictor, img, LABELS[1])
    assert heat.cam.shape == (SIZE, SIZE) and heat.crop.shape == (SIZE, SIZE, 3)
    assert heat.probability == pytest.approx(float(predictor.predict_images([img])[0, 1]), abs=1e-5)
    png = Image.open(io.BytesIO(heat.png()))
    assert png.size == (SIZE, SIZE) and png.mode == "RGB"
    with pytest.raises(UserError, match="not a label"):
        explain.explain(predictor, img, "no-such-label")


def test_flip_tta_model_heatmap_averages_the_mirror(tiny_model_dir):
    """A model scored with flip TTA: the heatmap's probability is the TTA probability."""
    tensors, meta = modelfile.load(modelfile.weights_path(tiny_model_dir), None)
    predictor = Predictor(tensors, {**meta, "flip_tta": True}, device="cpu")
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    heat = explain.explain(predictor, img, LABELS[0])
    assert heat.probability == pytest.approx(float(predictor.predict_images([img])[0, 0]), abs=1e-5)


def test_explain_cli_writes_the_overlay(sqlite_settings, tiny_model_dir, tmp_path, capsys):
    s = sqlite_settings
    base = ["--database-url", s.database_url, "--data-dir", str(s.data_dir)]
    make_champion(s, tiny_model_dir, n=8)
    photo = sorted((s.data_dir / "store" / "resized").rglob("*.jpg"))[0]
    out = tmp_path / "why.png"
    capsys.readouterr()
    assert cli.main(base + ["heatmap", str(photo), "--label", LABELS[0], "-o", str(out)]) == 0
    io_ = capsys.readouterr()
    assert io_.out.strip() == str(out) and f"#{LABELS[0]} " in io_.err
    with Image.open(out) as im:
        assert im.size == (SIZE, SIZE) and im.mode == "RGB"
    assert cli.main(base + ["heatmap", str(photo), "--label", "nope", "-o", str(out)]) == 2
    assert "'nope' is not a label" in capsys.readouterr().err
    assert cli.main(base + ["heatmap", str(tmp_path / "absent.jpg"), "--label", LABELS[0]]) == 2
    assert "no such file" in capsys.readouterr().err


def test_tag_browser_serves_and_caches_heatmaps(sqlite_settings, tiny_model_dir):

    from instatag import score

    s = sqlite_settings
    mid, images = make_champion(s, tiny_model_dir, n=8)
    score.score(s)
    image_id, sha, _ = images[0]
    client = client_for(s)
    page = client.get("/browse", params={"model": mid}).text
    assert f'data-heatmap="/heatmap/{image_id}?model={mid}"' in page and 'data-label="' in page
    assert 'id="heatmap-help"' in page

    r = client.get(f"/heatmap/{image_id}", params={"model": mid, "label": LABELS[2]})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(r.content)) as im:
        assert im.size == (SIZE, SIZE)
    cached = s.data_dir / "heatmaps" / str(mid) / f"{sha}_{LABELS[2]}.png"
    assert cached.read_bytes() == r.content
    cached.write_bytes(b"not recomputed")  # served from the cache
    assert client.get(f"/heatmap/{image_id}", params={"model": mid, "label": LABELS[2]}).content == b"not recomputed"

    assert client.get(f"/heatmap/{image_id}", params={"model": mid, "label": "nope"}).status_code == 404
    assert client.get(f"/heatmap/{image_id}", params={"model": 999, "label": LABELS[2]}).status_code == 404
    assert client.get("/heatmap/999999", params={"model": mid, "label": LABELS[2]}).status_code == 404
    assert client.get(f"/heatmap/{image_id}", params={"label": LABELS[2]}).status_code == 422


def test_cache_path_names(sqlite_settings):
    s, sha = sqlite_settings, "ab" * 32
    assert explain.cache_path(s, 3, sha, "cake", ["cake"]) == s.data_dir / "heatmaps" / "3" / f"{sha}_cake.png"
    assert explain.cache_path(s, 3, sha, "../x", ["a", "../x"]).name == f"{sha}_#1.png"
    with pytest.raises(ValueError):
        explain.cache_path(s, 3, "../etc", "cake", ["cake"])
