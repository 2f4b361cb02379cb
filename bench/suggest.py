"""Suggested vocabulary vs the packaged default grouping on food10 (issue 22.5).

ingest the three food10 drops (once) → ``instatag vocab suggest`` from a grouping file that knows only
the scrape tags (no drop list, no groups; timed twice: without and with the feature cache) → accept
every suggestion as is → a vocabulary from that file and one from the packaged default → train each
with the same preset and seed → evaluate both on their validation split against the popularity
baseline of their own vocabulary. One JSON in bench/results/ (the suggestion list, both vocabularies,
both models' and baselines' metrics, the ratios, probe timings, machine) and a table.

  python bench/suggest.py                                  # default preset, seed 0
  python bench/suggest.py --train '{"epochs": 3}'          # a shorter schedule, the same for both
  python bench/suggest.py --data-dir /tmp/q --skip-train    # suggestions and vocabularies only
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from machine import machine_info  # noqa: E402
from quality import FOOD10, run_one  # noqa: E402

METRICS = ("dominant_recall@1", "dominant_recall@2", "map")
#: the generic tags food10's README names (its captions carry more; the drop list should catch these)
README_GENERIC = ("foodie", "yummy")
SCRAPE_ONLY = "# food10 before any grouping: the scrape tag alone\nscrape_tags: [recipe]\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--food10", type=Path, default=FOOD10)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/instatag-bench-suggest"))
    parser.add_argument("--train", default="{}", metavar="JSON", help="overrides of the default preset, for both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--warm-only", action="store_true",
                        help="keep the feature cache of an earlier run (no cold-cache timing)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from instatag import db, ingest, suggest, vocab
    from instatag.settings import load_settings

    settings = load_settings(data_dir=args.data_dir)
    db.upgrade(settings)
    if not vocab.versions(settings) and not suggest.read_corpus(settings).shas:
        print(ingest.ingest(settings, sorted(p for p in args.food10.iterdir() if p.is_dir())).summary(), flush=True)
    start_file = args.data_dir / "scrape_only.yaml"
    start_file.write_text(SCRAPE_ONLY)
    if not args.warm_only:
        shutil.rmtree(args.data_dir / "features", ignore_errors=True)  # the first run computes the features
    runs = []
    for cache in ("warm",) if args.warm_only else ("cold", "warm"):
        t0, cpu0 = time.monotonic(), time.process_time()
        report = suggest.suggest(settings, start_file)
        runs.append({"cache": cache, "seconds": round(time.monotonic() - t0, 1),
                     "cpu_seconds": round(time.process_time() - cpu0, 1), "parts": report.seconds})
        print(f"suggest ({cache} feature cache): {runs[-1]['seconds']} s, CPU {runs[-1]['cpu_seconds']} s "
              f"{report.seconds}", flush=True)
    suggest.save_report(settings, report)
    suggested_file = args.data_dir / "suggested.yaml"
    suggested_file.write_text(suggest.grouping_text(report, ["all"]))
    print(suggest.describe(report), flush=True)

    vocabs = {"suggested": vocab.build_vocab(settings, suggested_file),
              "default": vocab.build_vocab(settings, None)}
    dropped = set(report.suggested["drop"])
    result = {
        "benchmark": "suggest",
        "suggest_runs": runs,
        "backbone": report.backbone,
        "counts": report.counts,
        "suggestions": [{"id": s.id, "title": s.title, "reason": s.reason} for s in report.suggestions],
        "suggested_grouping": report.suggested,
        "readme_generic_dropped": {tag: tag in dropped for tag in README_GENERIC},
        "vocabularies": {name: _vocab_summary(settings, vid) for name, vid in vocabs.items()},
        "train_overrides": json.loads(args.train),
        "machine": machine_info(),
    }
    if not args.skip_train:
        for name, vid in vocabs.items():
            res = run_one(settings, vid, name, json.loads(args.train), args.seed)
            result.setdefault("models", {})[name] = {k: res[k] for k in (
                "model_version", "vocab_version", "train_seconds", "n_valid_images", "model", "baseline", "config")}
            print(f"{name:10} " + "  ".join(f"{k} {res['model'][k]:.3f} (base {res['baseline'][k]:.3f})"
                                            for k in METRICS) + f"  train {res['train_seconds']:.0f}s", flush=True)
        m = result["models"]
        result["ratios"] = {k: round(m["suggested"]["model"][k] / m["default"]["model"][k], 3) for k in METRICS}
        result["within_10_percent"] = {k: r >= 0.9 for k, r in result["ratios"].items()}
    result["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"suggest-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True, ensure_ascii=False))
    print(f"ratios suggested/default: {result.get('ratios')}; README generic tags dropped: "
          f"{result['readme_generic_dropped']} -> {path}")
    return 0


def _vocab_summary(settings, vid: int) -> dict:
    from sqlalchemy import select

    from instatag import db
    from instatag import schema as t

    with db.get_engine(settings).connect() as conn:
        row = conn.execute(select(t.vocab_versions).where(t.vocab_versions.c.id == vid)).first()
    s = row.stats
    return {"version": vid, "n_labels": row.n_labels, "labels": s["labels"], "n_labelled": s["n_labelled"],
            "n_train_images": s["n_train_images"], "n_valid_images": s["n_valid_images"],
            "min_count": row.config["grouping"]["min_count"], "min_count_images": s["min_count_images"]}


if __name__ == "__main__":
    sys.exit(main())
