"""Fine-tune a pretrained CNN with fastai on the current vocabulary version: ``instatag train``.

``fit(items, labels, config)`` is the training itself, independent of the database: a fastai
``DataBlock(ImageBlock, MultiCategoryBlock)`` over the resized image store (never the
originals), ``vision_learner`` with offline pretrained weights (``instatag.archs``), optional
``lr_find``, then ``fine_tune``. Every epoch of both phases is reported to a sink (fastai's own
Recorder starts afresh at each fit). ``train(settings, config)`` wraps it with the bookkeeping:
a ``training_runs`` row (running -> succeeded | failed), a ``training_epochs`` row per epoch, and
at the end, in one transaction, the model files moved to ``models/<id>/`` and the
``model_versions`` row (candidate). A failure marks the run failed with its error and
registers nothing. docs/training.md explains the choices.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import archs, progress, ranking
from .errors import UserError
from .labels import VALID_PCT
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; stored in training_runs.params and model_versions.params."""

    arch: str = "efficientnet_lite0"
    #: square input side; RandomResizedCrop(size) for training, centre crop for validation/inference
    size: int = 96
    #: unfrozen epochs (fine_tune's ``epochs``; 0: only the frozen phase, the body keeps its pretrained weights)
    epochs: int = 3
    #: epochs with the pretrained body frozen (fine_tune's ``freeze_epochs``)
    freeze_epochs: int = 2
    #: "auto" (lr_find's valley suggestion) or a base learning rate
    lr: str | float = "auto"
    bs: int = 64
    seed: int = 42
    pretrained: bool = True
    # ---- levers for quality experiments
    #: RandomResizedCrop's smallest crop, as a share of the image area
    min_scale: float = 0.35
    max_rotate: float = 10.0
    #: brightness and contrast jitter
    lighting: float = 0.2
    #: "bce" (fastai's BCEWithLogitsLossFlat) or "focal" (sigmoid focal loss, ``focal_gamma``)
    loss: str = "bce"
    focal_gamma: float = 2.0
    #: BCE targets become eps/2 and 1 - eps/2
    label_smoothing: float = 0.0
    #: weight decay (None: fastai's default, 0.01)
    wd: float | None = None
    #: dropout of the head's last layer (fastai's ``ps``)
    ps: float = 0.5
    #: the body's learning rate in the unfrozen phase is lr / lr_mult (fastai's default 100)
    lr_mult: float = 100.0
    lr_find_iters: int = 100
    #: how the model orders an image's labels (instatag.ranking): "probability" (most probable first, the
    #: default everywhere) or "dominant_first" (the label most likely to be the uploader's most frequent first)
    ranking: str = "probability"
    #: predictions average each image with its mirror image (twice the inference work)
    flip_tta: bool = True
    #: give the head's last layer biases (fastai's has none) starting at each label's log-odds in the
    #: training split, so the first steps learn images rather than label frequencies
    prior_bias: bool = False
    #: DataLoader worker processes (None: 0 on CPU, up to 8 on CUDA), for data_path "files"
    num_workers: int | None = None
    #: "files": fastai's DataBlock decoding and cropping each image on the CPU every epoch; "memory":
    #: decoded once onto the training device, cropped there per batch (instatag.memdata); "auto":
    #: memory on CUDA when the pixels fit in memdata.MAX_BYTES, files otherwise
    data_path: str = "auto"
    #: deterministic cuDNN kernels on CUDA (slower); CPU runs are reproducible regardless
    deterministic: bool = False
    #: the preset this config came from, for the record
    preset: str = ""

    def validate(self) -> TrainConfig:
        archs.check(self.arch)
        ranking.check(self.ranking)
        if isinstance(self.lr, str) and self.lr != "auto":
            raise UserError(f"lr must be 'auto' or a number, not {self.lr!r}")
        if not isinstance(self.lr, str) and not (LR_RANGE[0] < float(self.lr) < LR_RANGE[1]):
            raise UserError(f"lr must be in ({LR_RANGE[0]}, {LR_RANGE[1]}), not {self.lr}")
        for name, (lo, hi) in LIMITS.items():
            if not lo <= getattr(self, name) <= hi:
                raise UserError(f"{name} must be from {lo} to {hi}, not {getattr(self, name)}")
        checks = [(self.epochs + self.freeze_epochs >= 1, "train at least one epoch (epochs + freeze_epochs)"),
                  (self.pretrained or not self.freeze_epochs or self.epochs,
                   "without pretrained weights, unfrozen epochs are needed (--epochs)"),
                  (0 < self.min_scale <= 1, "min_scale must be in (0, 1]"),
                  (self.loss in ("bce", "focal"), "loss must be bce or focal"),
                  (self.data_path in ("auto", "files", "memory"), "data_path must be auto, files or memory"),
                  (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
                  (self.lr_find_iters >= 10, "lr_find_iters must be at least 10"),
                  (self.num_workers is None or self.num_workers >= 0, "num_workers must be 0 or more")]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> TrainConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UserError(f"unknown training parameter(s) {sorted(unknown)}; known: "
                            f"{', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)


#: the range (inclusive) of each whole-number field a training may ask for; ``TrainConfig.validate``
#: enforces it, and the retrain DAG's params (``instatag.params``) take their limits from it
LIMITS: dict[str, tuple[int, int]] = {"size": (16, 1024), "epochs": (0, 500), "freeze_epochs": (0, 500),
                                      "bs": (2, 4096)}
#: a numeric ``lr`` lies strictly between these
LR_RANGE = (0, 10)

PRESETS: dict[str, TrainConfig] = {
    # the study this project automates: resnet18 at 64 px, lr_find, fine_tune(15, freeze_epochs=15)
    "study": TrainConfig(arch="resnet18", size=64, epochs=15, freeze_epochs=15, lr="auto", bs=64,
                         ranking="probability", flip_tta=False, preset="study"),
    # measured best on food10 within 15 minutes of a 2-core CPU (README, Benchmarks): weights that ship with a
    # pip package, 128 px, bs 16 (steps matter in few epochs), lr 1e-2 (above lr_find's valley), the body at
    # lr/3 when unfrozen (fastai's lr/100 left it underfit), output biases from the label frequencies
    "default": TrainConfig(size=128, epochs=7, bs=16, lr=0.01, lr_mult=3.0, prior_bias=True, preset="default"),
}


def config_from(preset: str = "default", **overrides) -> TrainConfig:
    """A preset with some fields replaced (None values are ignored), validated."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[preset].replace(**{k: v for k, v in overrides.items() if v is not None}).validate()


@dataclass
class EpochRecord:
    epoch: int  # running number across both phases, from 0
    phase: str  # frozen | unfrozen
    train_loss: float | None
    valid_loss: float | None
    metrics: dict
    images_seen: int  # training images processed so far, both phases
    seconds: float


@dataclass
class FitResult:
    state_dict: dict
    meta: dict  # model.json without weights_sha256 / libraries (modelfile.save adds them)
    lr_find: dict | None
    epochs: list[EpochRecord]
    device: str
    seconds: float = 0.0


# --------------------------------------------------------------------------- pieces for fastai
def _num(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def precision_at_1(inp, targ):
    """Share of images whose most probable label is one of theirs."""
    return targ.gather(1, inp.argmax(dim=1, keepdim=True)).float().mean()


def _loss_func(config: TrainConfig):
    from fastai.losses import BCEWithLogitsLossFlat

    if config.loss == "bce" and not config.label_smoothing:
        return BCEWithLogitsLossFlat()
    import torch
    import torch.nn.functional as F

    eps, gamma, focal = config.label_smoothing, config.focal_gamma, config.loss == "focal"

    def loss(pred, targ):
        pred, t = pred.float(), targ.float()
        if eps:
            t = t * (1 - eps) + eps / 2
        ce = F.binary_cross_entropy_with_logits(pred, t, reduction="none")
        if focal:
            p = torch.sigmoid(pred)
            ce = ce * (1 - (p * t + (1 - p) * (1 - t))).pow(gamma)
        return ce.mean()

    return loss


def _opt_func(device: str):
    """AdamW as fastai's Adam defines it (betas 0.9/0.99, eps 1e-5, decoupled weight decay), but
    PyTorch's multi-tensor implementation: fastai's own steps every parameter tensor in Python, which
    costs 60 ms a step for efficientnet_lite0 on the CPU and leaves a GPU waiting on kernel launches."""
    from functools import partial

    import torch
    from fastai.optimizer import OptimWrapper

    kind = {"fused": True} if device == "cuda" else {"foreach": True}
    return partial(OptimWrapper, opt=partial(torch.optim.AdamW, betas=(0.9, 0.99), eps=1e-5, **kind))


def _transforms(size: int, config: TrainConfig, stats):
    """(item_tfms, batch_tfms): random crops for training, the inference crop for validation."""
    from fastai.vision.augment import RandomResizedCrop, setup_aug_tfms
    from fastai.vision.core import PILImage
    from fastai.vision.data import Normalize
    from fasttransform import Transform

    from .inference import center_crop_resize

    class TrainCrop(RandomResizedCrop):
        split_idx = 0  # training set only

    class ValidCrop(Transform):
        split_idx, order = 1, 1  # validation set only: exactly the inference preprocessing

        def encodes(self, x):  # no annotation: this module's are strings, which type dispatch cannot resolve
            return center_crop_resize(x, size) if isinstance(x, PILImage) else x  # the type is kept

    item_tfms = [TrainCrop(size, min_scale=config.min_scale), ValidCrop()]
    batch_tfms = setup_aug_tfms(batch_augmentations(config)) + [Normalize.from_stats(*stats)]
    return item_tfms, batch_tfms


def batch_augmentations(config: TrainConfig) -> list:
    """The study's batch augmentation, for both data paths: flip, rotation, lighting. setup_aug_tfms fuses
    the affine ones into one grid_sample with the FIRST one's padding, so every one of them says zeros
    (black fill), as the study's rotation did."""
    from fastai.vision.augment import Brightness, Contrast, Flip, PadMode, Rotate

    return [
        Flip(p=0.5, pad_mode=PadMode.Zeros),
        Rotate(max_deg=config.max_rotate, p=0.75, pad_mode=PadMode.Zeros),
        Brightness(max_lighting=config.lighting, p=0.75),
        Contrast(max_lighting=config.lighting, p=0.75),
    ]


# no return annotations: fastai's transforms would cast to them
def _path_of(item):
    return Path(item.resized_path)


def _labels_of(item):
    return list(item.labels)  # a list: fastai would cast a tuple back to the Item namedtuple


def data_path(config: TrainConfig, device: str, n_train: int, n_valid: int, resized_side: int) -> str:
    """The data path ``config.data_path`` resolves to on ``device``."""
    from . import memdata

    if config.data_path != "auto":
        return config.data_path
    fits = memdata.nbytes(n_train, n_valid, config.size, resized_side) <= memdata.MAX_BYTES
    return "memory" if device == "cuda" and fits else "files"


def dataloaders(items: Sequence, labels: Sequence[str], config: TrainConfig, device: str, resized_side: int = 160,
                valid_pct: float = VALID_PCT):
    """fastai DataLoaders over ``items`` (labels.Item), split by content hash (``labels.is_valid`` at
    ``valid_pct``, the vocabulary version's): ``memdata`` or a DataBlock. ``resized_side``: the longest
    side of the store's resized copies (Settings.resized_side)."""
    from fastai.data.block import DataBlock
    from fastai.data.transforms import IndexSplitter
    from fastai.vision.data import ImageBlock, MultiCategoryBlock

    from . import memdata
    from .labels import is_valid

    valid_idx = [i for i, it in enumerate(items) if is_valid(it.sha256, valid_pct)]
    n_valid, n_train = len(valid_idx), len(items) - len(valid_idx)
    if n_valid == 0 or n_train < config.bs:
        raise UserError(f"too few labelled images to train: {n_train} for training (batch size {config.bs}) and "
                        f"{n_valid} for validation; ingest more posts or lower --bs")
    if data_path(config, device, n_train, n_valid, resized_side) == "memory":
        return memdata.dataloaders(items, labels, config, device, valid_idx, resized_side)
    item_tfms, batch_tfms = _transforms(config.size, config, archs.stats(config.arch))
    block = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock(vocab=list(labels))),
        get_x=_path_of,
        get_y=_labels_of,
        splitter=IndexSplitter(valid_idx),
        item_tfms=item_tfms,
        batch_tfms=batch_tfms,
    )
    workers = config.num_workers
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if device == "cuda" else 0
    # no persistent_workers: fastai's workers keep the shuffled order they were started with
    return block.dataloaders(list(items), bs=config.bs, num_workers=workers, device=device, pin_memory=device == "cuda")


