"""Benchmark batch scoring: the food10 images into PostgreSQL, against pure model inference.

Set-up (not timed): a fresh PostgreSQL database (created and dropped here) and data dir; ingest the
three food10 drops, build the vocabulary, train a quick model (one epoch of the default preset's
architecture; ``--untrained`` registers an untrained network instead), evaluate it (thresholds) and
make it champion.

Timed, in the same process, at the same batch size:
- the limit: ``Predictor.predict_tensor`` over every image preloaded as a uint8 tensor in memory
  (no decoding, no database): pure model inference;
- end to end: ``score(settings, new=False)`` over every image — select, model load (hash check),
  decoding from the resized store, inference, ranking, one COPY transaction into PostgreSQL.
Each is run ``--repeats`` times, in pairs run back to back (alternating which goes first);
``ratio`` compares the best of each, ``median_paired_ratio`` the pairs (robust to load from other
processes that changes between repeats). Goal: end to end ≥ 0.9 × the limit.

    python bench/score.py [--food10 DIR] [--batch-size 256] [--repeats 3] [--untrained]

Prints the JSON and writes it to ``bench/results/score-<UTC timestamp>.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from machine import machine_info, save_result  # noqa: E402
from sqlalchemy import create_engine, func, select, text  # noqa: E402

from instatag import db  # noqa: E402
from instatag import schema as t  # noqa: E402
from instatag.settings import load_settings  # noqa: E402

FOOD10 = ROOT.parent / "shared" / "data" / "food10-scrape"
PG_ADMIN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
GOAL = 0.9


def build(settings, food10: Path, untrained: bool, arch: str | None, size: int | None) -> tuple[int, dict]:
    """Ingest, vocabulary, model, evaluation, promotion; (champion id, seconds per step)."""
    from instatag import evaluate, ingest, promote, vocab
    from instatag.train import config_from, train

    steps = {}
    mark = time.perf_counter()
    ingest.ingest(settings, sorted(p for p in food10.iterdir() if p.is_dir()))
    steps["ingest"] = time.perf_counter() - mark
    mark = time.perf_counter()
    vocab_id = vocab.build_vocab(settings)
    steps["vocab"] = time.perf_counter() - mark
    overrides = {k: v for k, v in {"arch": arch, "size": size}.items() if v}
    config = config_from("default", **overrides)
    mark = time.perf_counter()
    if untrained:
        model_id = register_untrained(settings, vocab_id, config)
    else:
        model_id = train(settings, config.replace(epochs=1, freeze_epochs=0, lr=1e-3), vocab_version_id=vocab_id)
    steps["model"] = time.perf_counter() - mark
    mark = time.perf_counter()
    evaluate.evaluate(settings, model_id)
    promote.decide(settings, model_id)
    steps["evaluate_promote"] = time.perf_counter() - mark
    return model_id, steps


def register_untrained(settings, vocab_id: int, config) -> int:
    """An untrained network of ``config``'s architecture, registered as a candidate."""
    from sqlalchemy import insert, update

    from instatag import archs, modelfile
    from instatag.labels import LabelPipeline

    labels = LabelPipeline.for_version(settings, vocab_id).labels
    net = archs.build(config.arch, len(labels), pretrained=False)
    mean, std = archs.stats(config.arch)
    engine = db.get_engine(settings)
    with engine.begin() as conn:
        mid = conn.execute(insert(t.model_versions).values(
            vocab_version_id=vocab_id, arch=config.arch, params=config.to_dict(), artifact_path="",
            sha256="", status="candidate")).inserted_primary_key[0]
        folder = settings.models_dir / str(mid)
        sha = modelfile.save(folder, net.state_dict(), {"arch": config.arch, "size": config.size, "mean": mean,
                                                        "std": std, "labels": labels, "vocab_version_id": vocab_id})
        conn.execute(update(t.model_versions).where(t.model_versions.c.id == mid).values(
            artifact_path=(folder / modelfile.WEIGHTS).relative_to(settings.data_dir).as_posix(), sha256=sha))
    return int(mid)


