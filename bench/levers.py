"""Quality levers measured cheaply: a head trained on cached frozen features, as a proxy for fine-tuning.

A full training on 2 CPU cores takes 5–15 minutes and one seed moves mAP by about 0.01–0.02 on food10's
360 validation images, too slow to try every lever of issue #24 that way. Here each photo's frozen
backbone features are computed once (``instatag.features``: the training body cut where fastai cuts it,
average-pooled, the inference crop; cached in the data dir), and fastai's head (BatchNorm, dropout,
Linear 512, ReLU, BatchNorm, dropout, Linear; output biases at the label log-odds) is trained on them
with AdamW and a one-cycle schedule, for each lever and seed, in seconds:

- ``loss``: ``bce``, ``asl`` (asymmetric loss), label smoothing (``instatag.fitting.plain_loss``, the
  training code's own losses);
- ``sampling``: ``uniform`` or ``sqrt`` (Mahajan et al. 2018, "Exploring the Limits of Weakly Supervised
  Pretraining": a label drawn with probability ∝ √frequency, then one of its images, i.e. an image
  weighted by the sum over its labels of 1/√frequency);
- the backbone and input size (``--backbone efficientnet_lite1:224``).

What wins here is only a candidate: bench/quality.py's full trainings decide (docs/training.md, Results).

  python bench/levers.py --data-dir /tmp/instatag-bench-quality --vocab-version 1
  python bench/levers.py --backbone efficientnet_lite0:128 --backbone efficientnet_lite2:224 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

#: name -> (TrainConfig overrides of the loss, sampling)
LEVERS = {
    "bce": ({}, "uniform"),
    "asl": ({"loss": "asl"}, "uniform"),
    "label_smoothing_0.1": ({"label_smoothing": 0.1}, "uniform"),
    "bce+sqrt": ({}, "sqrt"),
    "asl+sqrt": ({"loss": "asl"}, "sqrt"),
}


def sqrt_weights(y: np.ndarray) -> np.ndarray:
    """Square-root frequency resampling (Mahajan et al. 2018): per image, the sum over its labels of
    1/√(label frequency); images without labels get the mean weight. Normalised to sum 1."""
    freq = np.maximum(y.sum(axis=0), 1).astype(np.float64)
    w = (y / np.sqrt(freq)).sum(axis=1)
    w[w == 0] = w[w > 0].mean() if (w > 0).any() else 1.0
    return w / w.sum()


def train_head(x_train, y_train, x_valid, lever: str, seed: int, epochs: int = 40, lr: float = 3e-3,
               bs: int = 64) -> np.ndarray:
    """Fit fastai's head on features ``[n, d]`` with the lever's loss and sampling; probabilities of
    ``x_valid`` ``[m, n_labels]``."""
    import torch
    from torch import nn

    from instatag import archs, fitting
    from instatag.trainconfig import TrainConfig

    overrides, sampling = LEVERS[lever]
    loss_fn = fitting.plain_loss(TrainConfig(**overrides).validate())
    torch.manual_seed(seed)
    x, y = torch.tensor(x_train, dtype=torch.float32), torch.tensor(y_train, dtype=torch.float32)
    d, n_out = x.shape[1], y.shape[1]
    head = nn.Sequential(*archs.head_layers(d, n_out, ps=0.5, output_bias=True))
    prior = y.mean(0).clamp(1e-3, 1 - 1e-3)
    with torch.no_grad():
        head[-1].bias.copy_(torch.log(prior / (1 - prior)))
    steps = epochs * max(1, len(x) // bs)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-5, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.25)
    g = torch.Generator().manual_seed(seed)
    weights = torch.tensor(sqrt_weights(y_train)) if sampling == "sqrt" else None
    head.train()
    for _ in range(steps):
        idx = (torch.multinomial(weights, bs, replacement=True, generator=g) if weights is not None
               else torch.randint(0, len(x), (bs,), generator=g))
        loss = loss_fn(head(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    head.eval()
    with torch.no_grad():
        return torch.sigmoid(head(torch.tensor(x_valid, dtype=torch.float32))).numpy()


def measure(y_valid, probs, labels, counts) -> dict:
    from instatag import metrics, ranking

    order = metrics.frequency_order(labels, counts)
    aps = [metrics.average_precision(y_valid[:, j], probs[:, j]) for j in range(len(labels))]
    out = {"map": float(np.mean([a for a in aps if a is not None]))}
    for name in ranking.RANKINGS:
        scores = ranking.rank_scores(probs, name, order)
        for k in metrics.KS:
            out[f"{name} dominant_recall@{k}"] = metrics.dominant_recall_at_k(y_valid, scores, labels, counts, k)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/instatag-bench-quality"))
    parser.add_argument("--vocab-version", type=int, help="default: ingest food10 and build one (bench/quality.py)")
    parser.add_argument("--backbone", action="append", metavar="ARCH:SIZE",
                        help="default: efficientnet_lite0:128 and efficientnet_lite1:224")
    parser.add_argument("--lever", action="append", choices=list(LEVERS), help="default: all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    backbones = []
    for spec in args.backbone or ["efficientnet_lite0:128", "efficientnet_lite1:224"]:
        arch, _, size = spec.partition(":")
        if not size.isdigit():
            parser.error(f"--backbone takes ARCH:SIZE (e.g. efficientnet_lite1:224), not {spec!r}")
        backbones.append((spec, arch, int(size)))
    import torch
    from machine import machine_info
    from quality import FOOD10, prepare

    from instatag import features
    from instatag.labels import LabelPipeline, is_valid
    from instatag.settings import load_settings

    torch.set_num_threads(2)
    settings = load_settings(data_dir=args.data_dir)
    vocab_id = args.vocab_version or prepare(settings, FOOD10)
    lp = LabelPipeline.for_version(settings, vocab_id)
    items = lp.items(settings)
    index = {label: j for j, label in enumerate(lp.labels)}
    y = np.zeros((len(items), len(lp.labels)), dtype=np.float32)
    for i, item in enumerate(items):
        y[i, [index[label] for label in item.labels]] = 1
    valid = np.array([is_valid(item.sha256, lp.valid_pct) for item in items])
    counts = y[~valid].sum(axis=0)
    images = [features.Image(item.sha256, settings.data_dir.absolute() / item.resized_path) for item in items]
    rows = []
    for spec, arch, size in backbones:
        t0 = time.monotonic()
        x = features.image_features(settings, images, arch, size)
        feat_s = time.monotonic() - t0
        for lever in args.lever or list(LEVERS):
            per_seed = []
            for seed in args.seeds:
                probs = train_head(x[~valid], y[~valid], x[valid], lever, seed)
                per_seed.append(measure(y[valid].astype(bool), probs, lp.labels, counts))
            mean = {k: float(np.mean([r[k] for r in per_seed])) for k in per_seed[0]}
            rows.append({"backbone": spec, "lever": lever, "seeds": args.seeds, "mean": mean, "per_seed": per_seed,
                         "feature_seconds": round(feat_s, 1)})
            print(f"{spec:24} {lever:22} " + "  ".join(f"{k} {v:.3f}" for k, v in mean.items()), flush=True)
    res = {"benchmark": "levers", "vocab_version": vocab_id, "n_train": int((~valid).sum()),
           "n_valid": int(valid.sum()), "rows": rows, "machine": machine_info(),
           "finished_at": datetime.now(UTC).isoformat(timespec="seconds")}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"levers-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(res, indent=2, sort_keys=True))
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