def _epoch_callback(sink: Callable[[EpochRecord], None], total_epochs: int):
    """A fastai Callback reporting every epoch, numbered across fits, with the images seen so far."""
    from fastai.callback.core import Callback
    from fastai.learner import Recorder
    from fastai.torch_core import find_bs

    class EpochSink(Callback):
        order = Recorder.order + 1  # after the Recorder has its epoch's values
        epoch_no, images_seen = 0, 0

        def before_fit(self):
            self.phase = "frozen" if getattr(self.learn.opt, "frozen_idx", 0) > 0 else "unfrozen"

        def before_epoch(self):
            self.t0 = time.perf_counter()

        def after_batch(self):
            if self.training:
                self.images_seen += find_bs(self.learn.yb)

        def after_epoch(self):
            names = list(self.recorder.metric_names[1:len(self.recorder.values[-1]) + 1])
            values = dict(zip(names, (_num(v) for v in self.recorder.values[-1]), strict=True))
            rec = EpochRecord(self.epoch_no, self.phase, values.pop("train_loss", None), values.pop("valid_loss", None),
                              values, self.images_seen, time.perf_counter() - self.t0)
            self.epoch_no += 1
            mets = " ".join(f"{k} {v:.4f}" for k, v in rec.metrics.items() if v is not None)
            nan = float("nan")
            log.info("epoch %d/%d %s: train_loss %.4f valid_loss %.4f %s (%d images, %.1fs)", rec.epoch + 1,
                     total_epochs, rec.phase, nan if rec.train_loss is None else rec.train_loss,
                     nan if rec.valid_loss is None else rec.valid_loss, mets, rec.images_seen, rec.seconds)
            sink(rec)

    return EpochSink()


