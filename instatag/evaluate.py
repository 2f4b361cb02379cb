"""``instatag evaluate``: score a trained model on the validation split of its vocabulary version.

It stores the metrics of the model and of the popularity baseline (``model_versions.metrics``, with
the global threshold), the per-label table (``label_metrics``) and the per-label thresholds tuned on
the validation split (``label_metrics.threshold``), in one transaction; these are the thresholds
scoring, ``instatag predict``, the report and the drops read (``registry.thresholds``). Re-running
replaces them. The validation split is the vocabulary version's (``vocab_versions.valid_pct``).
Evaluating decides nothing: ``instatag promote`` (``promote.decide``) compares the model with the
champion.

Beside the uploader-label figures it measures the model on *verified* images (``verified_validation``):
validation-split images with a person's verdict (``instatag.feedback``) on a label of the model's
vocabulary, their truth being the uploader's labels with the verdicts applied. The figures are
stored (``metrics["verified"]``) and shown once there are ``MIN_VERIFIED_IMAGES`` of them.
Definitions: ``docs/evaluation.md``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import metrics
from .errors import UserError

log = logging.getLogger(__name__)

BATCH_SIZE = 256
#: Verified images needed before their metrics are shown or decide a promotion. With 30 images one
#: image moves a rate by more than 3 points and the 95 % interval of a rate near 50 % spans about
#: ±18 points: fewer than that measures the sample, not the model.
MIN_VERIFIED_IMAGES = 30


@dataclass
class Validation:
    """A model's predictions on the validation split of its vocabulary version."""

    model_version_id: int
    vocab_version_id: int
    labels: list[str]
    counts: np.ndarray  # training frequency per label
    image_ids: list[int]
    paths: list[Path]
    y_true: np.ndarray
    probs: np.ndarray
    #: scores that order each image's labels as the model ranks them (None: by probability)
    ranks: np.ndarray | None = None
    #: the model's ranking (``instatag.ranking``) and its labels' training-frequency order (indices)
    ranking: str = "probability"
    frequency_order: list[int] | None = None

    def ranks_under(self, name: str) -> np.ndarray:
        """Ranking scores of these probabilities under ranking ``name``, whatever the model's own (the
        frequency order from model.json, else from ``counts``)."""
        from . import ranking

        order = self.frequency_order or metrics.frequency_order(self.labels, self.counts)
        return ranking.rank_scores(self.probs, name, order)

    def by_ranking(self) -> dict[str, dict]:
        """The top-k metrics (``metrics.RANKED_METRICS``) under every ranking: {ranking: {metric: value}}."""
        from . import ranking

        return {name: metrics.ranked_metrics(self.y_true, self.ranks_under(name), self.labels, self.counts)
                for name in ranking.RANKINGS}

    @property
    def ids_sha256(self) -> str:
        return hashlib.sha256(",".join(map(str, self.image_ids)).encode()).hexdigest()


def newest_candidate(settings) -> int:
    """The newest candidate's id (``registry.resolve(conn, "candidate")``)."""
    from . import db, registry

    with db.get_engine(settings).connect() as conn:
        return registry.resolve(conn, "candidate")


def run_model(settings, model_version_id: int, paths: list[Path], batch_size: int = BATCH_SIZE):
    """(the stored model's ``inference.Predictor``, its probabilities ``[len(paths), n_labels]``)."""
    from .inference import Predictor

    predictor = Predictor.for_version(settings, model_version_id)
    return predictor, np.asarray(predictor.predict_paths(paths, batch_size=batch_size))


def predict_probs(settings, model_version_id: int, paths: list[Path], batch_size: int = BATCH_SIZE):
    """(labels in output order, probabilities ``[len(paths), n_labels]``, the model's ranking scores
    of the same shape) of a stored model."""
    predictor, probs = run_model(settings, model_version_id, paths, batch_size)
    return list(predictor.labels), probs, predictor.rank_scores(probs)


