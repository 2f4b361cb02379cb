"""fastai's training schedule in plain PyTorch, on data held on the device (``TrainConfig.engine``).

On a GPU the study's schedule (resnet18 at 64 px, batch 64: 23 steps an epoch) is bound by kernel
launches and host synchronisations, not by arithmetic: fastai's loop reads the loss back to the host
after every batch (``AvgSmoothLoss`` detaches to the CPU), runs each callback in Python and launches
every kernel of the forward and backward pass one by one. This module runs the same schedule without
fastai:

- the same network (``archs.build_plain`` with fastai's head initialisation: ``kaiming_normal_`` for
  every non-BatchNorm layer of the head, biases zero), the same parameter groups (``archs`` split:
  resnet body[:6] | body[6:] | head, others body | head) and freezing (frozen groups keep their
  BatchNorm parameters trainable, fastai's ``train_bn``);
- the same optimiser (``torch.optim.AdamW``, betas 0.9/0.99, eps 1e-5, weight decay 0.01 on every
  parameter: what ``fitting``'s fastai ``OptimWrapper`` runs) with the state cleared at every freeze /
  unfreeze;
- the same schedules: ``lr_find`` (exponential from 1e-7 to 10 over ``lr_find_iters`` steps, stopped
  when the smoothed loss exceeds 4x its best, the valley suggestion on ``[iters//10 : -5]``), then
  ``fine_tune``'s two one-cycle fits (``combined_cos``; lr from lr/div to lr to lr/1e5, momentum
  0.95 -> 0.85 -> 0.95; frozen ``pct_start`` 0.99 and lr ``slice(base_lr)``, unfrozen 0.3, div 5,
  ``slice(base_lr/2/lr_mult, base_lr/2)``), positions counted as fastai's ``pct_train``;
- the same batches: shuffled without replacement, incomplete last batch dropped, validation at twice
  the batch size; the same inputs: the data of ``memdata.resident`` (the fastai engine's memory path
  holds the same), training batches made by ``imageprep.Preprocessing.train_batch`` (the contract's
  RandomResizedCrop over the whole image, fastai's flip, rotation with black fill, brightness and
  contrast, normalisation: the code the fastai engine's memory path runs), validation batches by
  ``Preprocessing.inputs`` (what the Predictor runs);
- the same records: per epoch fastai's smoothed training loss (beta 0.98, debiased), the validation
  loss, ``accuracy_multi`` and ``precision_at_1`` averaged over images.

What differs is how it runs: on CUDA the whole training step but the optimiser (gather, augmentation,
forward, loss, backward) is one CUDA graph replay, the optimiser is ``torch.optim.AdamW`` with its fused
kernel (foreach on the CPU), the validation pass of an epoch is one graph replay, every metric
accumulates on the device, and the host reads values once per epoch (and once per 10 ``lr_find``
steps, for its early stop). On the CPU the same loop runs eagerly (tests). Random draws differ from
fastai's (other generators, other order), so results agree in distribution, not bit for bit.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

#: fastai's one-cycle momentum (Adam's beta1): start, middle, end
MOMS = (0.95, 0.85, 0.95)
#: fastai's Recorder smooths the training loss with this beta (AvgSmoothLoss)
SMOOTH_BETA = 0.98
#: fastai's lr_find range
LR_FIND_START, LR_FIND_END = 1e-7, 10.0
#: torch's AdamW default weight decay, which fastai's OptimWrapper leaves in place when ``wd`` is None
DEFAULT_WD = 0.01
#: lr_find reads its losses back every this many steps (its early stop looks at them)
LR_FIND_CHUNK = 10
#: how each architecture runs on CUDA: (mixed precision: "bf16", fp16 where bf16 is missing, or "off":
#: float32 with TF32 matrix units; channels_last memory format), what measured fastest on an H200
#: (docs/training.md, Results): resnet18's 30 study epochs took 1.52 s in bf16 channels_last, 1.69-1.96 s
#: otherwise; efficientnet_lite0 in bf16 channels_last spent 11 s of its first epoch in cuDNN's preparation
#: of the depthwise convolutions (26.9 s for the default preset), 11.8 s in float32 NCHW; Lite1 and Lite2
#: have the same depthwise blocks and take Lite0's setting (not measured on a GPU yet)
CUDA_FORMATS = {f"efficientnet_lite{n}": ("off", False) for n in (0, 1, 2)}
CUDA_FORMAT_DEFAULT = ("bf16", True)
#: switches for benchmarks (bench/gpu_fit.py): cuDNN's autotuning of convolution algorithms (off: it cost
#: 12 s in the study's 12 s run), and overrides of ``CUDA_FORMATS`` (None: the architecture's)
CUDNN_BENCHMARK = False
AMP: str | None = None
CHANNELS_LAST: bool | None = None
#: CUDA graphs on CUDA (False: the same loop eagerly, for benchmarks and diagnosis)
GRAPHS = True


def cuda_format(arch: str) -> tuple[str, bool]:
    """(mixed precision, channels_last) for ``arch`` on CUDA: ``CUDA_FORMATS`` unless a switch says otherwise."""
    amp, channels_last = CUDA_FORMATS.get(arch, CUDA_FORMAT_DEFAULT)
    return (amp if AMP is None else AMP), (channels_last if CHANNELS_LAST is None else CHANNELS_LAST)


# --------------------------------------------------------------------------- schedules (fastai's)
def sched_cos(start, end, pos: float):
    """fastai's cosine annealing from ``start`` (pos 0) to ``end`` (pos 1)."""
    return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