def batch_log(total_epochs: int | None = None, lr_find_iters: int | None = None, every_s: float | None = None,
              clock: Callable[[], float] = time.monotonic):
    """A fastai Callback logging progress inside epochs, at most one line every ``every_s`` seconds of
    ``clock`` (default ``progress.EVERY_S``), for logs without a terminal, where fastai's bars show
    nothing (Airflow task logs):

    - training: ``epoch 3/9 unfrozen: batch 40/150, 212 images/s, loss 0.3124`` (epochs numbered across
      fits, out of ``total_epochs``; the loss is the Recorder's smoothed one, as fastai's bar shows it);
    - validation: ``epoch 3/9 unfrozen: validation batch 10/38, 530 images/s``;
    - with ``lr_find_iters``, for ``lr_find``: ``lr_find: batch 40/100, 180 images/s, loss 0.4123 at lr 1.2e-04``.

    Images per second count the images since the previous line; the clock restarts at each training and
    validation loop."""
    from fastai.callback.core import Callback
    from fastai.learner import Recorder
    from fastai.torch_core import find_bs

    class BatchLog(Callback):
        order = Recorder.order + 1  # after the Recorder has updated the smoothed loss
        epoch_no = 0

        def before_fit(self):
            self.phase = "frozen" if getattr(self.learn.opt, "frozen_idx", 0) > 0 else "unfrozen"

        def before_train(self):
            self.ticker = progress.Ticker(every_s, clock)

        def before_validate(self):
            self.ticker = progress.Ticker(every_s, clock)

        def after_batch(self):
            rate = self.ticker.tick(find_bs(self.learn.yb))
            if rate is None:
                return
            if lr_find_iters:
                log.info("lr_find: batch %d/%d, %s images/s, loss %.4f at lr %.1e", self.learn.train_iter,
                         lr_find_iters, progress.rate_text(rate), float(self.learn.smooth_loss),
                         self.opt.hypers[-1]["lr"])
            elif self.training:
                log.info("epoch %d/%d %s: batch %d/%d, %s images/s, loss %.4f", self.epoch_no + 1, total_epochs,
                         self.phase, self.learn.iter + 1, self.learn.n_iter, progress.rate_text(rate),
                         float(self.learn.smooth_loss))
            else:
                log.info("epoch %d/%d %s: validation batch %d/%d, %s images/s", self.epoch_no + 1, total_epochs,
                         self.phase, self.learn.iter + 1, self.learn.n_iter, progress.rate_text(rate))

        def after_epoch(self):
            self.epoch_no += 1

    return BatchLog()