def limit_pass(predictor, x, batch_size: int) -> float:
    """Seconds for pure inference over the preloaded uint8 tensor ``x``."""
    start = time.perf_counter()
    for i in range(0, len(x), batch_size):
        predictor.predict_tensor(x[i:i + batch_size])
    return time.perf_counter() - start


def run(args) -> dict:
    import numpy as np
    import torch

    from instatag import score
    from instatag.imageprep import load_array
    from instatag.inference import Predictor

    name = f"instatag_bench_score_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = args.admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        with tempfile.TemporaryDirectory(prefix="instatag-bench-score-") as tmp:
            settings = load_settings(env={}, data_dir=Path(tmp), database_url=url)
            db.upgrade(settings)
            model_id, setup = build(settings, args.food10, args.untrained, args.arch, args.size)
            with db.get_engine(settings).connect() as conn:
                rel_paths = conn.execute(select(t.images.c.resized_path).order_by(t.images.c.id)).scalars().all()
            predictor = Predictor.for_version(settings, model_id)
            # the same tensors as the scoring path: uint8, [n, 3, s, s] viewed on NHWC memory (a permute of
            # the decoded arrays, as Predictor does), so both run the same kernels
            x = torch.from_numpy(np.stack([load_array(settings.data_dir / p, predictor.size) for p in rel_paths]))
            x = x.permute(0, 3, 1, 2)
            n = len(x)
            predictor.predict_tensor(x[:args.batch_size])  # warm-up (cuDNN autotuning, allocator)
            limits, runs = [], []
            for r in range(args.repeats):  # interleaved A-B, B-A, ...: both see the same machine state
                for which in (("limit", "score") if r % 2 == 0 else ("score", "limit")):
                    if which == "limit":
                        limits.append(limit_pass(predictor, x, args.batch_size))
                    else:
                        runs.append(score.score(settings, model=model_id, new=False, batch_size=args.batch_size))
            with db.get_engine(settings).connect() as conn:
                n_rows = conn.execute(select(func.count()).select_from(t.predictions)).scalar()
            best = min(runs, key=lambda r: r.seconds)
            limit_ips = n / min(limits)
            e2e_ips = n / best.seconds
            scoring_ips = n / (best.seconds - best.timings.get("load", 0.0))
            return {
                "benchmark": "score",
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "images": n,
                "prediction_rows": n_rows,
                "model": {"id": model_id, "arch": predictor.arch, "size": predictor.size,
                          "labels": len(predictor.labels), "device": predictor.device,
                          "trained": not args.untrained},
                "batch_size": args.batch_size,
                "repeats": args.repeats,
                "limit_images_per_s": round(limit_ips, 1),
                "end_to_end_images_per_s": round(e2e_ips, 1),
                "end_to_end_without_model_load_images_per_s": round(scoring_ips, 1),
                "ratio": round(e2e_ips / limit_ips, 3),
                "ratio_without_model_load": round(scoring_ips / limit_ips, 3),
                # each repeat's limit pass and score run are adjacent in time: their ratio is robust to
                # load that changes between repeats (other processes on the machine)
                "paired_ratios": [round(lim / r.seconds, 3) for lim, r in zip(limits, runs, strict=True)],
                "median_paired_ratio": round(float(np.median([lim / r.seconds for lim, r in
                                                              zip(limits, runs, strict=True)])), 3),
                "goal_ratio": GOAL,
                "goal_met": e2e_ips / limit_ips >= GOAL,
                "limit_seconds": [round(s, 3) for s in limits],
                "score_seconds": [round(r.seconds, 3) for r in runs],
                "score_timings_best": best.timings,
                "setup_seconds": {k: round(v, 1) for k, v in setup.items()},
                "machine": machine_info(),
            }
    finally:
        db._engine.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--food10", type=Path, default=FOOD10, help="the food10-scrape folder")
    p.add_argument("--admin-url", default=PG_ADMIN, help="PostgreSQL admin URL (a database is created and dropped)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--arch", help="architecture (default: the default preset's)")
    p.add_argument("--size", type=int, help="input side (default: the default preset's)")
    p.add_argument("--untrained", action="store_true", help="register an untrained network instead of training")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    if not args.food10.is_dir():
        print(f"{args.food10}: no such folder (see --food10)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run(args)
    save_result(args.out, "score", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