def combined_cos(pct: float, start, middle, end) -> Callable[[float], object]:
    """fastai's ``combined_cos``: cosine from ``start`` to ``middle`` over the first ``pct`` of the
    positions, then from ``middle`` to ``end``. Works on floats and numpy arrays alike. The position
    within each part is computed in float32, as fastai's ``combine_scheds`` does (its bounds are a
    float32 tensor), so the values agree to float64 rounding."""
    import numpy as np

    p, one = np.float32(pct), np.float32(1)

    def f(pos: float):
        x = np.float32(pos)
        if x < p:
            return sched_cos(start, middle, float(x / p))
        return sched_cos(middle, end, float((x - p) / (one - p)))

    return f


def even_mults(start: float, stop: float, n: int) -> list[float]:
    """fastai's ``even_mults``: ``n`` values from ``start`` to ``stop``, evenly spaced in log scale."""
    if n == 1:
        return [stop]
    step = (stop / start) ** (1 / (n - 1))
    return [start * step ** i for i in range(n)]


def group_lrs(start: float | None, stop: float, n_groups: int) -> list[float]:
    """The learning rate of each parameter group for fastai's ``slice(start, stop)``: evenly spaced
    in log scale, or without ``start`` ``stop / 10`` for every group but the last (the head)."""
    if start:
        return even_mults(start, stop, n_groups)
    return [stop / 10] * (n_groups - 1) + [stop]


def positions(n_epoch: int, n_iter: int) -> Iterator[tuple[int, int, float]]:
    """(epoch, batch, position in [0, 1)) of each training step, the position as fastai's
    ``pct_train`` counts it (set to ``epoch / n_epoch`` at each epoch, then summed in steps)."""
    for epoch in range(n_epoch):
        pct = epoch / n_epoch
        for i in range(n_iter):
            yield epoch, i, pct
            pct += 1.0 / (n_iter * n_epoch)


@dataclass(frozen=True)
class Phase:
    """One ``fit_one_cycle`` of ``fine_tune``."""

    name: str  # frozen | unfrozen
    epochs: int
    lr_max: tuple[float, ...]  # per parameter group
    pct_start: float
    div: float
    div_final: float = 1e5

    def hypers(self, pos: float) -> tuple[list[float], float]:
        """(learning rate per group, momentum) at ``pos``."""
        lrs = [combined_cos(self.pct_start, lr / self.div, lr, lr / self.div_final)(pos) for lr in self.lr_max]
        return lrs, combined_cos(self.pct_start, *MOMS)(pos)