def _lr_find(learn, config: TrainConfig) -> tuple[float, dict]:
    import warnings

    from fastai.callback.schedule import valley

    cbs = [] if sys.stderr.isatty() else [batch_log(lr_find_iters=config.lr_find_iters)]
    with warnings.catch_warnings(), learn.added_cbs(cbs):
        # lr_find reloads the weights it started from with fastai.learner.load_model, which names numpy.core
        # (deprecated since numpy 2) for torch.load's safe globals; fastai's to fix, harmless
        warnings.filterwarnings("ignore", r"numpy\.core is deprecated", DeprecationWarning, r"fastai\.learner")
        suggested = learn.lr_find(num_it=config.lr_find_iters, show_plot=False, suggest_funcs=(valley,))
    lrs = [float(x) for x in learn.recorder.lrs]
    losses = [_num(x) for x in learn.recorder.losses]
    lr = _num(suggested.valley)
    curve = {"lrs": lrs, "losses": losses, "suggested": lr, "method": "valley", "num_it": config.lr_find_iters}
    if lr is None or not 1e-7 < lr < 10:
        raise UserError(f"lr_find gave no usable learning rate ({suggested.valley}); pass --lr explicitly")
    log.info("lr_find: valley at %.2e", lr)
    return lr, curve


def import_fastai() -> None:
    """Import the fastai modules training uses, without the deprecation warnings fastai 2.8 raises on its
    first import with this project's torch and pandas (not ours to fix; filtered by message, category and
    the module raising them, for this import only)."""
    import warnings

    with warnings.catch_warnings():
        # fastai.layers compiles a few activations with torch.jit.script, deprecated since torch 2.9
        warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit\._script")
        # fastai.tabular.core (imported by fastai.basics) sets pandas' mode.chained_assignment, a no-op since pandas 3
        warnings.filterwarnings("ignore", r"The 'mode\.chained_assignment' option is deprecated", DeprecationWarning,
                                r"fastai\.tabular\.core")
        import fastai.callback.channelslast  # noqa: F401 - patches Learner.to_channelslast
        import fastai.callback.schedule  # noqa: F401 - patches Learner.fine_tune, fit_one_cycle, lr_find
        import fastai.vision.learner  # noqa: F401


