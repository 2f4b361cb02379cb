"""How good can any model of food10's photos get? The dish oracle: the metrics of a predictor that knows
each photo's dish exactly (food10's classes.csv) and, for each dish, how often uploaders give each label.

food10's captions are generated per dish (its README: "each dish has its own hashtag habits"), so beyond
the dish a photo says nothing about its tags: which of a dish's usual tags an uploader wrote is chance.
No model of the photo can then beat the oracle except by luck of the sample, and the oracle is the
ceiling against which bench/quality.py's goals should be read:

- ``map``: each label's score is its rate among the training photos of the dish (P(label | dish)). Photos
  of one dish tie; a model that knows only the dish can order them only by chance, so AP is averaged over
  ``TIE_DRAWS`` random orders within the ties (``map``; the spread in ``map_range``); ``map_ties_grouped``
  is scikit-learn's AP of the tied scores themselves (each tie counted at its end: lower).
- ``dominant_first``: the labels in the dominant-first order of those rates (``instatag.ranking``, as a
  model with ``ranking=dominant_first`` orders its labels); ``dominant_best@1`` picks per dish the label
  that most often *is* the dominant one (the Bayes choice for dominant_recall@1, without ranking's
  independence assumption).
- ``probability``: the labels most probable first, from calibrated rates. A model whose probabilities
  are less sure (pulled toward the label frequencies) can score above this at @1, because frequent
  labels are more often the dominant one: under probability order @1 is no ceiling, only a reference.

A labelled photo whose posts classes.csv does not name (one in food10) forms its own group "?"
(listed in the JSON's ``dishes``) and is scored with the label rates of all photos.

Two estimates: ``validation`` (rates from the training split, metrics on the validation split, as
bench/quality.py measures models) and ``all`` (every labelled photo, rates from all photos of its dish,
itself included: one of ~190, a slight optimism; five times the photos, so less sampling noise).

  python bench/ceiling.py                          # ingests food10 into --data-dir unless it is there
  python bench/ceiling.py --data-dir /tmp/instatag-bench-quality --vocab-version 1
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
FOOD10 = ROOT.parent / "shared" / "data" / "food10-scrape"
#: random orders of the tied photos averaged for ``map``
TIE_DRAWS = 50


def dominant_matrix(y: np.ndarray, order) -> np.ndarray:
    """0/1 ``[n, L]``: each image's dominant label (its most frequent true label; ``order`` lists label
    indices from the most frequent), none for an image without labels."""
    rank = np.empty(y.shape[1], dtype=np.int64)
    rank[list(order)] = np.arange(y.shape[1])
    out = np.zeros(y.shape, dtype=bool)
    for i, row in enumerate(y):
        true = np.flatnonzero(row)
        if len(true):
            out[i, true[np.argmin(rank[true])]] = True
    return out


def group_rates(y: np.ndarray, groups: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """``[n, L]``: per image, the mean of ``y`` over the ``fit`` images of its group; a group with no such
    image gets the mean over all ``fit`` images."""
    y = y.astype(np.float64)
    out = np.tile(y[fit].mean(axis=0), (len(y), 1))
    for g in np.unique(groups):
        m = groups == g
        if (m & fit).any():
            out[m] = y[m & fit].mean(axis=0)
    return out


def oracle_metrics(y: np.ndarray, groups: np.ndarray, labels: list[str], counts, fit: np.ndarray,
                   scored: np.ndarray) -> dict:
    """The dish oracle's metrics on the ``scored`` images, rates from the ``fit`` images (see the module
    docstring). ``y``: 0/1 ``[n, L]``; ``groups``: ``[n]`` dish names; ``counts``: training frequency of
    each label (decides the dominant label, as instatag.metrics does)."""
    from instatag import metrics, ranking

    order = metrics.frequency_order(labels, counts)
    rates = group_rates(y, groups, fit)
    dom_rates = group_rates(dominant_matrix(y, order), groups, fit)
    ys, ps = y[scored].astype(bool), rates[scored]
    with_positives = [j for j in range(len(labels)) if ys[:, j].any()]
    tied = [metrics.average_precision(ys[:, j], ps[:, j]) for j in with_positives]
    rng = np.random.default_rng(0)
    draws = np.array([[metrics.average_precision(ys[:, j], ps[:, j] + 1e-9 * rng.random(len(ps)))
                       for j in with_positives] for _ in range(TIE_DRAWS)])  # [draws, labels]
    per_draw = draws.mean(axis=1)
    ap = dict(zip(with_positives, draws.mean(axis=0), strict=True))
    out = {"map": float(per_draw.mean()), "map_range": [float(per_draw.min()), float(per_draw.max())],
           "map_ties_grouped": float(np.mean(tied)),
           "per_label_ap": {label: (round(float(ap[j]), 4) if j in ap else None) for j, label in enumerate(labels)}}
    for name in ranking.RANKINGS:
        scores = ranking.rank_scores(ps, name, order)
        out[name] = {f"dominant_recall@{k}": metrics.dominant_recall_at_k(ys, scores, labels, counts, k)
                     for k in metrics.KS}
    best = np.zeros_like(ps)
    best[np.arange(len(ps)), np.argmax(dom_rates[scored], axis=1)] = 1.0
    out["dominant_best@1"] = metrics.dominant_recall_at_k(ys, best, labels, counts, 1)
    out["n_images"] = int(ys.any(axis=1).sum())
    return out


def ceiling(settings, vocab_version_id: int, classes_csv: Path) -> dict:
    """Both estimates (``validation``, ``all``) for a food10 vocabulary version."""
    from sqlalchemy import select

    from instatag import db
    from instatag import schema as t
    from instatag.labels import LabelPipeline, is_valid

    lp = LabelPipeline.for_version(settings, vocab_version_id)
    items = lp.items(settings)
    dish_of_post = {(r["drop"], r["post"]): r["food101_class"] for r in csv.DictReader(classes_csv.open())}
    dish: dict[int, str] = {}
    with db.get_engine(settings).connect() as conn:
        for image_id, source in conn.execute(select(t.posts.c.image_id, t.posts.c.source_path)):
            p = Path(source)
            if (p.parent.name, p.stem) in dish_of_post:  # a re-post's image: any of its posts names the dish
                dish.setdefault(image_id, dish_of_post[(p.parent.name, p.stem)])
    index = {label: j for j, label in enumerate(lp.labels)}
    y = np.zeros((len(items), len(lp.labels)), dtype=bool)
    for i, item in enumerate(items):
        y[i, [index[label] for label in item.labels]] = True
    groups = np.array([dish.get(item.image_id, "?") for item in items])
    valid = np.array([is_valid(item.sha256, lp.valid_pct) for item in items])
    counts = y[~valid].sum(axis=0)
    everyone = np.ones(len(items), dtype=bool)
    return {"validation": oracle_metrics(y, groups, lp.labels, counts, ~valid, valid),
            "all": oracle_metrics(y, groups, lp.labels, counts, everyone, everyone),
            "vocab_version": vocab_version_id, "n_labels": len(lp.labels), "dishes": sorted(set(groups.tolist()))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--food10", type=Path, default=FOOD10)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/instatag-bench-quality"))
    parser.add_argument("--vocab-version", type=int, help="an already built vocabulary version of the data dir")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if not (args.food10 / "classes.csv").is_file():
        print(f"food10 not found at {args.food10}", file=sys.stderr)
        return 2
    from machine import machine_info
    from quality import prepare

    from instatag.errors import UserError
    from instatag.settings import load_settings

    settings = load_settings(data_dir=args.data_dir)
    try:
        vocab_id = args.vocab_version or prepare(settings, args.food10)
        found = ceiling(settings, vocab_id, args.food10 / "classes.csv")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    res = {"benchmark": "ceiling", **found,
           "machine": machine_info(), "finished_at": datetime.now(UTC).isoformat(timespec="seconds")}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"ceiling-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(res, indent=2, sort_keys=True))
    for name in ("validation", "all"):
        r = res[name]
        low, high = r["map_range"]
        print(f"{name:10} ({r['n_images']} images): mAP {r['map']:.3f} ({low:.3f}-{high:.3f}; "
              f"ties grouped {r['map_ties_grouped']:.3f}); dominant_recall@1/@2 dominant_first "
              f"{r['dominant_first']['dominant_recall@1']:.3f}/{r['dominant_first']['dominant_recall@2']:.3f}, "
              f"probability {r['probability']['dominant_recall@1']:.3f}/{r['probability']['dominant_recall@2']:.3f}, "
              f"best dominant@1 {r['dominant_best@1']:.3f}")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