def fine_tune_phases(config, base_lr: float, n_groups: int) -> list[Phase]:
    """The fits ``fitting.fit`` runs for ``config``: fastai's ``fine_tune`` (frozen then unfrozen), or its
    frozen fit alone (``epochs`` 0), or its unfrozen fit alone (``freeze_epochs`` 0)."""
    frozen = Phase("frozen", config.freeze_epochs, tuple(group_lrs(None, base_lr, n_groups)), 0.99, 25.0)
    half = base_lr / 2
    unfrozen = Phase("unfrozen", config.epochs, tuple(group_lrs(half / config.lr_mult, half, n_groups)), 0.3, 5.0)
    return [p for p in (frozen, unfrozen) if p.epochs]


def lr_find_lrs(num_it: int) -> list[float]:
    """fastai's lr_find learning rates: exponential from 1e-7 (step 0) towards 10 (step ``num_it``)."""
    num_it = max(num_it, 6)
    return [LR_FIND_START * (LR_FIND_END / LR_FIND_START) ** (i / num_it) for i in range(num_it)]


def lr_find_stop(losses: Sequence[float]) -> int:
    """How many of ``losses`` (smoothed, one per step) fastai's LRFinder records: it stops after the
    first step whose loss exceeds 4x the best so far."""
    best = math.inf
    for i, loss in enumerate(losses):
        best = min(best, loss)
        if loss > 4 * best:
            return i + 1
    return len(losses)


def valley(lrs: Sequence[float], losses: Sequence[float]) -> tuple[float, int]:
    """fastai's ``valley`` suggestion: the start of the longest decreasing run of ``losses``, moved a
    half of it down the slope; (learning rate, index)."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(lrs[idx]), idx


def suggest_lr(lrs: Sequence[float], losses: Sequence[float], num_it: int) -> float | None:
    """fastai's ``lr_find`` suggestion: ``valley`` over the recorded curve without its first
    ``num_it // 10`` and last 5 points, cut at the first NaN; None when nothing is left."""
    lrs, losses = list(lrs[num_it // 10:len(lrs) - 5]), list(losses[num_it // 10:len(losses) - 5])
    for i, x in enumerate(losses):
        if x is None or math.isnan(x):
            lrs, losses = lrs[:i], losses[:i]
            break
    if not losses:
        return None
    return valley(lrs, losses)[0]


# --------------------------------------------------------------------------- network
def network(arch: str, n_out: int, config, settings, pretrained: bool):
    """fastai's ``create_vision_model`` network from ``archs.build_plain`` (same modules, same names, so
    its state dict is the one inference loads), with ImageNet weights in the body when ``pretrained``
    and fastai's head initialisation; with ``config.prior_bias`` the output biases of ``train``."""
    import torch
    from torch import nn

    from . import archs

    net = archs.build_plain(arch, n_out, output_bias=False, ps=config.ps)
    if pretrained:
        classifier = archs.OfflineArch(arch, settings)(pretrained=True)
        body = nn.Sequential(*list(classifier.children())[:-2])
        net[0].load_state_dict(body.state_dict(), strict=True)
    for m in net[1].modules():  # fastai's apply_init(head, kaiming_normal_): all but BatchNorm layers
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            continue
        if isinstance(getattr(m, "weight", None), torch.Tensor):
            nn.init.kaiming_normal_(m.weight)
        if isinstance(getattr(m, "bias", None), torch.Tensor):
            with torch.no_grad():
                m.bias.zero_()
    return net


def param_groups(net, arch: str) -> list[list]:
    """fastai's split of ``net`` into parameter groups: resnet body[:6] | body[6:] | head, else body | head."""
    from . import archs

    _, split = archs.ARCHS[archs.check(arch)]
    if split == "resnet":
        parts = [net[0][:6], net[0][6:], net[1:]]
    else:
        parts = [net[0], net[1:]]
    return [[p for p in part.parameters()] for part in parts]


def set_frozen(net, groups: list[list], frozen: bool) -> None:
    """fastai's ``freeze`` (all groups but the last stop learning, their BatchNorm parameters excepted)
    or ``unfreeze``."""
    from torch import nn

    norm = {id(p) for m in net.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm))
            for p in m.parameters(recurse=False)}
    for g, params in enumerate(groups):
        for p in params:
            p.requires_grad_(not frozen or g == len(groups) - 1 or id(p) in norm)