def learner(items: Sequence, labels: Sequence[str], config: TrainConfig, settings: Settings, path: Path,
            valid_pct: float = VALID_PCT):
    """The seeded fastai Learner (frozen when pretrained), its DataLoaders over ``items``, on the configured
    device; ``path`` holds lr_find's temporary files."""
    import torch

    import_fastai()
    from fastai.callback.progress import ProgressCallback
    from fastai.metrics import accuracy_multi
    from fastai.torch_core import set_seed
    from fastai.vision.learner import vision_learner

    from .inference import resolve_device

    device = resolve_device(settings.device)
    set_seed(config.seed, reproducible=config.deterministic or device == "cpu")
    if device == "cuda" and not config.deterministic:
        torch.backends.cudnn.benchmark = True
    dls = dataloaders(items, labels, config, device, settings.resized_side, valid_pct)
    learn = vision_learner(dls, archs.fastai_arch(config.arch, settings), pretrained=config.pretrained,
                           n_out=len(labels), loss_func=_loss_func(config), ps=config.ps,
                           metrics=[accuracy_multi, precision_at_1], path=path, wd=config.wd,
                           opt_func=_opt_func(device))
    if not sys.stderr.isatty():  # Airflow logs: lines every few seconds (batch_log) and per epoch (EpochSink)
        learn.remove_cb(ProgressCallback)
        learn.logger = lambda *_: None
    if config.prior_bias:
        archs.add_output_bias(learn.model, _prior_log_odds(items, labels, valid_pct))
    if device == "cuda":
        learn.to_channelslast(amp_mode="bf16" if torch.cuda.is_bf16_supported() else "fp16")
    return learn


