"""Benchmark one Grad-CAM heatmap on CPU (``instatag.explain``), as the tag browser computes it on demand.

Set-up (not timed): the default preset's architecture and input size (efficientnet_lite0 at 128 px),
untrained (the cost does not depend on the weights), with 40 labels; the photos are food10 images
read as scoring reads them (``predict.load_image``), or generated ones when it is absent; one heatmap
first, to load the libraries and copy the network.

Timed: ``explain(predictor, image, label)`` and its PNG overlay, one image at a time, ``--images``
times. Goal: median under 1 s on CPU.

    python bench/explain.py [--food10 DIR] [--images 50] [--threads N]

Prints the JSON and writes it to ``bench/results/explain-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
from machine import machine_info, save_result  # noqa: E402

FOOD10 = ROOT.parent / "shared" / "data" / "food10-scrape"


def run(args) -> dict:
    import torch
    from PIL import Image

    from instatag import archs, explain, predict, train
    from instatag.inference import Predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    config = train.config_from("default")
    labels = [f"label{i}" for i in range(40)]
    mean, std = archs.stats(config.arch)
    net = archs.build_plain(config.arch, len(labels), output_bias=True, ps=config.ps)
    predictor = Predictor(net.state_dict(), {"arch": config.arch, "size": config.size, "mean": mean, "std": std,
                                             "labels": labels, "output_bias": True, "params": {"ps": config.ps},
                                             "flip_tta": config.flip_tta}, device="cpu")
    files = sorted(args.food10.rglob("*.jpg"))[:args.images] if args.food10.is_dir() else []
    rng = np.random.default_rng(0)
    images = [predict.load_image(f) for f in files] or [
        Image.fromarray(rng.integers(0, 255, (160, 120, 3), dtype=np.uint8)) for _ in range(args.images)]
    explain.explain(predictor, images[0], labels[0]).png()
    seconds = []
    for k, img in enumerate(images):
        t0 = time.perf_counter()
        explain.explain(predictor, img, labels[k % len(labels)]).png()
        seconds.append(time.perf_counter() - t0)
    s = np.array(seconds)
    return {"benchmark": "explain", "arch": config.arch, "size": config.size, "flip_tta": config.flip_tta,
            "images": len(s), "source": "food10" if files else "generated", "torch_threads": torch.get_num_threads(),
            "median_s": round(float(np.median(s)), 4), "p90_s": round(float(np.percentile(s, 90)), 4),
            "goal_median_s": 1.0, "machine": machine_info()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--food10", type=Path, default=FOOD10,
                   help="the food10-scrape folder (generated photos when it is absent)")
    p.add_argument("--images", type=int, default=50)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    result = run(args)
    save_result(args.out, "explain", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