def validation_set(settings, model_version_id: int) -> tuple[int, list[str], np.ndarray, list, np.ndarray]:
    """(vocab version id, labels, training counts, validation items, y_true) for a model version."""
    from . import db, registry
    from .labels import LabelPipeline, is_valid

    with db.get_engine(settings).connect() as conn:
        row = registry.row(conn, model_version_id)
    pipeline = LabelPipeline.for_version(settings, row["vocab_version_id"])
    valid_pct = pipeline.valid_pct
    labels = list(pipeline.labels)
    counts = np.array([pipeline.counts.get(label, 0) for label in labels], dtype=np.int64)
    items = [it for it in pipeline.items(settings) if is_valid(it.sha256, valid_pct)]
    if not items:
        raise UserError(f"vocabulary version {row['vocab_version_id']} has no labelled image in the validation "
                        f"split ({valid_pct:.0%} of images): ingest more posts")
    index = {label: j for j, label in enumerate(labels)}
    y_true = np.zeros((len(items), len(labels)), dtype=bool)
    for i, it in enumerate(items):
        y_true[i, [index[label] for label in it.labels if label in index]] = True
    return row["vocab_version_id"], labels, counts, items, y_true


def validate(settings, model_version_id: int, batch_size: int = BATCH_SIZE) -> Validation:
    """Run a model on the validation split of its own vocabulary version."""
    vocab_id, labels, counts, items, y_true = validation_set(settings, model_version_id)
    paths = [Path(it.resized_path) for it in items]
    predictor, probs = run_model(settings, model_version_id, paths, batch_size)
    if list(predictor.labels) != labels:
        raise UserError(f"model version {model_version_id} outputs {len(predictor.labels)} labels that differ from "
                        f"its vocabulary version {vocab_id}; the model file does not belong to this database")
    return Validation(model_version_id, vocab_id, labels, counts, [it.image_id for it in items], paths,
                      y_true, probs, predictor.rank_scores(probs), predictor.ranking, predictor.frequency_order)


def verified_validation(settings, v: Validation, batch_size: int = BATCH_SIZE) -> tuple[Validation | None, int]:
    """(the model on its verified validation images, their number): images of the validation split
    (the same ``labels.is_valid`` split as ``v``) with a latest verdict on one of ``v.labels``; y_true is
    the uploader's labels in ``v``'s vocabulary version with the verdicts applied
    (``feedback.apply_verdicts``). The Validation is None below ``MIN_VERIFIED_IMAGES`` images."""
    from sqlalchemy import select

    from . import db, feedback
    from . import schema as t
    from .labels import is_valid, valid_pct_of

    with db.get_engine(settings).connect() as conn:
        valid_pct = valid_pct_of(conn, v.vocab_version_id)
        verdicts = {i: {k: x for k, x in vs.items() if k in set(v.labels)}
                    for i, vs in feedback.latest_verdicts(conn).items()}
        verdicts = {i: vs for i, vs in verdicts.items() if vs}
        images = conn.execute(select(t.images.c.id, t.images.c.sha256, t.images.c.resized_path)
                              .where(t.images.c.id.in_(list(verdicts)))).all() if verdicts else []
        images = sorted(r for r in images if is_valid(r.sha256, valid_pct))
        uploader: dict[int, set[str]] = {}
        il = t.image_labels.c
        for r in conn.execute(select(il.image_id, il.label).where(
                il.vocab_version_id == v.vocab_version_id, il.image_id.in_([r.id for r in images]))):
            uploader.setdefault(r.image_id, set()).add(r.label)
    if len(images) < MIN_VERIFIED_IMAGES:
        return None, len(images)
    index = {label: j for j, label in enumerate(v.labels)}
    y_true = np.zeros((len(images), len(v.labels)), dtype=bool)
    for row, r in enumerate(images):
        truth = feedback.apply_verdicts(uploader.get(r.id, ()), verdicts[r.id])
        y_true[row, [index[label] for label in truth if label in index]] = True
    paths = [settings.data_dir.absolute() / r.resized_path for r in images]
    _, probs, ranks = predict_probs(settings, v.model_version_id, paths, batch_size)
    return Validation(v.model_version_id, v.vocab_version_id, v.labels, v.counts, [r.id for r in images], paths,
                      y_true, probs, ranks, v.ranking, v.frequency_order), len(images)