def _prior_log_odds(items: Sequence, labels: Sequence[str], valid_pct: float):
    """log(f / (1 - f)) of each label's frequency f over the training split (smoothed)."""
    import torch

    from .labels import split

    train, _ = split(items, valid_pct)
    freq = torch.tensor([sum(label in it.labels for it in train) for label in labels], dtype=torch.float32)
    freq = (freq + 0.5) / (len(train) + 1)
    return torch.log(freq / (1 - freq))


def fit(items: Sequence, labels: Sequence[str], config: TrainConfig, settings: Settings | None = None,
        sink: Callable[[EpochRecord], None] | None = None,
        on_lr_find: Callable[[dict], None] | None = None, counts: dict | None = None,
        valid_pct: float = VALID_PCT) -> FitResult:
    """Train on ``items`` (labels.Item: image_id, sha256, resized_path, labels) for ``labels`` (output order).
    ``counts``: training frequency per label, for the ranking (default: counted over ``items``);
    ``valid_pct``: the validation share of the items' vocabulary version (``LabelPipeline.valid_pct``)."""
    import tempfile
    from collections import Counter

    from .metrics import frequency_order

    config.validate()
    settings = settings or Settings()
    started = time.perf_counter()
    records: list[EpochRecord] = []

    def record(rec: EpochRecord) -> None:
        records.append(rec)
        if sink:
            sink(rec)

    with tempfile.TemporaryDirectory(prefix="instatag-train-") as workdir:
        learn = learner(items, labels, config, settings, Path(workdir), valid_pct)
        curve = None
        if config.lr == "auto":
            base_lr, curve = _lr_find(learn, config)
            if on_lr_find:
                on_lr_find(curve)
        else:
            base_lr = float(config.lr)
        total_epochs = config.freeze_epochs + config.epochs
        learn.add_cb(_epoch_callback(record, total_epochs))
        if not sys.stderr.isatty():
            learn.add_cb(batch_log(total_epochs))
        if config.freeze_epochs and config.epochs:
            learn.fine_tune(config.epochs, base_lr, freeze_epochs=config.freeze_epochs, lr_mult=config.lr_mult)
        elif config.freeze_epochs:  # fine_tune's first phase alone: the pretrained body stays as it is
            learn.fit_one_cycle(config.freeze_epochs, slice(base_lr), pct_start=0.99)
        else:  # fine_tune's second phase alone
            learn.unfreeze()
            learn.fit_one_cycle(config.epochs, slice(base_lr / 2 / config.lr_mult, base_lr / 2), pct_start=0.3, div=5.0)
        state = {k: v.detach().cpu() for k, v in learn.model.state_dict().items()}
    mean, std = archs.stats(config.arch)
    counts = counts or Counter(label for it in items for label in it.labels)
    meta = {
        "format": 1, "arch": config.arch, "size": config.size, "mean": list(mean), "std": list(std),
        "n_out": len(labels), "labels": list(labels),
        "ranking": config.ranking, "flip_tta": config.flip_tta, "output_bias": config.prior_bias,
        "frequency_order": [labels[j] for j in frequency_order(labels, [counts.get(label, 0) for label in labels])],
        "params": config.to_dict(), "base_lr": base_lr, "pretrained": config.pretrained,
        "n_train": len(learn.dls.train_ds), "n_valid": len(learn.dls.valid_ds),
        "preprocessing": "centre square resized to size x size (bilinear), /255, (x - mean) / std",
    }
    from .inference import resolve_device

    return FitResult(state, meta, curve, records, resolve_device(settings.device), time.perf_counter() - started)


# --------------------------------------------------------------------------- with the database
def _device_name(device: str) -> str:
    if device != "cuda":
        return device
    import torch

    return f"cuda {torch.cuda.get_device_name()}"[:64]