# --------------------------------------------------------------------------- optimiser
def optimizer(groups: list[list], wd: float | None, cuda: bool):
    """``torch.optim.AdamW`` over the parameter groups, as fastai's ``OptimWrapper`` runs it in ``fitting``
    (betas 0.9/0.99, eps 1e-5, weight decay ``wd`` or torch's 0.01 on every parameter): the fused kernel on
    CUDA, foreach on the CPU. The schedule sets ``lr`` and ``betas`` per group before every step; parameters
    without a gradient (frozen) are skipped."""
    import torch

    kind = {"fused": True} if cuda else {"foreach": True}
    return torch.optim.AdamW([{"params": g} for g in groups], lr=1e-3, betas=(0.9, 0.99), eps=1e-5,
                             weight_decay=DEFAULT_WD if wd is None else wd, **kind)


# --------------------------------------------------------------------------- the loop
@dataclass
class EpochStats:
    """An epoch as the loop measured it (``fitting.EpochRecord`` without the numbering)."""

    phase: str
    train_loss: float | None
    valid_loss: float | None
    metrics: dict
    images: int
    seconds: float


class Resident:
    """Training and validation tensors on one device, as ``memdata.resident`` returns them: ``x_train`` uint8
    canvases ``[n, 3, S, S]`` with ``sizes`` int64 ``[n, 2]``, ``y_train`` float ``[n, n_labels]``,
    ``x_valid`` uint8 ``[m, 3, size, size]``, ``y_valid`` float ``[m, n_labels]``."""

    def __init__(self, x_train, sizes, y_train, x_valid, y_valid):
        self.x_train, self.sizes, self.y_train = x_train, sizes, y_train
        self.x_valid, self.y_valid = x_valid, y_valid


