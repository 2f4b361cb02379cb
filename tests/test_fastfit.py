"""instatag.fastfit: fastai's schedule without fastai. The numbers are checked against fastai itself; the
loop runs eagerly on the CPU here (CUDA graphs are the same code replayed, measured on a GPU)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from builders import TINY_TRAIN as TINY
from builders import TRAIN_LABELS as LABELS
from builders import photo_items

from instatag import fastfit, modelfile
from instatag import fitting as ft
from instatag import train as tr
from instatag.errors import UserError
from instatag.labels import Item


@pytest.fixture
def items(tmp_path) -> list[Item]:
    return photo_items(tmp_path)


# --------------------------------------------------------------------------- schedules against fastai's
def test_one_cycle_matches_fastai_combined_cos():
    from fastai.callback.schedule import combined_cos

    lr_max = np.array([1e-5, 1e-4, 1e-3])
    for pct, div in ((0.99, 25.0), (0.3, 5.0)):
        theirs_lr = combined_cos(pct, lr_max / div, lr_max, lr_max / 1e5)
        theirs_mom = combined_cos(pct, *fastfit.MOMS)
        phase = fastfit.Phase("p", 3, tuple(lr_max), pct, div)
        for _, _, pos in fastfit.positions(3, 23):
            lrs, mom = phase.hypers(pos)
            np.testing.assert_allclose(lrs, theirs_lr(pos), rtol=1e-6)
            assert mom == pytest.approx(theirs_mom(pos), rel=1e-6)


def test_group_lrs_are_fastai_slices():
    from fastai.torch_core import even_mults

    assert fastfit.group_lrs(None, 1e-3, 3) == [1e-4, 1e-4, 1e-3]
    np.testing.assert_allclose(fastfit.group_lrs(1e-5, 1e-3, 3), even_mults(1e-5, 1e-3, 3))
    np.testing.assert_allclose(fastfit.group_lrs(1e-5, 1e-3, 2), [1e-5, 1e-3])


def test_valley_matches_fastai():
    import torch
    from fastai.callback.schedule import valley

    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(10, 90)
        lrs = fastfit.lr_find_lrs(100)[:n]
        losses = [1 + math.sin(i / rng.uniform(3, 15)) + rng.uniform(0, 0.3) for i in range(n)]
        ours = fastfit.valley(lrs, losses)[0]
        assert ours == pytest.approx(valley(torch.tensor(lrs), torch.tensor(losses), 100)[0], rel=1e-6)


def test_lr_find_stops_where_fastai_does():
    assert fastfit.lr_find_stop([3.0, 2.0, 1.0, 2.0, 3.9, 4.1, 1.0]) == 6  # the first loss over 4x the best
    assert fastfit.lr_find_stop([1.0, math.nan, 0.9, 0.8]) == 4  # NaN neither stops nor counts
    lrs = fastfit.lr_find_lrs(100)
    assert len(lrs) == 100 and lrs[0] == pytest.approx(1e-7) and lrs[-1] == pytest.approx(1e-7 * 1e8 ** 0.99)
    # the suggestion ignores the first num_it // 10 and the last 5 points, and stops at a NaN
    import torch
    from fastai.callback.schedule import valley

    losses = [5.0] * 10 + [4.0 - 0.1 * i for i in range(30)] + [math.nan] + [0.0] * 20
    expected = valley(torch.tensor(lrs[10:40]), torch.tensor(losses[10:40]), 100)[0]
    assert fastfit.suggest_lr(lrs[:61], losses, 100) == pytest.approx(expected, rel=1e-6)
    assert fastfit.suggest_lr(lrs[:12], [1.0] * 12, 100) is None  # nothing left between the cuts


@pytest.mark.slow
@pytest.mark.parametrize("pretrained", [False, True])
def test_fine_tune_hypers_groups_and_freezing_match_a_fastai_learner(items, tmp_path, pretrained, monkeypatch):
    """Step by step, fastai's Learner.fine_tune sets the same lr per group and momentum as fastfit's phases,
    over the same number of steps, with the same parameters trainable."""
    import torch
    from fastai.callback.core import Callback

    torch.set_num_threads(1)
    if pretrained:  # no ImageNet file here: random "pretrained" weights, the same freezing
        import torchvision

        from instatag import weights

        def random_weights(arch, settings=None, pretrained=True):
            return getattr(torchvision.models, arch)(weights=None)

        monkeypatch.setattr(weights, "torchvision_model", random_weights)
    config = tr.TrainConfig(**{**TINY, "epochs": 2, "freeze_epochs": 2, "pretrained": pretrained})
    learn = ft.learner(items, LABELS, config, tr.Settings(), tmp_path)
    seen = []

    class Spy(Callback):
        order = 61  # after ParamScheduler

        def before_batch(self):
            if self.training:
                trainable = tuple(p.requires_grad for g in self.learn.opt.param_lists for p in g)
                seen.append(([h["lr"] for h in self.opt.hypers], self.opt.hypers[-1]["mom"], trainable))

    learn.fine_tune(config.epochs, 1e-3, freeze_epochs=config.freeze_epochs, lr_mult=config.lr_mult, cbs=[Spy()])
    net = fastfit.network(config.arch, len(LABELS), config, tr.Settings(), False)
    groups = fastfit.param_groups(net, config.arch)
    assert [[tuple(p.shape) for p in g] for g in groups] == \
        [[tuple(p.shape) for p in g] for g in learn.opt.param_lists]
    assert list(net.state_dict()) == list(learn.model.state_dict())
    n_iter = len(learn.dls.train)
    expected = []
    for phase in fastfit.fine_tune_phases(config, 1e-3, len(groups)):
        fastfit.set_frozen(net, groups, phase.name == "frozen")
        trainable = tuple(p.requires_grad for g in groups for p in g)
        expected += [(*phase.hypers(pos), trainable) for _, _, pos in fastfit.positions(phase.epochs, n_iter)]
    assert len(seen) == len(expected) == (config.epochs + config.freeze_epochs) * n_iter
    for (lrs, mom, trainable), (lrs2, mom2, trainable2) in zip(seen, expected, strict=True):
        np.testing.assert_allclose(lrs, lrs2, rtol=1e-5)
        assert mom == pytest.approx(mom2, rel=1e-5) and trainable == trainable2


# --------------------------------------------------------------------------- pieces
def test_optimiser_is_the_fastai_engines():
    """The fast loop's AdamW has the hyper-parameters of the one fastai's OptimWrapper runs in ``fitting``
    (betas, eps, weight decay, the same kernel family per device), one group per fastai parameter group."""
    import torch

    config = tr.TrainConfig(**TINY)
    net = fastfit.network(config.arch, len(LABELS), config, tr.Settings(), False)
    groups = fastfit.param_groups(net, config.arch)
    ours = fastfit.optimizer(groups, None, cuda=False)
    theirs = ft._opt_func("cpu")([{"params": g} for g in groups], lr=1e-3).opt
    assert isinstance(ours, torch.optim.AdamW) and type(theirs) is type(ours)
    for key in ("betas", "eps", "weight_decay", "foreach", "fused"):
        assert ours.defaults[key] == theirs.defaults[key], key
    assert ours.defaults["weight_decay"] == fastfit.DEFAULT_WD and len(ours.param_groups) == len(groups) == 3
    assert fastfit.optimizer(groups, 0.1, cuda=False).defaults["weight_decay"] == 0.1


def _loop(items, config):
    from instatag import imageprep, memdata

    valid_idx = ft.valid_indices(items, config)
    data = fastfit.Resident(*memdata.resident(items, LABELS, config, "cpu", valid_idx, 160))
    net = fastfit.network(config.arch, len(LABELS), config, tr.Settings(), False)
    groups = fastfit.param_groups(net, config.arch)
    prep = imageprep.Preprocessing.for_config(config)
    return fastfit.Loop(net, groups, data, prep, ft.plain_loss(config), config, "cpu"), prep


def test_loop_batches_are_the_contracts(items):
    """Training batches are ``Preprocessing.train_batch`` of the canvases (the crop distribution and the
    augmentation tests/test_imageprep.py checks against fastai's), validation batches the Predictor's
    inputs for the same evaluation crops."""
    import torch

    from instatag import imageprep

    config = tr.TrainConfig(**TINY)
    loop, prep = _loop(items, config)
    loop.idx.copy_(torch.arange(config.bs))
    torch.manual_seed(5)
    got = loop.train_inputs()
    torch.manual_seed(5)
    expected = prep.train_batch(loop.data.x_train[:config.bs], loop.data.sizes[:config.bs])
    torch.testing.assert_close(got, expected)
    assert got.shape == (config.bs, 3, config.size, config.size)
    torch.manual_seed(6)
    assert not torch.allclose(loop.train_inputs(), got)  # fresh draws per step
    meta_prep = imageprep.Preprocessing.from_meta({"preprocessing": prep.to_meta()})
    torch.testing.assert_close(loop.valid_inputs(0), meta_prep.inputs(loop.data.x_valid[:loop.valid_bs]))


# --------------------------------------------------------------------------- the loop, through fitting.fit
@pytest.mark.slow
def test_fast_fit_records_lr_find_and_model_files(items, tmp_path):
    import torch

    from instatag.inference import Predictor

    torch.set_num_threads(1)
    seen, curves = [], []
    config = tr.TrainConfig(**{**TINY, "engine": "fast", "lr": "auto", "lr_find_iters": 12})
    result = ft.fit(items, LABELS, config, sink=seen.append, on_lr_find=curves.append)
    assert [(r.epoch, r.phase) for r in result.epochs] == [(0, "frozen"), (1, "unfrozen")] and seen == result.epochs
    per_epoch = result.meta["n_train"] // 8 * 8
    assert [r.images_seen for r in result.epochs] == [per_epoch, 2 * per_epoch]
    for r in result.epochs:
        assert np.isfinite(r.train_loss) and np.isfinite(r.valid_loss) and r.seconds > 0
        assert set(r.metrics) == {"accuracy_multi", "precision_at_1"} and all(0 <= v <= 1 for v in r.metrics.values())
    curve = result.lr_find
    assert curves == [curve] and curve["method"] == "valley" and curve["num_it"] == 12
    assert curve["lrs"] == fastfit.lr_find_lrs(12)[:len(curve["lrs"])] and len(curve["losses"]) == len(curve["lrs"])
    assert result.meta["base_lr"] == curve["suggested"] and 1e-7 < curve["suggested"] < 10
    assert result.meta["data_path"] == "memory" and result.meta["preprocessing"]["size"] == config.size
    sha = modelfile.save(tmp_path / "m", result.state_dict, result.meta)
    predictor = Predictor.from_files(tmp_path / "m", sha, device="cpu")
    probs = predictor.predict_paths([it.resized_path for it in items])
    assert probs.shape == (len(items), len(LABELS)) and ((probs > 0) & (probs < 1)).all()


@pytest.mark.slow
def test_lr_find_restores_weights_and_optimiser(items):
    import torch

    torch.set_num_threads(1)
    config = tr.TrainConfig(**{**TINY, "engine": "fast", "lr_find_iters": 10})
    loop, _ = _loop(items, config)
    before = {k: v.clone() for k, v in loop.net.state_dict().items()}
    curve = fastfit.lr_find(loop, config.lr_find_iters)
    assert all(torch.equal(before[k], v) for k, v in loop.net.state_dict().items())
    assert not loop.opt.state and len(curve["lrs"]) <= 10


def test_engine_resolution():
    config = tr.TrainConfig(**TINY)
    assert ft.engine(config, "cuda", 1000, 200, 160) == "fast"
    assert ft.engine(config, "cpu", 1000, 200, 160) == "fastai"
    assert ft.engine(config.replace(engine="fastai"), "cuda", 1000, 200, 160) == "fastai"
    assert ft.engine(config.replace(data_path="files"), "cuda", 1000, 200, 160) == "fastai"
    with pytest.raises(UserError, match="engine"):
        config.replace(engine="turbo").validate()
    with pytest.raises(UserError, match="memory data path"):
        config.replace(engine="fast", data_path="files").validate()


def test_cuda_formats_per_architecture_and_switches(monkeypatch):
    assert fastfit.cuda_format("resnet18") == ("bf16", True)
    assert fastfit.cuda_format("efficientnet_lite0") == ("off", False)  # measured: cuDNN's bf16 NHWC depthwise start
    monkeypatch.setattr(fastfit, "AMP", "bf16")
    monkeypatch.setattr(fastfit, "CHANNELS_LAST", True)
    assert fastfit.cuda_format("efficientnet_lite0") == ("bf16", True)


def test_prefetch_only_where_the_memory_path_is_likely(items, monkeypatch):
    from instatag import memdata

    settings = tr.Settings()
    config = tr.TrainConfig(**TINY)
    monkeypatch.setattr(memdata, "may_have_cuda", lambda device: False)
    assert tr._prefetch(items, config, settings, 0.2) is None  # a CPU machine: fastai's files path
    monkeypatch.setattr(memdata, "may_have_cuda", lambda device: True)
    assert tr._prefetch(items, config.replace(data_path="files"), settings, 0.2) is None
    assert tr._prefetch(items, config.replace(engine="fastai"), settings, 0.2) is None
    monkeypatch.setattr(memdata, "MAX_BYTES", 1000)
    assert tr._prefetch(items, config, settings, 0.2) is None  # too big to hold: the files path
    monkeypatch.setattr(memdata, "MAX_BYTES", 8 << 30)
    ahead = tr._prefetch(items, config, settings, 0.2)
    train_px, sizes, valid_px = ahead.result()
    valid_idx = ft.valid_indices(items, config)
    n_valid = len(valid_idx)
    side = memdata.train_side(config.size, settings.resized_side)
    assert train_px.shape == (len(items) - n_valid, 3, side, side) and valid_px.shape == (n_valid, 3, 32, 32)
    assert sizes.shape == (len(items) - n_valid, 2)
    # resident() takes them as they are; the same pixels as decoding there
    x_train, x_sizes, _, x_valid, _ = memdata.resident(items, LABELS, config, "cpu", valid_idx,
                                                       settings.resized_side, ahead)
    assert (x_train.numpy() == train_px).all() and (x_valid.numpy() == valid_px).all()
    assert (x_sizes.numpy() == sizes).all()
    again = memdata.resident(items, LABELS, config, "cpu", valid_idx, settings.resized_side)
    assert (again[0].numpy() == train_px).all() and (again[1].numpy() == sizes).all()
    assert (again[3].numpy() == valid_px).all()
