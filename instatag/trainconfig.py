"""What decides a training run: ``TrainConfig``, the named presets, and the ``instatag train`` flags that
make one (``add_arguments``, ``config_from_args``). No heavy imports: the DAGs' params
(``instatag.params``) and ``instatag --help`` read it. docs/training.md explains the fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from . import archs, ranking
from .errors import UserError


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
    #: "bce" (fastai's BCEWithLogitsLossFlat), "focal" (sigmoid focal loss, ``focal_gamma``) or "asl"
    #: (asymmetric loss, Ridnik et al. 2021: negatives' probabilities shifted down by ``asl_clip`` and
    #: their loss weighted by p ** ``asl_gamma_neg``, positives as in BCE; made for the many missing tags
    #: of noisy multi-label data)
    loss: str = "bce"
    focal_gamma: float = 2.0
    asl_gamma_neg: float = 4.0
    asl_clip: float = 0.05
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
    #: the training loop: "fastai" (Learner, callbacks); "fast": the same schedule in plain PyTorch on data
    #: held on the device, CUDA graphs on a GPU (instatag.fastfit); "auto": fast on CUDA with the memory data
    #: path, fastai otherwise
    engine: str = "auto"
    #: the preset this config came from, for the record
    preset: str = ""

    def validate(self) -> TrainConfig:
        self._check_types()
        archs.check(self.arch)
        ranking.check(self.ranking)
        if (isinstance(self.lr, bool) or not isinstance(self.lr, (str, int, float))
                or (isinstance(self.lr, str) and self.lr != "auto")):
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
                  (self.loss in ("bce", "focal", "asl"), "loss must be bce, focal or asl"),
                  (self.asl_gamma_neg >= 0, f"asl_gamma_neg must be 0 or more, not {self.asl_gamma_neg}"),
                  (0 <= self.asl_clip < 1, f"asl_clip must be in [0, 1), not {self.asl_clip}"),
                  (self.data_path in ("auto", "files", "memory"), "data_path must be auto, files or memory"),
                  (self.engine in ("auto", "fastai", "fast"), "engine must be auto, fastai or fast"),
                  (self.engine != "fast" or self.data_path != "files", "engine fast needs the memory data path"),
                  (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
                  (self.lr_find_iters >= 10, "lr_find_iters must be at least 10"),
                  (self.num_workers is None or self.num_workers >= 0, "num_workers must be 0 or more")]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)
        return self

    def _check_types(self) -> None:
        """Each field holds what its annotation says (``--set`` and the DAG's params pass JSON values):
        finite numbers (whole ones for int fields; not true/false), true/false for bool fields."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            if value is None and kind.endswith("| None"):
                continue
            base = kind.removesuffix(" | None")
            if base in ("int", "float"):
                number = isinstance(value, int) if base == "int" else isinstance(value, (int, float))
                if isinstance(value, bool) or not number or not math.isfinite(value):
                    what = "a whole number" if base == "int" else "a number"
                    raise UserError(f"{f.name} must be {what}, not {value!r}")
            elif base == "bool" and not isinstance(value, bool):
                raise UserError(f"{f.name} must be true or false, not {value!r}")

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
    # measured best on food10 within 15 minutes of a 2-core CPU (README, Benchmarks; docs/training.md,
    # Results): EfficientNet-Lite1, whose ImageNet weights ship with a pip package, at 192 px (Lite0 at
    # 128 px, the default until issue #24: mAP 0.499 against 0.529 over two seeds), bs 16 (steps matter in
    # few epochs), lr 1e-2 (above lr_find's valley), the body at lr/3 when unfrozen (fastai's lr/100 left
    # it underfit), output biases from the label frequencies
    "default": TrainConfig(arch="efficientnet_lite1", size=192, epochs=7, bs=16, lr=0.01, lr_mult=3.0,
                           prior_bias=True, preset="default"),
}


def config_from(preset: str = "default", **overrides) -> TrainConfig:
    """A preset with some fields replaced (None values are ignored), validated."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[preset].replace(**{k: v for k, v in overrides.items() if v is not None}).validate()


# --------------------------------------------------------------------------- CLI
def add_arguments(p) -> None:
    """The flags of ``instatag train`` that make its TrainConfig (read back by ``config_from_args``)."""
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
    p.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="any other TrainConfig field, e.g. --set label_smoothing=0.1 --set loss=asl (repeatable)")


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