def evaluate(settings, model_version_id: int | None = None, batch_size: int = BATCH_SIZE,
             floor: float = metrics.THRESHOLD_FLOOR, validation: Validation | None = None) -> dict:
    """Evaluate a model version (default: the newest candidate); store and return its metrics:
    {"model": {...}, "baseline": {...}, "ranking", "model_by_ranking": {ranking: {top-k metrics}},
    "n_images", "global_threshold", "threshold_floor", "valid_image_ids_sha256", "vocab_version_id",
    "per_label_ap": {label: {"ap", "baseline_ap", "support"}}} (the whole per-label table goes to
    ``label_metrics``). ``model`` ranks labels as the model does
    (``ranking``); ``model_by_ranking`` holds the top-k metrics under both rankings. ``verified``:
    {"n_images", "min_images"} and, from ``MIN_VERIFIED_IMAGES`` verified images on, "model" and
    "baseline" on them (``verified_validation``; the thresholds tuned on the uploader labels)."""
    if model_version_id is None:
        model_version_id = newest_candidate(settings)
    v = validation or validate(settings, model_version_id, batch_size)
    thresholds, global_t = metrics.tune_thresholds(v.y_true, v.probs, floor=floor)
    res = metrics.evaluate_predictions(v.y_true, v.probs, v.labels, v.counts, thresholds, v.ranks)
    summary = {
        "model": res["model"],
        "baseline": res["baseline"],
        "ranking": v.ranking,
        "model_by_ranking": v.by_ranking(),
        "n_images": len(v.image_ids),
        "global_threshold": global_t,
        "threshold_floor": floor,
        "baseline_k": metrics.BASELINE_K,
        "vocab_version_id": v.vocab_version_id,
        "valid_image_ids_sha256": v.ids_sha256,
        "verified": verified_summary(settings, v, thresholds, batch_size),
        "per_label_ap": {label: {"ap": r["ap"], "baseline_ap": r["baseline"]["ap"], "support": r["support"]}
                         for label, r in res["per_label"].items()},
    }
    _store(settings, model_version_id, summary, res["per_label"])
    log.info("model version %d on %d validation images: dominant_recall@2 %.3f (baseline %.3f), mAP %.3f",
             model_version_id, len(v.image_ids), res["model"]["dominant_recall@2"] or 0,
             res["baseline"]["dominant_recall@2"] or 0, res["model"]["map"] or 0)
    return summary


def verified_summary(settings, v: Validation, thresholds, batch_size: int = BATCH_SIZE) -> dict:
    """The ``verified`` block of ``evaluate``'s summary."""
    vv, n = verified_validation(settings, v, batch_size)
    out = {"n_images": n, "min_images": MIN_VERIFIED_IMAGES}
    if vv is not None:
        res = metrics.evaluate_predictions(vv.y_true, vv.probs, vv.labels, vv.counts, thresholds, vv.ranks)
        out.update(model=res["model"], baseline=res["baseline"], valid_image_ids_sha256=vv.ids_sha256)
    return out


def _store(settings, model_version_id: int, summary: dict, per_label: dict) -> None:
    """Write the evaluation in one transaction: ``model_versions.metrics`` (``summary``, with the global
    threshold) and the ``label_metrics`` rows (each label's tuned threshold), replacing an earlier one.
    These are the model's thresholds (``registry.thresholds``); model.json is not touched."""
    from sqlalchemy import delete, insert, update

    from . import db, registry
    from . import schema as t

    engine = db.get_engine(settings)
    rows = [
        {"model_version_id": model_version_id, "label": label, "precision": r["precision"], "recall": r["recall"],
         "ap": r["ap"], "support": r["support"], "threshold": r["threshold"], "baseline": r["baseline"]}
        for label, r in per_label.items()
    ]
    with engine.begin() as conn:
        registry.row(conn, model_version_id)  # UserError when there is no such version
        conn.execute(delete(t.label_metrics).where(t.label_metrics.c.model_version_id == model_version_id))
        if rows:
            conn.execute(insert(t.label_metrics), rows)
        conn.execute(update(t.model_versions).where(t.model_versions.c.id == model_version_id)
                     .values(metrics=summary))


# --------------------------------------------------------------------------- CLI
SHOWN = ("dominant_recall@1", "dominant_recall@2", "map", "micro_f1", "macro_f1",
         "precision@1", "recall@1", "precision@2", "recall@2")


def _fmt(value) -> str:
    return "   -  " if value is None else f"{value:.3f}"