class Loop:
    """The network, its optimiser and the data, with one training step and one validation pass, replayed
    as CUDA graphs when ``graphs`` (CUDA only), else run eagerly. ``prep``: the contract
    (``imageprep.Preprocessing``) that makes the training and validation batches."""

    def __init__(self, net, groups: list[list], data: Resident, prep, loss_fn, config,
                 device: str, graphs: bool | None = None):
        import torch

        self.net, self.groups, self.data, self.prep, self.loss_fn = net, groups, data, prep, loss_fn
        self.config, self.device = config, device
        self.cuda = device == "cuda"
        self.graphs = self.cuda and (GRAPHS if graphs is None else graphs)
        self.bs, self.valid_bs = config.bs, 2 * config.bs
        self.n_train = data.x_train.size(0)
        self.n_iter = self.n_train // self.bs
        amp, channels_last = cuda_format(config.arch)
        self.amp = None
        if self.cuda and amp != "off":
            self.amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.channels_last = self.cuda and channels_last
        self.opt = optimizer(groups, config.wd, self.cuda)
        self.idx = torch.zeros(self.bs, dtype=torch.long, device=device)
        self.loss = torch.zeros((), device=device)
        self.smooth = torch.zeros((), device=device)
        self.valid_sums = torch.zeros(4, device=device)  # loss*bs, accuracy*bs, precision@1*bs, images
        self._train_graphs: dict[tuple, object] = {}
        self._valid_graph = None
        self._grads_of: dict[tuple, dict] = {}
        self._active: tuple | None = None

    # ---- the step and the validation pass, as plain code
    def train_inputs(self):
        """The network's input for the images ``self.idx``: ``Preprocessing.train_batch`` of their canvases
        (fresh crop and augmentation draws), float32 ``[bs, 3, size, size]`` on the device."""
        return self.prep.train_batch(self.data.x_train[self.idx], self.data.sizes[self.idx])

    def valid_inputs(self, start: int):
        """The network's input for validation images ``start:start + valid_bs``: ``Preprocessing.inputs``,
        what the Predictor runs on the same evaluation crops."""
        return self.prep.inputs(self.data.x_valid[start:start + self.valid_bs])

    def _forward_loss(self):
        import torch

        x = self.train_inputs()
        y = self.data.y_train[self.idx]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device, dtype=self.amp, enabled=self.amp is not None):
            out = self.net(x)
        loss = self.loss_fn(out.float(), y)
        return loss

    def _train_body(self):
        loss = self._forward_loss()
        loss.backward()
        self.loss.copy_(loss.detach())

    def _valid_body(self):
        import torch

        self.valid_sums.zero_()
        x_all, y_all = self.data.x_valid, self.data.y_valid
        with torch.no_grad():
            for i in range(0, x_all.size(0), self.valid_bs):
                x = self.valid_inputs(i)
                y = y_all[i:i + self.valid_bs]
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(self.device, dtype=self.amp, enabled=self.amp is not None):
                    out = self.net(x)
                n = x.size(0)
                loss = self.loss_fn(out.float(), y)
                acc = ((out.float().sigmoid() > 0.5) == y.bool()).float().mean()
                p1 = y.gather(1, out.argmax(dim=1, keepdim=True)).float().mean()
                self.valid_sums[:3] += torch.stack([loss, acc, p1]) * n
                self.valid_sums[3] += n

    # ---- graphs
    def _key(self) -> tuple:
        return tuple(p.requires_grad for g in self.groups for p in g)

    def _activate(self, key: tuple) -> None:
        """Point every parameter's .grad at the buffers the graph for ``key`` writes."""
        if self._active == key:
            return
        grads = self._grads_of.get(key, {})
        for g in self.groups:
            for p in g:
                p.grad = grads.get(p)
        self._active = key

    def _capture_train(self, key: tuple):
        import torch

        saved = {k: v.detach().clone() for k, v in self.net.state_dict().items()}  # warm-up steps move BN stats
        for g in self.groups:
            for p in g:
                p.grad = None
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                for g in self.groups:
                    for p in g:
                        p.grad = None
                self._train_body()
        torch.cuda.current_stream().wait_stream(side)
        for g in self.groups:
            for p in g:
                p.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._train_body()
        with torch.no_grad():
            for k, v in self.net.state_dict().items():
                v.copy_(saved[k])
        self._grads_of[key] = {p: p.grad for g in self.groups for p in g if p.grad is not None}
        self._active = key
        return graph

    def _capture_valid(self):
        import torch

        self.net.eval()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._valid_body()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._valid_body()
        return graph

    # ---- public
    def step(self, idx, lrs: Sequence[float], mom: float) -> None:
        """One training step on the images ``idx`` (a device tensor of ``bs`` indices) with these
        hyper-parameters; the loss stays on the device (``self.loss``), smoothed into ``self.smooth``."""
        self.idx.copy_(idx, non_blocking=True)
        if self.graphs:
            key = self._key()
            graph = self._train_graphs.get(key)
            if graph is None:
                graph = self._train_graphs[key] = self._capture_train(key)
            self._activate(key)
            graph.replay()
        else:
            self.opt.zero_grad()
            self._train_body()
        for pg, lr in zip(self.opt.param_groups, lrs, strict=True):
            pg["lr"], pg["betas"] = lr, (mom, pg["betas"][1])
        self.opt.step()
        self.smooth.lerp_(self.loss, 1 - SMOOTH_BETA)

    def validate(self) -> None:
        """One pass over the validation images into ``self.valid_sums`` (on the device)."""
        self.net.eval()
        if self.graphs:
            if self._valid_graph is None:
                self._valid_graph = self._capture_valid()
            self._valid_graph.replay()
        else:
            self._valid_body()
        self.net.train()

    def clear_state(self) -> None:
        """fastai's ``opt.clear_state()`` at freeze and unfreeze: Adam's moments start again."""
        self.opt.state.clear()

    def permutation(self):
        import torch

        return torch.randperm(self.n_train, device=self.device)


def seconds_between(start, end) -> float:
    """Seconds between two ``marker`` points (waits for the second one on CUDA)."""
    if isinstance(start, float):
        return end - start
    end.synchronize()
    return start.elapsed_time(end) / 1000


def marker(cuda: bool):
    """A point in time on the device's stream (a CUDA event) or the host's clock."""
    if not cuda:
        return time.perf_counter()
    import torch

    ev = torch.cuda.Event(enable_timing=True)
    ev.record()
    return ev


def to_host(t, cuda: bool):
    """A copy of ``t`` on the host, enqueued behind the work already on the stream; ``from_host`` waits
    for that copy alone (not for the work enqueued after it), so the device never runs dry."""
    import torch

    if not cuda:
        return t.detach().clone(), None
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    ev = torch.cuda.Event()
    ev.record()
    return host, ev


