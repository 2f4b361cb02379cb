"""The fastai glue of training, independent of the database: ``fit(items, labels, config)``.

A fastai ``DataBlock(ImageBlock, MultiCategoryBlock)`` over the resized image store (never the
originals) or the same data held on the device (``instatag.memdata``), both preprocessed and augmented
by the contract of ``instatag.imageprep``; ``vision_learner`` with offline pretrained weights
(``instatag.archs``), optional ``lr_find``, then ``fine_tune``. Every epoch of both phases is reported to
a sink (fastai's own Recorder starts afresh at each fit); ``batch_log`` writes progress lines inside
epochs for logs without a terminal. ``instatag.train`` registers the result in the database.

On CUDA with the data held on the device, ``fit`` hands the same schedule to ``instatag.fastfit``
(plain PyTorch, CUDA graphs; ``TrainConfig.engine``, resolved by ``engine``); the rest of this module is
the fastai engine.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import archs, imageprep, progress
from .errors import UserError
from .labels import VALID_PCT
from .settings import Settings
from .trainconfig import TrainConfig

log = logging.getLogger(__name__)


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
    return plain_loss(config)


def plain_loss(config: TrainConfig):
    """``loss(logits, targets)``, both ``[bs, n_labels]``, a mean over images and labels in float32: the
    binary cross-entropy (what fastai's BCEWithLogitsLossFlat computes) with ``label_smoothing`` and
    ``loss="focal"`` applied, or ``loss="asl"``: the asymmetric loss of Ridnik et al., "Asymmetric Loss
    for Multi-Label Classification" (ICCV 2021), with gamma+ = 0: a positive costs -log p, a negative
    -p_m ** gamma- * log(1 - p_m) with p_m = max(p - clip, 0) (``asl_gamma_neg``, ``asl_clip``)."""
    import torch
    import torch.nn.functional as F

    eps, gamma, focal = config.label_smoothing, config.focal_gamma, config.loss == "focal"
    asl, gamma_neg, clip = config.loss == "asl", config.asl_gamma_neg, config.asl_clip

    def loss(pred, targ):
        pred, t = pred.float(), targ.float()
        if eps:
            t = t * (1 - eps) + eps / 2
        if asl:
            p = torch.sigmoid(pred)
            p_m = (p - clip).clamp(min=0)
            neg = -p_m.pow(gamma_neg) * torch.log((1 - p_m).clamp(min=1e-8))
            return (t * F.softplus(-pred) + (1 - t) * neg).mean()
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


def valid_indices(items: Sequence, config: TrainConfig, valid_pct: float = VALID_PCT) -> list[int]:
    """Positions of the validation items (``labels.is_valid`` at ``valid_pct``, the vocabulary version's: by
    content hash); a UserError when either split is too small for a batch."""
    from .labels import is_valid

    valid_idx = [i for i, it in enumerate(items) if is_valid(it.sha256, valid_pct)]
    n_valid, n_train = len(valid_idx), len(items) - len(valid_idx)
    if n_valid == 0 or n_train < config.bs:
        raise UserError(f"too few labelled images to train: {n_train} for training (batch size {config.bs}) and "
                        f"{n_valid} for validation; ingest more posts or lower --bs")
    return valid_idx


def engine(config: TrainConfig, device: str, n_train: int, n_valid: int, resized_side: int) -> str:
    """The training loop ``config.engine`` resolves to on ``device``: "fast" (instatag.fastfit) or "fastai";
    auto: fast on CUDA where the data path is memory."""
    if config.engine != "auto":
        return config.engine
    memory = data_path(config, device, n_train, n_valid, resized_side) == "memory"
    return "fast" if device == "cuda" and memory else "fastai"


def dataloaders(items: Sequence, labels: Sequence[str], config: TrainConfig, device: str, resized_side: int = 160,
                valid_pct: float = VALID_PCT):
    """fastai DataLoaders over ``items`` (labels.Item), split by content hash: ``memdata`` or a DataBlock, both
    preprocessed and augmented by ``imageprep.Preprocessing.for_config(config)`` (validation batches: the
    inference tensors; training crops: one distribution on both paths), split by ``labels.is_valid`` at
    ``valid_pct`` (the vocabulary version's). ``resized_side``: the longest side of the store's resized
    copies (Settings.resized_side). UserError when too few images for a batch."""
    from fastai.data.block import DataBlock
    from fastai.data.transforms import IndexSplitter
    from fastai.vision.data import ImageBlock, MultiCategoryBlock

    from . import memdata

    valid_idx = valid_indices(items, config, valid_pct)
    n_valid, n_train = len(valid_idx), len(items) - len(valid_idx)
    if data_path(config, device, n_train, n_valid, resized_side) == "memory":
        return memdata.dataloaders(items, labels, config, device, valid_idx, resized_side)
    prep = imageprep.Preprocessing.for_config(config)
    block = DataBlock(
        blocks=(ImageBlock, MultiCategoryBlock(vocab=list(labels))),
        get_x=_path_of,
        get_y=_labels_of,
        splitter=IndexSplitter(valid_idx),
        item_tfms=prep.fastai_item_tfms(),
        batch_tfms=prep.fastai_batch_tfms(device),
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
        on_lr_find: Callable[[dict], None] | None = None, counts: dict | None = None, prefetch=None,
        valid_pct: float = VALID_PCT) -> FitResult:
    """Train on ``items`` (labels.Item: image_id, sha256, resized_path, labels) for ``labels`` (output order),
    through the engine ``engine`` resolves to. ``counts``: training frequency per label, for the ranking
    (default: counted over ``items``); ``prefetch``: a ``memdata.Prefetch`` of these items (the fast engine
    uses it); ``valid_pct``: the validation share of the items' vocabulary version (``LabelPipeline.valid_pct``)."""
    import tempfile

    from .inference import resolve_device

    config.validate()
    settings = settings or Settings()
    device = resolve_device(settings.device)
    started = time.perf_counter()
    records: list[EpochRecord] = []

    def record(rec: EpochRecord) -> None:
        records.append(rec)
        if sink:
            sink(rec)

    valid_idx = valid_indices(items, config, valid_pct)
    n_valid = len(valid_idx)
    if engine(config, device, len(items) - n_valid, n_valid, settings.resized_side) == "fast":
        from . import fastfit

        def record_fast(number: int, e) -> None:  # e: fastfit.EpochStats
            record(EpochRecord(number, e.phase, e.train_loss, e.valid_loss, e.metrics, e.images, e.seconds))

        prior = _prior_log_odds(items, labels, valid_pct) if config.prior_bias else None
        state, base_lr, curve, n_train, n_valid = fastfit.fit_resident(
            items, labels, config, settings, device, valid_idx, plain_loss(config), prior, record_fast, on_lr_find,
            prefetch)
        meta = _meta(items, labels, config, base_lr, n_train, n_valid, "memory", counts)
        return FitResult(state, meta, curve, records, device, time.perf_counter() - started)
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
    n_train, n_valid = len(learn.dls.train_ds), len(learn.dls.valid_ds)
    meta = _meta(items, labels, config, base_lr, n_train, n_valid,
                 data_path(config, device, n_train, n_valid, settings.resized_side), counts)
    return FitResult(state, meta, curve, records, device, time.perf_counter() - started)


def _meta(items: Sequence, labels: Sequence[str], config: TrainConfig, base_lr: float, n_train: int, n_valid: int,
          path: str, counts: dict | None) -> dict:
    """model.json's fields a fit decides (modelfile.save adds the hash and the libraries); ``path``: the data
    path it trained on."""
    from collections import Counter

    from .metrics import frequency_order

    prep = imageprep.Preprocessing.for_config(config)
    counts = counts or Counter(label for it in items for label in it.labels)
    return {
        "format": 1, "arch": config.arch, "size": prep.size, "mean": list(prep.mean), "std": list(prep.std),
        "n_out": len(labels), "labels": list(labels),
        "ranking": config.ranking, "flip_tta": config.flip_tta, "output_bias": config.prior_bias,
        "frequency_order": [labels[j] for j in frequency_order(labels, [counts.get(label, 0) for label in labels])],
        "params": config.to_dict(), "base_lr": base_lr, "pretrained": config.pretrained,
        "n_train": n_train, "n_valid": n_valid, "data_path": path,
        "preprocessing": prep.to_meta(),
    }