def train(settings: Settings, config: TrainConfig, vocab_version_id: int | None = None) -> int:
    """Train on a vocabulary version (the newest when None); returns the new model version's id."""
    from sqlalchemy import func, insert, update

    from . import db, modelfile
    from .inference import resolve_device
    from .labels import LabelPipeline
    from .schema import model_versions, training_epochs, training_runs

    config.validate()
    pipeline = LabelPipeline.for_version(settings, vocab_version_id)
    items = pipeline.items(settings)
    if not pipeline.labels or not items:
        raise UserError(f"vocabulary version {pipeline.version_id} has no labelled image: nothing to train on")
    if config.pretrained:  # fail before registering a run when the weights are missing
        from . import weights

        weights.resolve(config.arch, settings)
    engine = db.get_engine(settings)
    params = config.to_dict()
    with engine.begin() as conn:
        run_id = conn.execute(insert(training_runs).values(
            vocab_version_id=pipeline.version_id, params=params, status="running",
            device=_device_name(resolve_device(settings.device)))).inserted_primary_key[0]
    log.info("training run %d: %s on vocabulary version %d (%d labels, %d images)", run_id, config.arch,
             pipeline.version_id, len(pipeline.labels), len(items))

    def write_epoch(rec: EpochRecord) -> None:
        with engine.begin() as conn:
            conn.execute(insert(training_epochs).values(
                training_run_id=run_id, epoch=rec.epoch, phase=rec.phase, train_loss=rec.train_loss,
                valid_loss=rec.valid_loss, metrics=rec.metrics, images_seen=rec.images_seen, seconds=rec.seconds))

    def write_lr_find(curve: dict) -> None:
        with engine.begin() as conn:
            conn.execute(update(training_runs).where(training_runs.c.id == run_id).values(lr_find=curve))

    staging = settings.models_dir / f".run-{run_id}-{uuid.uuid4().hex[:8]}"
    final = None
    try:
        result = fit(items, pipeline.labels, config, settings, sink=write_epoch, on_lr_find=write_lr_find,
                     counts=pipeline.counts, valid_pct=pipeline.valid_pct)
        meta = {**result.meta, "vocab_version_id": pipeline.version_id, "training_run_id": run_id}
        sha = modelfile.save(staging, result.state_dict, meta)
        last = result.epochs[-1] if result.epochs else None
        summary = {**params, "base_lr": result.meta["base_lr"], "n_train": result.meta["n_train"],
                   "n_valid": result.meta["n_valid"], "seconds": round(result.seconds, 1),
                   "final_epoch": dataclasses.asdict(last) if last else None}
        with engine.begin() as conn:
            model_id = conn.execute(insert(model_versions).values(
                training_run_id=run_id, vocab_version_id=pipeline.version_id, arch=config.arch, params=summary,
                artifact_path="(moving)", sha256=sha, status="candidate")).inserted_primary_key[0]
            final = settings.models_dir / str(model_id)
            if final.exists():  # left by an attempt whose registration rolled back: never registered
                log.warning("removing %s, an unregistered leftover", final)
                shutil.rmtree(final)
            os.replace(staging, final)
            rel = (final / modelfile.WEIGHTS).relative_to(settings.data_dir).as_posix()
            conn.execute(update(model_versions).where(model_versions.c.id == model_id).values(artifact_path=rel))
            conn.execute(update(training_runs).where(training_runs.c.id == run_id).values(
                status="succeeded", finished_at=func.now()))
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if final is not None:
            shutil.rmtree(final, ignore_errors=True)
        error = f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}"[-20000:]
        with engine.begin() as conn:
            conn.execute(update(training_runs).where(training_runs.c.id == run_id).values(
                status="failed", error=error, finished_at=func.now()))
        log.error("training run %d failed: %s", run_id, exc)
        raise
    log.info("training run %d: model version %d (%s) in %.0fs", run_id, model_id, final, result.seconds)
    return int(model_id)