def from_host(handle):
    host, ev = handle
    if ev is not None:
        ev.synchronize()
    return host


def lr_find(loop: Loop, num_it: int) -> dict:
    """fastai's ``lr_find`` on ``loop`` (whose weights and optimiser state it restores afterwards): the
    curve as ``training_runs.lr_find`` stores it (``suggested`` None when no valley was found). The smoothed
    losses are read in chunks of ``LR_FIND_CHUNK`` steps, one chunk behind the device; steps run past the
    divergence stop are dropped (their weights are restored anyway)."""
    import numpy as np
    import torch

    saved = {k: v.detach().clone() for k, v in loop.net.state_dict().items()}
    lrs_all = lr_find_lrs(num_it)
    num_it = len(lrs_all)
    raw = torch.zeros(num_it, device=loop.device)
    loop.clear_state()
    loop.smooth.zero_()
    loop.net.train()
    perm, done, stop, handles = None, 0, None, []
    debias = (1 - SMOOTH_BETA ** np.arange(1, num_it + 1, dtype=np.float64)).astype(np.float32)

    def check(handle) -> int | None:
        vals = from_host(handle).numpy()
        smoothed = (vals / debias[:len(vals)]).astype(np.float32)
        n = lr_find_stop([float(x) for x in smoothed])
        return n if n < len(vals) else None

    while done < num_it and stop is None:
        for i in range(done, min(done + LR_FIND_CHUNK, num_it)):
            b = i % loop.n_iter
            if b == 0:
                perm = loop.permutation()
            loop.step(perm[b * loop.bs:(b + 1) * loop.bs], [lrs_all[i]] * len(loop.groups), 0.9)
            raw[i].copy_(loop.smooth)
        done = min(done + LR_FIND_CHUNK, num_it)
        handles.append(to_host(raw[:done], loop.cuda))
        if len(handles) > 1:  # the previous chunk: its copy is done or nearly, this one runs meanwhile
            stop = check(handles[-2])
    if stop is None:
        stop = check(handles[-1]) or done
    vals = from_host(handles[-1]).numpy()[:stop]
    smoothed = (vals / debias[:stop]).astype(np.float32)
    losses = [None if math.isnan(float(x)) else float(x) for x in smoothed]
    lrs = lrs_all[:stop]
    with torch.no_grad():
        for k, v in loop.net.state_dict().items():
            v.copy_(saved[k])
    loop.clear_state()
    lr = suggest_lr(lrs, [math.nan if x is None else x for x in losses], num_it)
    return {"lrs": lrs, "losses": losses, "suggested": lr, "method": "valley", "num_it": num_it}


def run_phases(loop: Loop, phases: Sequence[Phase], on_epoch: Callable[[EpochStats], None]) -> None:
    """The one-cycle fits of ``phases`` on ``loop``; ``on_epoch`` gets each epoch's record, one epoch late
    on CUDA (its numbers are read while the next epoch runs), the last one at the end."""
    import torch

    pending: list = []

    def flush(upto: int) -> None:
        while len(pending) > upto:
            phase, start, end, handle, count, images = pending.pop(0)
            v = from_host(handle).tolist()  # smoothed loss, then validation sums (loss, accuracy, precision@1, n)
            seconds = seconds_between(start, end)
            n_valid = v[4] or math.nan
            on_epoch(EpochStats(phase, _num(v[0] / (1 - SMOOTH_BETA ** count)), _num(v[1] / n_valid),
                                {"accuracy_multi": _num(v[2] / n_valid), "precision_at_1": _num(v[3] / n_valid)},
                                images, seconds))

    images = 0
    for phase in phases:
        set_frozen(loop.net, loop.groups, phase.name == "frozen")
        loop.clear_state()
        loop.smooth.zero_()
        count, perm, start = 0, None, None
        for _epoch, b, pos in positions(phase.epochs, loop.n_iter):
            if b == 0:
                loop.net.train()
                start = marker(loop.cuda)
                perm = loop.permutation()
            lrs, mom = phase.hypers(pos)
            loop.step(perm[b * loop.bs:(b + 1) * loop.bs], lrs, mom)
            count += 1
            images += loop.bs
            if b == loop.n_iter - 1:
                loop.validate()
                handle = to_host(torch.cat([loop.smooth.view(1), loop.valid_sums]), loop.cuda)
                pending.append((phase.name, start, marker(loop.cuda), handle, count, images))
                flush(1 if loop.cuda else 0)
    flush(0)


