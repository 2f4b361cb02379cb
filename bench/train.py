"""Benchmark training throughput on food10 (through ingest and vocabulary), against the limit.

For each DataLoader worker count asked for, one frozen and one unfrozen epoch of the real
training path (``instatag.fitting.learner``: the resized store, fastai item and batch transforms,
the network, the optimiser) are timed, in training images per second of the training phase
(validation excluded, reported apart). The limit, measured in the same run on the same Learner
and batch shape, is the bare network: forward, loss, backward and optimiser step on a batch
already in memory, with the same parameters frozen. Goal: the epoch at ≥ 0.9 × the limit on CPU.

Then the same frozen epoch through a naive fastai pipeline that decodes the original JPEGs
(``images.original_path``) with fastai's stock RandomResizedCrop on both splits and fastai's
default worker count, for the ratio (goal ≥ 3×; on a CPU the network dominates, see the JSON).

    python bench/train.py [--food10 DIR] [--data-dir DIR] [--preset default] [--arch A] [--size N]
                          [--bs N] [--no-pretrained] [--workers 0,1,2] [--threads N] [--images N]
                          [--no-naive] [--out DIR]

``--data-dir`` reuses a data dir that already holds the ingested food10 and a vocabulary
(default: a fresh temporary SQLite data dir, ingest and vocabulary timed). ``--images`` keeps the
first N labelled images (for slow machines). Prints the JSON and writes it to
``bench/results/train-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from machine import machine_info  # noqa: E402

from instatag import db  # noqa: E402
from instatag.errors import UserError  # noqa: E402
from instatag.settings import load_settings  # noqa: E402

FOOD10 = ROOT.parent / "shared" / "data" / "food10-scrape"


def prepare(data_dir: Path, food10: Path) -> dict:
    """Ingest food10 and build a vocabulary unless ``data_dir`` has one; the seconds each took."""
    from instatag.ingest import ingest
    from instatag.labels import LabelPipeline
    from instatag.vocab import build_vocab

    s = load_settings(env={}, data_dir=data_dir)
    db.upgrade(s)
    try:
        LabelPipeline.for_version(s)
        return {"reused": str(data_dir)}
    except UserError:  # no vocabulary yet: make one
        pass
    t0 = time.perf_counter()
    report = ingest(s, [food10])
    t1 = time.perf_counter()
    vocab_id = build_vocab(s)
    return {"ingest_s": round(t1 - t0, 1), "vocab_s": round(time.perf_counter() - t1, 1),
            "ingest": report.as_dict(), "vocab_version_id": vocab_id}


def timer():
    """A fastai callback timing the training and validation phases of each epoch."""
    from fastai.callback.core import Callback
    from fastai.torch_core import find_bs

    class Timer(Callback):
        order = 99

        def before_train(self):
            self.n, self.t0 = 0, time.perf_counter()

        def after_batch(self):
            if self.training:
                self.n += find_bs(self.learn.yb)

        def after_train(self):
            self.train_s = time.perf_counter() - self.t0

        def before_validate(self):
            self.v0 = time.perf_counter()

        def after_validate(self):
            self.valid_s = time.perf_counter() - self.v0

    return Timer()


def one_epoch(learn, frozen: bool, lr: float = 1e-3) -> dict:
    t = timer()
    learn.freeze() if frozen else learn.unfreeze()
    learn.fit(1, lr, cbs=[t])
    return {"images": t.n, "train_s": round(t.train_s, 2), "images_per_s": round(t.n / t.train_s, 2),
            "valid_s": round(t.valid_s, 2)}


def bare_network(learn, frozen: bool, n_batches: int) -> dict:
    """Forward + loss + backward + optimiser step on one in-memory batch: the limit."""
    import torch

    learn.freeze() if frozen else learn.unfreeze()
    xb, yb = learn.dls.train.one_batch()
    model, opt = learn.model.train(), learn.opt
    times = []
    for i in range(n_batches + 2):
        t0 = time.perf_counter()
        loss = learn.loss_func(model(xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if xb.is_cuda:
            torch.cuda.synchronize()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - t0)
    total = sum(times)
    return {"batches": len(times), "bs": len(xb), "images_per_s": round(len(times) * len(xb) / total, 2)}


def naive_epoch(items, labels, originals: dict, config, settings, workdir: Path, valid_pct: float) -> dict:
    """The frozen epoch through stock fastai on the original JPEGs (fastai's default workers), split at
    the vocabulary version's ``valid_pct``."""
    from fastai.callback.progress import ProgressCallback
    from fastai.data.block import DataBlock
    from fastai.data.transforms import IndexSplitter
    from fastai.vision.augment import RandomResizedCrop, aug_transforms
    from fastai.vision.data import ImageBlock, MultiCategoryBlock, Normalize
    from fastai.vision.learner import vision_learner

    from instatag import archs
    from instatag.fitting import _loss_func
    from instatag.labels import is_valid

    valid_idx = [i for i, it in enumerate(items) if is_valid(it.sha256, valid_pct)]
    block = DataBlock(blocks=(ImageBlock, MultiCategoryBlock(vocab=list(labels))),
                      get_x=lambda it: originals[it.image_id], get_y=lambda it: list(it.labels),
                      splitter=IndexSplitter(valid_idx), item_tfms=RandomResizedCrop(config.size),
                      batch_tfms=[*aug_transforms(pad_mode="zeros"), Normalize.from_stats(*archs.stats(config.arch))])
    dls = block.dataloaders(list(items), bs=config.bs, device="cpu")
    learn = vision_learner(dls, archs.fastai_arch(config.arch, settings), pretrained=config.pretrained,
                           n_out=len(labels), loss_func=_loss_func(config), path=workdir)
    learn.remove_cb(ProgressCallback)
    learn.logger = lambda *_: None
    return {**one_epoch(learn, frozen=True), "num_workers": dls.train.fake_l.num_workers}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--food10", type=Path, default=FOOD10)
    ap.add_argument("--data-dir", type=Path, help="a data dir with food10 ingested and a vocabulary (reused)")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--arch")
    ap.add_argument("--size", type=int)
    ap.add_argument("--bs", type=int)
    ap.add_argument("--workers", default="0,1,2", help="DataLoader worker counts to measure (comma separated)")
    ap.add_argument("--no-pretrained", action="store_true", help="random weights (same speed; resnet18 offline)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    ap.add_argument("--images", type=int, help="use only the first N labelled images")
    ap.add_argument("--limit-batches", type=int, default=10, help="batches timed for the bare network")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive pipeline")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()

    import torch
    from sqlalchemy import select

    from instatag import fitting
    from instatag import train as tr
    from instatag.labels import LabelPipeline
    from instatag.schema import images

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    info = {"machine": machine_info(), "started_utc": datetime.now(UTC).isoformat(timespec="seconds")}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        data_dir = args.data_dir or Path(tmp) / "var"
        info["prepare"] = prepare(data_dir, args.food10)
        s = load_settings(env={}, data_dir=data_dir, device="cpu")
        pipeline = LabelPipeline.for_version(s)
        items = pipeline.items(s)[:args.images] if args.images else pipeline.items(s)
        config = tr.config_from(args.preset, arch=args.arch, size=args.size, bs=args.bs,
                                pretrained=False if args.no_pretrained else None)
        info["config"] = config.to_dict()
        info["data"] = {"labelled_images": len(items), "labels": len(pipeline.labels)}
        runs = []
        for w in (int(x) for x in args.workers.split(",")):
            cfg = config.replace(num_workers=w)
            learn = fitting.learner(items, pipeline.labels, cfg, s, Path(tmp), pipeline.valid_pct)
            run = {"num_workers": w}
            for phase, frozen in (("frozen", True), ("unfrozen", False)):
                run[phase] = one_epoch(learn, frozen)
                run[phase + "_limit"] = bare_network(learn, frozen, args.limit_batches)
                run[phase + "_vs_limit"] = round(run[phase]["images_per_s"] / run[phase + "_limit"]["images_per_s"], 3)
            runs.append(run)
            print(json.dumps(run), file=sys.stderr)
        info["runs"] = runs
        best = max(runs, key=lambda r: r["frozen"]["images_per_s"])
        if not args.no_naive:
            with db.get_engine(s).connect() as conn:
                rows = conn.execute(select(images.c.id, images.c.original_path))
                originals = {i: str(s.data_dir / p) for i, p in rows}
            naive = naive_epoch(items, pipeline.labels, originals, config, s, Path(tmp), pipeline.valid_pct)
            info["naive"] = naive
            info["speedup_vs_naive"] = round(best["frozen"]["images_per_s"] / naive["images_per_s"], 2)
        info["goals"] = {"best_num_workers": best["num_workers"],
                         "epoch_vs_limit (goal >= 0.9)": min(best["frozen_vs_limit"], best["unfrozen_vs_limit"]),
                         "speedup_vs_naive (goal >= 3)": info.get("speedup_vs_naive")}
    info["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    info["torch_threads"] = torch.get_num_threads()
    info["seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"train-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