# --------------------------------------------------------------------------- CLI
def _parse_value(raw: str):
    """``--set`` values: JSON (numbers, true/false, null) or else the plain string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _lr(raw: str):
    if raw == "auto":
        return raw
    try:
        return float(raw)
    except ValueError:
        raise UserError(f"--lr takes 'auto' or a number, not {raw!r}") from None


def config_from_args(args) -> TrainConfig:
    overrides = {"arch": args.arch, "size": args.size, "epochs": args.epochs, "freeze_epochs": args.freeze_epochs,
                 "lr": _lr(args.lr) if args.lr is not None else None, "bs": args.bs, "seed": args.seed,
                 "num_workers": args.workers}
    if args.no_pretrained:
        overrides["pretrained"] = False
    for item in args.set or []:
        if "=" not in item:
            raise UserError(f"--set takes NAME=VALUE, not {item!r}")
        name, raw = item.split("=", 1)
        overrides[name.strip().replace("-", "_")] = _parse_value(raw)
    return config_from(args.preset, **overrides)


def _or_nan(x) -> float:
    return float("nan") if x is None else float(x)


def epochs_table(settings: Settings, run_id: int) -> str:
    from sqlalchemy import select

    from . import db
    from .schema import training_epochs

    with db.get_engine(settings).connect() as conn:
        rows = conn.execute(select(training_epochs).where(training_epochs.c.training_run_id == run_id)
                            .order_by(training_epochs.c.epoch)).mappings().all()
    names = sorted({k for r in rows for k in (r["metrics"] or {})})
    out = ["epoch  phase     train_loss  valid_loss  " + "  ".join(names) + "  images  seconds"]
    for r in rows:
        mets = "  ".join(f"{_or_nan((r['metrics'] or {}).get(n)):>{len(n)}.4f}" for n in names)
        out.append(f"{r['epoch'] + 1:>5}  {r['phase']:<8}  {_or_nan(r['train_loss']):>10.4f}  "
                   f"{_or_nan(r['valid_loss']):>10.4f}  {mets}  {r['images_seen']:>6}  {r['seconds']:>7.1f}")
    return "\n".join(out)


def _train_cmd(args, settings: Settings) -> int:
    from sqlalchemy import select

    from . import db
    from .schema import model_versions

    config = config_from_args(args)
    model_id = train(settings, config, args.vocab_version)
    with db.get_engine(settings).connect() as conn:
        row = conn.execute(select(model_versions).where(model_versions.c.id == model_id)).mappings().one()
    print(epochs_table(settings, row["training_run_id"]))
    print(f"model version {model_id} (candidate), training run {row['training_run_id']}: "
          f"{(settings.data_dir / row['artifact_path']).parent}  sha256 {row['sha256'][:16]}…")
    print(f"next: instatag evaluate {model_id}, then instatag promote {model_id}")
    return 0


def add_cli(sub) -> None:
    presets = "; ".join(f"{name}: {c.arch} size {c.size}, {c.freeze_epochs}+{c.epochs} epochs, lr {c.lr}"
                        for name, c in PRESETS.items())
    p = sub.add_parser(
        "train",
        help="fine-tune a pretrained CNN on the newest vocabulary version (registers a candidate model)",
        description="Fine-tune a pretrained CNN with fastai on a vocabulary version's labelled images "
        "(the resized store): lr_find (with --lr auto), then fine_tune(epochs, lr, freeze_epochs). "
        "Records every epoch in training_epochs and registers the model files (safetensors + JSON) "
        f"as a candidate model version. Presets: {presets}. Explicit flags override the preset.",
    )
    p.add_argument("--preset", default="default", choices=list(PRESETS),
                   help="starting configuration (default: default)")
    p.add_argument("--arch", choices=archs.names(), help="network")
    p.add_argument("--size", type=int, help="input side in pixels")
    p.add_argument("--epochs", type=int, help="unfrozen epochs")
    p.add_argument("--freeze-epochs", type=int, help="epochs with the pretrained body frozen")
    p.add_argument("--lr", help="'auto' (lr_find) or a base learning rate")
    p.add_argument("--bs", type=int, help="batch size")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default: 0 on CPU, up to 8 on CUDA)")
    p.add_argument("--no-pretrained", action="store_true", help="start from random weights (no weights file needed)")
    p.add_argument("--vocab-version", type=int, help="vocabulary version to train on (default: the newest)")
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="any other TrainConfig field, e.g. --set label_smoothing=0.1 --set loss=focal (repeatable)")
    p.set_defaults(handler=_train_cmd)