def _num(x) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


# --------------------------------------------------------------------------- fitting.fit's fast path
def fit_resident(items: Sequence, labels: Sequence[str], config, settings, device: str, valid_idx: Sequence[int],
                 loss: Callable, prior, record: Callable, on_lr_find: Callable[[dict], None] | None, prefetch=None):
    """``fitting.fit`` with ``engine`` fast: the data on ``device`` (``memdata.resident``; ``valid_idx``: the
    validation items' positions), lr_find when ``config.lr`` is "auto", then the fine_tune phases, minimising
    ``loss(logits, targets)``; ``prior``: the output bias (log-odds per label) or None. Every epoch goes to
    ``record(number, EpochStats)``, numbered from 0 across both phases. Returns (state dict on the CPU, base
    lr, lr_find curve or None, n_train, n_valid). ``fitting.fit`` passes what it owns (split, loss, prior),
    so this module never imports ``fitting``."""
    import torch

    from . import archs, imageprep, memdata

    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    cuda = device == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = CUDNN_BENCHMARK and not config.deterministic
        torch.backends.cudnn.deterministic = config.deterministic
        if cuda_format(config.arch)[0] == "off":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    data = Resident(*memdata.resident(items, labels, config, device, valid_idx, settings.resized_side, prefetch))
    net = network(config.arch, len(labels), config, settings, config.pretrained)
    if prior is not None:
        archs.add_output_bias(net, prior)
    net = net.to(device, memory_format=torch.channels_last) if cuda and cuda_format(config.arch)[1] else net.to(device)
    groups = param_groups(net, config.arch)
    loop = Loop(net, groups, data, imageprep.Preprocessing.for_config(config), loss, config, device)
    set_frozen(net, groups, config.pretrained)  # vision_learner freezes a pretrained learner before lr_find
    log.info("fast loop on %s: network and data ready in %.1fs (%s, %d parameter groups, CUDA graphs %s)",
             device, time.perf_counter() - t0, config.arch, len(groups), "on" if loop.graphs else "off")
    if loop.graphs:  # each graph capture runs gc.collect(): the objects alive now (modules, network) stay out of it
        gc.freeze()
    try:
        return _fit_loop(loop, groups, config, record, on_lr_find, data.x_train.size(0), data.x_valid.size(0))
    finally:
        if loop.graphs:
            gc.unfreeze()


def _fit_loop(loop: Loop, groups, config, record: Callable, on_lr_find, n_train: int, n_valid: int):
    from .errors import UserError

    net = loop.net
    curve = None
    if config.lr == "auto":
        t1 = time.perf_counter()
        curve = lr_find(loop, config.lr_find_iters)
        lr = curve["suggested"]
        if on_lr_find:
            on_lr_find(curve)
        if lr is None or not 1e-7 < lr < 10:
            raise UserError(f"lr_find gave no usable learning rate ({lr}); pass --lr explicitly")
        log.info("lr_find: valley at %.2e (%d steps in %.1fs)", lr, len(curve["lrs"]), time.perf_counter() - t1)
        base_lr = lr
    else:
        base_lr = float(config.lr)
    phases = fine_tune_phases(config, base_lr, len(groups))
    total = sum(p.epochs for p in phases)
    numbered = iter(range(total))

    def on_epoch(e: EpochStats) -> None:
        number = next(numbered)
        nan = float("nan")
        mets = " ".join(f"{k} {v:.4f}" for k, v in e.metrics.items() if v is not None)
        log.info("epoch %d/%d %s: train_loss %.4f valid_loss %.4f %s (%d images, %.2fs)", number + 1, total,
                 e.phase, nan if e.train_loss is None else e.train_loss,
                 nan if e.valid_loss is None else e.valid_loss, mets, e.images, e.seconds)
        record(number, e)

    run_phases(loop, phases, on_epoch)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return state, base_lr, curve, n_train, n_valid