def format_table(summary: dict) -> str:
    """Model against the popularity baseline, one metric a line; then dominant recall under both
    rankings."""
    ver = summary.get("verified") or {}
    both = "model" in ver
    extra = f" {'verified model':>15} {'baseline':>9}" if both else ""
    lines = [f"{'metric':20} {'model':>7} {'baseline':>9}{extra}"]
    for key in SHOWN:
        lines.append(f"{key:20} {_fmt(summary['model'].get(key)):>7} {_fmt(summary['baseline'].get(key)):>9}"
                     + (f" {_fmt(ver['model'].get(key)):>15} {_fmt(ver['baseline'].get(key)):>9}" if both else ""))
    lines.append(f"on {summary['n_images']} validation images; baseline = the {summary.get('baseline_k', 2)} most "
                 f"frequent training labels; F1 at the tuned thresholds (global {summary['global_threshold']:.2f})")
    if both:
        lines.append(f"verified: on the {ver['n_images']} validation images whose labels people corrected "
                     "(uploader labels with their verdicts applied)")
    elif ver:
        lines.append(f"verified: {ver['n_images']} validation images with people's verdicts; metrics on them from "
                     f"{ver['min_images']} on (instatag feedback, the tag browser)")
    by = summary.get("model_by_ranking") or {}
    if by:
        own = summary.get("ranking", "probability")
        lines.append(f"top-k metrics above: labels ranked {own} (the model's ranking); under each ranking:")
        lines.append(f"{'ranking':20} " + " ".join(f"{k:>17}" for k in ("dominant_recall@1", "dominant_recall@2")))
        for name, values in by.items():
            lines.append(f"{name:20} " + " ".join(f"{_fmt(values.get(k)):>17}"
                                                  for k in ("dominant_recall@1", "dominant_recall@2")))
    return "\n".join(lines)


def format_label_ap(summary: dict) -> str:
    """Each label's AP against the popularity baseline's (its share of positives), highest AP first, with
    ``metrics.learned``'s verdict: which tags the model can tell from a photo and which it cannot. Labels
    without positives in the validation split have no AP and are counted in a last line."""
    table = summary.get("per_label_ap") or {}
    rows = sorted(((label, r) for label, r in table.items() if r["ap"] is not None),
                  key=lambda lr: (-lr[1]["ap"], lr[0]))
    if not rows:
        return ""
    lines = ["per-label AP, highest first (baseline AP = the label's share of the validation images):",
             f"{'label':20} {'support':>7} {'AP':>7} {'baseline':>9}  learned"]
    for label, r in rows:
        verdict = metrics.learned(r["ap"], r["baseline_ap"]) or "-"
        lines.append(f"{label:20} {r['support']:>7} {_fmt(r['ap']):>7} {_fmt(r['baseline_ap']):>9}  {verdict}")
    lines.append(f"learned: well = AP {metrics.LEARNED_AP} or more; partly = at least {metrics.LEARNED_LIFT:g} times "
                 "the baseline's; hardly = less")
    missing = sorted(label for label, r in table.items() if r["ap"] is None)
    if missing:
        lines.append(f"no AP (no positive among the validation images): {', '.join(missing)}")
    return "\n".join(lines)


def _evaluate_cmd(args, settings) -> int:
    model_id = newest_candidate(settings) if args.model_version is None else args.model_version
    v = validate(settings, model_id, args.batch_size)
    summary = evaluate(settings, model_id, floor=args.floor, validation=v)
    print(f"model version {model_id}")
    print(format_table(summary))
    print(format_label_ap(summary))
    print(f"next: `instatag promote {model_id}` compares it with the champion and promotes it when it is not "
          "worse")
    return 0


def add_cli(sub) -> None:
    from .cli import positive_int

    p = sub.add_parser(
        "evaluate",
        help="evaluate a trained model on the validation split and tune its thresholds",
        description="Score MODEL_VERSION (default: the newest candidate) on the validation split of its "
        "vocabulary version; store its metrics next to the popularity baseline's and per-label thresholds "
        "tuned for F1. It decides nothing: `instatag promote` then compares it with the champion.",
    )
    p.add_argument("model_version", nargs="?", type=int, metavar="MODEL_VERSION",
                   help="model version id (default: the newest candidate)")
    p.add_argument("--floor", type=float, default=metrics.THRESHOLD_FLOOR,
                   help=f"lowest allowed per-label threshold (default {metrics.THRESHOLD_FLOOR})")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE,
                   help=f"inference batch size (default {BATCH_SIZE})")
    p.set_defaults(handler=_evaluate_cmd)
