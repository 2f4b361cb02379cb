"""Drops: every ingest run grades the champion on the labels its new posts bring, and is checked for drift.

A *drop* is one ingest run (table ``ingest_runs``: one ``instatag ingest``, or one run of the
ingest DAG's task). Its new posts carry its id (``posts.ingest_run_id``); its *new photos* are the
images its posts brought first (a re-post of a photo stored before is not new). Scoring writes
every label's probability beside the tags (``image_probabilities``, ``store_probabilities``), so
grading runs no network.

``grade_pending(settings)`` grades, with the champion, each finished drop with new posts that
started after the champion's vocabulary version was created (so none of its photos is in the
champion's training or validation data), once the champion has scored its new photos:

1. **Fresh labels**: the hashtags of the drop's own posts of each new photo, mapped by the
   champion's vocabulary version (``labels.LabelPipeline.for_version``: the match key, lemmas,
   groups and recorded splits of the vocabulary build), keeping only its labels; scrape tags never
   count.
2. **Fresh-label evaluation** of the labelled new photos: ``metrics.evaluate_predictions`` with the
   champion's ranking (model.json, ``inference.Predictor.rank_scores``) and tuned thresholds
   (``registry.thresholds``: the database), beside
   the popularity baseline on the same photos and the champion's validation figures
   (``model_versions.metrics``).
3. **Drift** (``instatag.drift``): the tag mix against the champion's vocabulary data, its *new
   tags* (hashtags it does not know whose share rose, ``drift.new_tags_figure``; ``n_new_tags``);
   the top-1 labels, the highest probability and the share of photos with no label over its
   threshold against the champion's stored predictions on its validation split
   (``evaluate.validation_set``); the photos' size and brightness against its training photos.

Each graded drop is one ``drop_evaluations`` row per model (the time series; view ``drop_quality``);
each flagged figure is logged as a warning and named in ``reasons``. ``retrain_check`` decides
whether a scheduled retrain is worth running (``INSTATAG_RETRAIN_WHEN``). See docs/drops.md.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from . import drift
from .errors import UserError

log = logging.getLogger(__name__)

#: how ``image_probabilities.probs`` stores a row: float32, little-endian
PROBS_DTYPE = "<f4"
#: training photos whose brightness makes the reference (evenly spaced by id)
BRIGHTNESS_SAMPLE = 500
#: the rising hashtags listed per drop
TOP_TAGS = 10
#: ids per IN (...) list
CHUNK = 500
#: the figures in the order they are shown; their short names in the Drops table
FIGURES = {"quality": "quality", "tag_mix": "tag mix", "new_tags": "new tags", "top1_labels": "top-1 labels",
           "max_probability": "max probability", "no_label": "no label", "image_size": "size",
           "brightness": "brightness"}


def _chunks(seq: list, size: int = CHUNK):
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def _utc(value: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (SQLite gives naive UTC ones)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --------------------------------------------------------------------------- probabilities
def store_probabilities(settings, model_version_id: int, image_ids: list[int], probs) -> int:
    """Store (replace) the model's probabilities ``probs`` ``[len(image_ids), n_labels]`` of the images,
    in one transaction (COPY on PostgreSQL). Scoring calls it for each chunk before it writes the
    chunk's tags, so an image with predictions always has its probabilities. Returns the rows written."""
    from sqlalchemy import delete

    from . import db
    from . import schema as t

    probs = np.asarray(probs, dtype=PROBS_DTYPE)
    if probs.shape[0] != len(image_ids):
        raise ValueError(f"{probs.shape[0]} probability rows for {len(image_ids)} images")
    if not image_ids:
        return 0
    ip = t.image_probabilities
    engine = db.get_engine(settings)
    pg = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        for ids in _chunks(list(image_ids)):
            conn.execute(delete(ip).where(ip.c.model_version_id == model_version_id, ip.c.image_id.in_(ids)))
        rows = ((model_version_id, int(i), "\\x" + row.tobytes().hex() if pg else row.tobytes())
                for i, row in zip(image_ids, probs, strict=True))
        return db.copy_rows(conn, ip, rows, ("model_version_id", "image_id", "probs"))


def load_probabilities(conn, model_version_id: int, image_ids) -> dict[int, np.ndarray]:
    """{image id: probabilities (float32)} of the images the model has scored."""
    from sqlalchemy import select

    from . import schema as t

    ip = t.image_probabilities
    out = {}
    for ids in _chunks(sorted(set(image_ids))):
        q = select(ip.c.image_id, ip.c.probs).where(ip.c.model_version_id == model_version_id, ip.c.image_id.in_(ids))
        out.update((int(i), np.frombuffer(bytes(b), dtype=PROBS_DTYPE)) for i, b in conn.execute(q))
    return out


# --------------------------------------------------------------------------- a drop's photos and hashtags
def new_photos(conn, ingest_run_id: int) -> list[dict]:
    """The images the run's posts brought first: id, sha256, resized_path, width, height (by id)."""
    from sqlalchemy import exists, select

    from . import schema as t

    p, first, im = t.posts, t.posts.alias("earlier"), t.images
    q = (select(im.c.id, im.c.sha256, im.c.resized_path, im.c.width, im.c.height)
         .join_from(p, im, im.c.id == p.c.image_id)
         .where(p.c.ingest_run_id == ingest_run_id,
                ~exists().where(first.c.image_id == p.c.image_id, first.c.id < p.c.id))
         .order_by(im.c.id))
    return [dict(r._mapping) for r in conn.execute(q)]


def drop_hashtags(conn, ingest_run_id: int) -> dict[int, set[str]]:
    """{image id: the hashtags of the run's posts of it}, scrape tags left out."""
    from sqlalchemy import select

    from . import schema as t

    p, h = t.posts, t.post_hashtags
    q = (select(p.c.image_id, h.c.tag).join_from(h, p, p.c.id == h.c.post_id)
         .where(p.c.ingest_run_id == ingest_run_id, h.c.is_scrape_tag.is_(False)))
    out: dict[int, set[str]] = defaultdict(set)
    for image_id, tag in conn.execute(q):
        out[int(image_id)].add(tag)
    return out


def fresh_labels(pipeline, tags: dict[int, set[str]]) -> dict[int, set[str]]:
    """{image id: its labels in ``pipeline``'s stored vocabulary} (the one label pipeline)."""
    return {image_id: pipeline.labels_for_tags(ts) for image_id, ts in tags.items()}


def labels_since(conn, pipeline, since: datetime) -> dict[int, set[str]]:
    """{image id: its fresh labels in ``pipeline``'s vocabulary} of every new photo of the ingest runs
    that started after ``since`` (``runs_since``; the vocabulary version's ``created_at``): the photos
    the vocabulary version's ``image_labels`` cannot hold. Each photo's labels come from its own
    drop's posts (``drop_hashtags``, ``fresh_labels``), as grading takes them; photos without a label
    map to an empty set."""
    out: dict[int, set[str]] = {}
    for run in runs_since(conn, since):
        new = {p["id"] for p in new_photos(conn, run)}
        if not new:
            continue
        tags = drop_hashtags(conn, run)
        out.update(fresh_labels(pipeline, {i: tags.get(i, set()) for i in new}))
    return out


def unknown_to(pipeline, tag: str) -> bool:
    """A hashtag the vocabulary does not know: it gives no label, and not because it is a scrape
    tag or dropped by the grouping file."""
    resolved = pipeline.resolve(tag)
    return any(r.why == "rare" for r in resolved) and not any(r.label for r in resolved)


def brightness(path: Path) -> float | None:
    """Mean luma (0-255) of an image file, decoded at a reduced scale; None when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("L", (64, 64))
            return float(np.asarray(im.convert("L"), dtype=np.float32).mean())
    except (OSError, ValueError):
        return None


def _brightness(paths) -> list[float]:
    values = (brightness(path) for path in paths)
    return [v for v in values if v is not None]


def _longest_side(rows) -> list[float]:
    return [float(max(r["width"], r["height"])) for r in rows]


# --------------------------------------------------------------------------- the model's side
def _scorer(meta: dict):
    """The ranking of a model file's metadata, as scoring applies it (``inference.Predictor`` without
    its network: only ``rank_scores``)."""
    from .inference import Predictor

    scorer = Predictor.__new__(Predictor)
    scorer.meta, scorer.labels = meta, list(meta["labels"])
    return scorer


@dataclass
class Reference:
    """What a model's drops are compared with, loaded once per grading run (``for_model``). The model's
    *data* are the photos stored when its vocabulary version was built (every photo but the new ones of
    later drops, labelled or not, as a drop's are): their validation split by content hash
    (``labels.is_valid`` at the model's ``valid_pct``) holds its validation predictions, the rest its
    training photos."""

    model_version_id: int
    vocab_version_id: int
    vocab_created_at: datetime
    pipeline: object  # labels.LabelPipeline of the vocabulary version
    labels: list[str]  # the model's output order
    counts: np.ndarray  # training frequency per label
    scorer: object
    thresholds: np.ndarray  # the tuned thresholds in label order (registry.thresholds)
    valid_metrics: dict  # model_versions.metrics (model, baseline, n_images)
    label_images: dict[str, int]  # images per label in the vocabulary data
    n_vocab_images: int
    n_unlabelled: int
    raw_tags: dict[str, int]  # images per raw hashtag in the vocabulary data
    valid_probs: np.ndarray  # the model's stored probabilities on the validation photos of its data
    n_valid: int  # validation photos of its data (some may lack stored probabilities)
    train_sizes: list[float]  # longest side of the training photos of its data
    train_paths: list[Path]  # the training photos whose brightness is the reference (a sample)
    train_brightness: list[float] | None = None  # measured when first needed

    @classmethod
    def for_model(cls, settings, model_version_id: int) -> Reference:
        from sqlalchemy import select

        from . import db, modelfile, registry
        from . import schema as t
        from .labels import LabelPipeline, is_valid

        with db.get_engine(settings).connect() as conn:
            row = registry.row(conn, model_version_id)
            vocab_id = row["vocab_version_id"]
            pipeline = LabelPipeline.for_version(settings, vocab_id)
            valid_pct = pipeline.valid_pct
            labels = list(pipeline.labels)
            thresholds = registry.threshold_row(conn, model_version_id, labels)
            meta = modelfile.read_meta(settings.data_dir / row["artifact_path"])
            if list(meta["labels"]) != labels:
                raise UserError(f"model version {model_version_id}'s model.json lists other labels than its "
                                f"vocabulary version {vocab_id}: the model file does not belong to this database")
            v = conn.execute(select(t.vocab_versions).where(t.vocab_versions.c.id == vocab_id)).mappings().one()
            label_images = dict(conn.execute(select(t.vocab_labels.c.label, t.vocab_labels.c.count)
                                             .where(t.vocab_labels.c.vocab_version_id == vocab_id)).all())
            later = {p["id"] for run in runs_since(conn, _utc(v["created_at"])) for p in new_photos(conn, run)}
            im = t.images.c
            photos = [r for r in conn.execute(select(im.id, im.sha256, im.resized_path, im.width, im.height)
                                              .order_by(im.id)).mappings() if r["id"] not in later]
            valid = [r for r in photos if is_valid(r["sha256"], valid_pct)]
            train = [r for r in photos if not is_valid(r["sha256"], valid_pct)]
            stored = load_probabilities(conn, model_version_id, [r["id"] for r in valid])
        scorer = _scorer(meta)
        if thresholds is None:
            raise UserError(f"model version {model_version_id} has no tuned thresholds: run "
                            f"`instatag evaluate {model_version_id}`")
        counts = np.array([pipeline.counts.get(label, 0) for label in labels], dtype=np.int64)
        valid_probs = [stored[i] for i in sorted(stored)]
        step = max(1, len(train) // BRIGHTNESS_SAMPLE)
        data_dir = settings.data_dir.absolute()
        return cls(model_version_id, vocab_id, _utc(v["created_at"]), pipeline, labels, counts, scorer, thresholds,
                   row["metrics"] or {}, label_images, v["n_images"], v["n_unlabelled"],
                   (v["stats"] or {}).get("raw_tags", {}),
                   np.vstack(valid_probs) if valid_probs else np.zeros((0, len(labels)), np.float32), len(valid),
                   _longest_side(train), [data_dir / r["resized_path"] for r in train[::step]])

    def brightness_values(self) -> list[float]:
        """Brightness of (a sample of) the training photos, measured once."""
        if self.train_brightness is None:
            self.train_brightness = _brightness(self.train_paths)
        return self.train_brightness

    def top1(self, probs: np.ndarray) -> Counter:
        """Images per first-ranked label (the model's ranking)."""
        if not len(probs):
            return Counter()
        first = np.argmax(self.scorer.rank_scores(probs), axis=1)
        return Counter(self.labels[j] for j in first)

    def no_label(self, probs: np.ndarray) -> int:
        """Images with no label at or over its threshold."""
        return int((~(probs >= self.thresholds).any(axis=1)).sum()) if len(probs) else 0


# --------------------------------------------------------------------------- which drops
def champion_vocab_created(conn, model_version_id: int) -> datetime:
    from sqlalchemy import select

    from . import schema as t

    q = (select(t.vocab_versions.c.created_at)
         .join(t.model_versions, t.model_versions.c.vocab_version_id == t.vocab_versions.c.id)
         .where(t.model_versions.c.id == model_version_id))
    return _utc(conn.execute(q).scalar_one())


def started_after(started: datetime, since: datetime) -> bool:
    """Whether a run that started at ``started`` came after a vocabulary built at ``since`` (both to
    the microsecond: vocab.build writes its ``created_at`` itself)."""
    return _utc(started) >= _utc(since)


def runs_since(conn, since: datetime) -> list[int]:
    """Ids of the ingest runs (any status) that started after ``since`` (``started_after``)."""
    from sqlalchemy import select

    from . import schema as t

    r = t.ingest_runs
    return [i for i, started in conn.execute(select(r.c.id, r.c.started_at).order_by(r.c.id))
            if started_after(started, since)]


def fresh_drops(conn, model_version_id: int) -> list[dict]:
    """The finished runs with new posts that started after the model's vocabulary version was
    created (their photos are not in its training or validation data), by id."""
    from sqlalchemy import select

    from . import schema as t

    since = champion_vocab_created(conn, model_version_id)
    r = t.ingest_runs
    rows = conn.execute(select(r).where(r.c.n_posts > 0, r.c.status != "running").order_by(r.c.id)).mappings()
    return [dict(row) for row in rows if started_after(row["started_at"], since)]


def pending(settings, model_version_id: int) -> tuple[list[int], dict[int, str]]:
    """(drops ready to grade with the model, {drop: why it waits}): fresh drops it has not graded
    whose new photos it has all scored (those whose resized file is missing aside)."""
    from sqlalchemy import select

    from . import db
    from . import schema as t

    ready, waiting = [], {}
    data_dir = settings.data_dir.absolute()
    with db.get_engine(settings).connect() as conn:
        graded = set(conn.execute(select(t.drop_evaluations.c.ingest_run_id)
                                  .where(t.drop_evaluations.c.model_version_id == model_version_id)).scalars())
        for run in fresh_drops(conn, model_version_id):
            if run["id"] in graded:
                continue
            photos = new_photos(conn, run["id"])
            scored = load_probabilities(conn, model_version_id, [p["id"] for p in photos])
            unscored = [p for p in photos if p["id"] not in scored and (data_dir / p["resized_path"]).is_file()]
            if not photos:
                waiting[run["id"]] = "no new photo (re-posts only)"
            elif unscored:
                waiting[run["id"]] = (f"{len(unscored)} of its {len(photos)} new photos are not scored by model "
                                      f"version {model_version_id} yet (`instatag score`)")
            else:
                ready.append(run["id"])
    return ready, waiting


# --------------------------------------------------------------------------- grading
def grade(settings, ingest_run_id: int, model_version_id: int, reference: Reference | None = None) -> dict:
    """Grade drop ``ingest_run_id`` with a model: fresh-label metrics and drift figures, stored in
    ``drop_evaluations`` (replacing an earlier grading by the same model); flagged figures are logged
    as warnings. Returns a JSON-able summary (``flagged``, ``reasons``, the headline figures)."""
    from sqlalchemy import delete, insert, select

    from . import db, metrics
    from . import schema as t

    started = time.monotonic()
    ref = reference or Reference.for_model(settings, model_version_id)
    th = drift.Thresholds.from_settings(settings)
    engine = db.get_engine(settings)
    with engine.connect() as conn:
        run = conn.execute(select(t.ingest_runs).where(t.ingest_runs.c.id == ingest_run_id)).mappings().first()
        if run is None:
            raise UserError(f"there is no ingest run {ingest_run_id} (see `instatag drops`)")
        photos = new_photos(conn, ingest_run_id)
        tags = drop_hashtags(conn, ingest_run_id)
        stored = load_probabilities(conn, model_version_id, [p["id"] for p in photos])
    photos = [p for p in photos if p["id"] in stored]
    if not photos:
        raise UserError(f"drop {ingest_run_id}: model version {model_version_id} has scored none of its new photos")
    ids = [p["id"] for p in photos]
    probs = np.vstack([stored[i] for i in ids])
    labels_of = fresh_labels(ref.pipeline, {i: tags.get(i, set()) for i in ids})

    # 1-2. fresh-label evaluation on the labelled new photos
    index = {label: j for j, label in enumerate(ref.labels)}
    labelled = [k for k, i in enumerate(ids) if labels_of[i]]
    y = np.zeros((len(labelled), len(ref.labels)), dtype=bool)
    for row, k in enumerate(labelled):
        y[row, [index[label] for label in labels_of[ids[k]]]] = True
    fresh = {"model": None, "baseline": None}
    if labelled:
        p = probs[labelled]
        res = metrics.evaluate_predictions(y, p, ref.labels, ref.counts, ref.thresholds, ref.scorer.rank_scores(p))
        fresh = {"model": res["model"], "baseline": res["baseline"]}
    valid = ref.valid_metrics.get("model") or {}
    n_valid_images = int(ref.valid_metrics.get("n_images") or ref.n_valid)

    # 3. drift
    label_counts = Counter(label for i in ids for label in labels_of[i])
    unlabelled = len(ids) - len(labelled)
    tag_counts = Counter(tag for i in ids for tag in tags.get(i, ()))
    figures = [
        drift.quality_figure((fresh["model"] or {}).get("dominant_recall@2"), len(labelled),
                             valid.get("dominant_recall@2"), n_valid_images, th),
        drift.mix_figure("tag_mix", "tag mix against the training data",
                         {**ref.label_images, drift.UNLABELLED: ref.n_unlabelled},
                         {**label_counts, drift.UNLABELLED: unlabelled}, th, len(ids), ref.n_vocab_images),
        drift.new_tags_figure(tag_counts, len(ids), ref.raw_tags, ref.n_vocab_images,
                              [tag for tag in tag_counts if unknown_to(ref.pipeline, tag)], th, TOP_TAGS),
        drift.mix_figure("top1_labels", "top-1 labels against the validation predictions", ref.top1(ref.valid_probs),
                         ref.top1(probs), th, len(ids), len(ref.valid_probs)),
        drift.distribution_figure("max_probability", "highest probability against the validation predictions",
                                  ref.valid_probs.max(axis=1) if len(ref.valid_probs) else [], probs.max(axis=1), th),
        drift.share_figure("no_label", "photos with no label over its threshold", ref.no_label(probs), len(ids),
                           ref.no_label(ref.valid_probs), len(ref.valid_probs), th.no_label, th),
        drift.distribution_figure("image_size", "longest side against the training photos", ref.train_sizes,
                                  _longest_side(photos), th, " px"),
        drift.distribution_figure("brightness", "brightness against the training photos",
                                  ref.brightness_values(),
                                  _brightness(settings.data_dir.absolute() / p["resized_path"] for p in photos), th),
    ]
    if not len(ref.valid_probs):
        for fig in figures[3:6]:
            fig["message"] += (f" (model version {model_version_id} has no stored probabilities for its validation "
                               "photos: `instatag score --all`)")
    reasons = drift.flags(figures)
    n_new_tags = figures[2].get("count", 0)  # the one definition: drift.new_tags_figure
    row = {
        "ingest_run_id": ingest_run_id, "model_version_id": model_version_id, "n_posts": run["n_posts"],
        "n_images": len(ids), "n_labelled": len(labelled), "n_new_tags": n_new_tags,
        "dominant_recall_2": (fresh["model"] or {}).get("dominant_recall@2"),
        "valid_dominant_recall_2": valid.get("dominant_recall@2"),
        "baseline_dominant_recall_2": (fresh["baseline"] or {}).get("dominant_recall@2"),
        "map": (fresh["model"] or {}).get("map"), "valid_map": valid.get("map"),
        "flagged": bool(reasons), "reasons": "; ".join(reasons) or None,
        "metrics": {**fresh, "n_images": len(labelled),
                    "validation": {"model": valid, "baseline": ref.valid_metrics.get("baseline") or {},
                                   "n_images": n_valid_images}},
        "drift": {"thresholds": th.as_dict(), "figures": figures, "vocab_version_id": ref.vocab_version_id},
    }
    row = json.loads(json.dumps(row))  # plain JSON values (numpy scalars) for both dialects
    de = t.drop_evaluations
    with engine.begin() as conn:
        conn.execute(delete(de).where(de.c.ingest_run_id == ingest_run_id, de.c.model_version_id == model_version_id))
        conn.execute(insert(de).values(**row))
    summary = {k: row[k] for k in ("ingest_run_id", "model_version_id", "n_posts", "n_images", "n_labelled",
                                   "n_new_tags", "flagged")}
    summary.update({"dominant_recall@2": row["dominant_recall_2"],
                    "valid_dominant_recall@2": row["valid_dominant_recall_2"], "reasons": reasons})
    log.info("drop %d graded by model version %d in %.1f s: %d new photos, %d labelled, dominant_recall@2 %s "
             "(validation %s, baseline %s), %d new tags", ingest_run_id, model_version_id,
             time.monotonic() - started, len(ids), len(labelled), _f(row["dominant_recall_2"]),
             _f(row["valid_dominant_recall_2"]), _f(row["baseline_dominant_recall_2"]), n_new_tags)
    for reason in reasons:
        log.warning("drop %d (model version %d): %s", ingest_run_id, model_version_id, reason)
    return summary


def _f(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def grade_pending(settings) -> list[dict]:
    """Grade every drop ready for the champion (``pending``); their summaries. Nothing without a champion."""
    from . import db, registry

    with db.get_engine(settings).connect() as conn:
        champion = registry.champion_id(conn)
    if champion is None:
        log.info("drops: no champion yet, nothing to grade")
        return []
    ready, waiting = pending(settings, champion)
    for run, why in waiting.items():
        log.info("drop %d not graded yet: %s", run, why)
    if not ready:
        log.info("drops: nothing new to grade for model version %d", champion)
        return []
    mark = time.monotonic()
    ref = Reference.for_model(settings, champion)
    ref.pipeline.require_wordnet()
    log.info("drops: model version %d's reference loaded in %.1f s (WordNet included, once per process)",
             champion, time.monotonic() - mark)
    return [grade(settings, run, champion, ref) for run in ready]


def reasons_of(graded: list[dict]) -> list[str]:
    """'drop N (model version M): reason' for every flag of the graded drops."""
    return [f"drop {g['ingest_run_id']} (model version {g['model_version_id']}): {r}"
            for g in graded for r in g.get("reasons", [])]


# --------------------------------------------------------------------------- is a retrain worth it?
def retrain_check(settings, scheduled: bool = True, reason: str = "") -> tuple[bool, str]:
    """(run?, why) for a retrain. Runs always with ``INSTATAG_RETRAIN_WHEN=always``, for manual runs,
    with a ``reason`` (a drift-started run) and without a champion; with ``changed``, a scheduled run
    needs, since the champion's vocabulary version was created, at least ``retrain_min_new_labelled``
    new photos with a label in it, or a drop the champion graded flagged."""
    from sqlalchemy import select

    from . import db, registry
    from . import schema as t
    from .labels import LabelPipeline

    if reason:
        return True, f"started because: {reason}"
    if settings.retrain_when == "always":
        return True, "INSTATAG_RETRAIN_WHEN is always"
    if not scheduled:
        return True, "a manual run always runs"
    with db.get_engine(settings).connect() as conn:
        champion = registry.champion_id(conn)
        if champion is None:
            return True, "there is no champion yet"
        vocab_id = registry.vocab_version_id(conn, champion)
        drops = fresh_drops(conn, champion)
        tags = {}
        for run in drops:
            new = {p["id"] for p in new_photos(conn, run["id"])}
            tags.update((i, ts) for i, ts in drop_hashtags(conn, run["id"]).items() if i in new)
        de = t.drop_evaluations
        flagged = conn.execute(select(de.c.ingest_run_id).where(de.c.model_version_id == champion, de.c.flagged)
                               .order_by(de.c.ingest_run_id)).scalars().all()
    n_labelled = sum(1 for ls in fresh_labels(LabelPipeline.for_version(settings, vocab_id), tags).values() if ls)
    since = f"since model version {champion}'s vocabulary version {vocab_id}"
    if flagged:
        return True, f"drops {', '.join(map(str, flagged))} were flagged {since} ({n_labelled} new labelled photos)"
    if n_labelled >= settings.retrain_min_new_labelled:
        return True, (f"{n_labelled} new labelled photos in {len(drops)} drops {since} "
                      f"(INSTATAG_RETRAIN_MIN_NEW_LABELLED {settings.retrain_min_new_labelled})")
    return False, (f"nothing changed {since}: {n_labelled} new labelled photos in {len(drops)} drops, fewer than "
                   f"INSTATAG_RETRAIN_MIN_NEW_LABELLED {settings.retrain_min_new_labelled}, and no drop flagged "
                   "(INSTATAG_RETRAIN_WHEN is changed)")


# --------------------------------------------------------------------------- reading
def drop_rows(conn, model_version_id: int | None = None) -> list[dict]:
    """One row per drop with new posts and model that graded it (drops not graded yet: one row without
    figures), oldest first; ``model_version_id`` keeps that model's gradings only."""
    from sqlalchemy import and_, select

    from . import schema as t

    r, de = t.ingest_runs, t.drop_evaluations
    on = r.c.id == de.c.ingest_run_id
    if model_version_id is not None:
        on = and_(on, de.c.model_version_id == model_version_id)
    q = (select(r.c.id, r.c.started_at, r.c.finished_at, r.c.status, r.c.n_posts, r.c.n_images.label("n_new_images"),
                r.c.sources, *(c for c in de.c if c.name != "n_posts"))
         .select_from(r.outerjoin(de, on)).where(r.c.n_posts > 0)
         .order_by(r.c.id, de.c.model_version_id))
    from . import registry

    champion = registry.champion_id(conn)
    since = champion_vocab_created(conn, champion) if champion is not None else None
    rows = []
    for m in conn.execute(q).mappings():
        row = dict(m)
        if row["model_version_id"] is None:
            row["note"] = ("no champion yet" if since is None else
                           f"in model version {champion}'s training data: ingested before its vocabulary version "
                           "was built, so it is never graded by it (a model grades only later drops)"
                           if not started_after(row["started_at"], since) else
                           "waiting: the champion grades a finished drop once it has scored its new photos")
        figures = ((row.get("drift") or {}).get("figures")) or []
        row["flags"] = [FIGURES.get(f["name"], f["name"]) for f in figures if f.get("flagged")]
        row["figures"] = {f["name"]: {**f, "untested": untested(row, f)} for f in figures}
        row["too_few"] = too_few(row)
        rows.append(row)
    return rows


def min_images(row: dict) -> int | None:
    """The photos a graded drop needed before a figure could be flagged (``INSTATAG_DRIFT_MIN_IMAGES``
    when it was graded, stored with its figures); None for a drop not graded."""
    th = ((row.get("drift") or {}).get("thresholds")) or {}
    return th.get("min_images") if row.get("model_version_id") is not None else None


def untested(row: dict, figure: dict) -> bool:
    """Whether a figure of a graded drop rests on fewer photos than the drift tests need (its ``n``:
    the new photos, the labelled ones for quality): it is shown but can never be flagged."""
    need = min_images(row)
    return need is not None and figure.get("n") is not None and figure["n"] < need


def too_few(row: dict) -> str | None:
    """'too few photos to test: 3 < 30' for a graded drop with fewer new photos than the drift tests
    need (none of its figures can be flagged, whatever their size), else None."""
    need = min_images(row)
    if need is None or row.get("n_images") is None or row["n_images"] >= need:
        return None
    return f"too few photos to test: {row['n_images']} < {need}"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def format_table(rows: list[dict]) -> str:
    """The Drops table as text: one line per drop and model."""
    head = (f"{'drop':>5}  {'ingested':16}  {'posts':>6}  {'new':>6}  {'labelled':>8}  {'new tags':>8}  {'model':>5}  "
            f"{'dom.rec@2 %':>11}  {'valid %':>7}  {'baseline %':>10}  {'mAP %':>6}  flags")
    lines = [head]
    for r in rows:
        graded = r.get("model_version_id") is not None
        when = _utc(r["started_at"]).strftime("%Y-%m-%d %H:%M")
        if not graded:
            lines.append(f"{r['id']:>5}  {when:16}  {r['n_posts']:>6}  {r['n_new_images']:>6}  {'':>8}  {'':>8}  "
                         f"{'-':>5}  not graded: {r['note']}")
            continue
        lines.append(
            f"{r['id']:>5}  {when:16}  {r['n_posts']:>6}  {r['n_images']:>6}  {r['n_labelled']:>8}  "
            f"{r['n_new_tags']:>8}  {r['model_version_id']:>5}  {_pct(r['dominant_recall_2']):>11}  "
            f"{_pct(r['valid_dominant_recall_2']):>7}  {_pct(r['baseline_dominant_recall_2']):>10}  "
            f"{_pct(r['map']):>6}  {', '.join(r['flags']) or r['too_few'] or 'none'}")
    return "\n".join(lines)


def describe(row: dict) -> str:
    """Every figure of one graded drop, a line each."""
    lines = [f"drop {row['id']} graded by model version {row['model_version_id']} at "
             f"{_utc(row['graded_at']):%Y-%m-%d %H:%M}: {row['n_posts']} new posts, {row['n_images']} new photos, "
             f"{row['n_labelled']} labelled, {row['n_new_tags']} new tag{'s' * (row['n_new_tags'] != 1)}"]
    if row.get("too_few"):
        lines.append(f"{row['too_few']} (INSTATAG_DRIFT_MIN_IMAGES): no figure below can be flagged, however far "
                     "over its threshold")
    m = row["metrics"]
    if m.get("model"):
        lines.append(f"{'fresh labels':24} {'model':>7} {'baseline':>9} {'validation':>11}")
        for key in ("dominant_recall@1", "dominant_recall@2", "map", "precision@1", "recall@1", "precision@2",
                    "recall@2"):
            lines.append(f"{key:24} {_f(m['model'].get(key)):>7} {_f(m['baseline'].get(key)):>9} "
                         f"{_f(m['validation']['model'].get(key)):>11}")
    lines.append("drift:")
    for name in FIGURES:
        fig = row["figures"].get(name)
        if fig:
            lines.append(f"  {'FLAG ' if fig['flagged'] else '     '}{fig['message']}")
    tags = [r for r in (row["figures"].get("new_tags") or {}).get("tags") or [] if r["rise"] > 0]
    if tags:
        some = f"the {len(tags)} " if len(tags) < row["n_new_tags"] else ""
        lines.append(f"  new tags (hashtags the vocabulary does not know whose share rose), {some}fastest rising: "
                     + ", ".join(f"#{r['tag']} {r['ref_share']:.1%} -> {r['drop_share']:.1%}" for r in tags))
    return "\n".join(lines)


def write_plots(rows: list[dict], folder: Path) -> list[Path]:
    """The Drops time series as PNG files in ``folder`` (``plots.drop_quality``, ``plots.drop_drift``)."""
    from . import plots
    from .files import write_atomic

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, png in (("drops_quality.png", plots.drop_quality(rows)), ("drops_drift.png", plots.drop_drift(rows))):
        write_atomic(folder / name, png)
        out.append(folder / name)
    return out


# --------------------------------------------------------------------------- CLI
def add_cli(sub) -> None:
    p = sub.add_parser(
        "drops",
        help="grade new drops with the champion (fresh labels, drift) and print the Drops table",
        description="Each ingest run is a drop. First grade the drops the champion has scored and not graded "
        "yet: its predictions on their new photos against the labels their own hashtags give (dominant_recall@2, "
        "mAP, precision@k/recall@k beside the popularity baseline and its validation figures), and drift of the "
        "tag mix, new tags (hashtags the vocabulary does not know whose share rose), predictions and image "
        "properties, each against its INSTATAG_DRIFT_* threshold. Then print one row per drop; a drop with fewer "
        "new photos than INSTATAG_DRIFT_MIN_IMAGES says it is too few to test. See docs/drops.md.",
    )
    p.add_argument("drop", nargs="?", type=int, metavar="DROP", help="print every figure of this drop instead")
    p.add_argument("--no-grade", dest="grade", action="store_false", help="only print; grade nothing")
    p.add_argument("--model", type=int, metavar="VERSION", help="only gradings by this model version")
    p.add_argument("--plots", type=Path, metavar="DIR", help="also write the time series as PNG files into DIR")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(handler=_cli)


def _cli(args, settings) -> int:
    from . import db

    if args.grade:
        for g in grade_pending(settings):
            print(f"graded drop {g['ingest_run_id']} with model version {g['model_version_id']}: "
                  + ("; ".join(g["reasons"]) if g["flagged"] else "no threshold crossed"))
    with db.get_engine(settings).connect() as conn:
        rows = drop_rows(conn, args.model)
    if args.drop is not None:
        mine = [r for r in rows if r["id"] == args.drop]
        if not mine:
            raise UserError(f"there is no drop {args.drop} with new posts (see `instatag drops`)")
        print("\n\n".join(describe(r) if r.get("model_version_id") is not None else
                          f"drop {r['id']}: not graded: {r['note']}" for r in mine))
        return 0
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "figures"} for r in rows], default=str, indent=1))
    elif not rows:
        print("no drop yet: `instatag ingest` records each run as a drop")
    else:
        print(format_table(rows))
    if args.plots:
        for path in write_plots(rows, args.plots):
            print(f"wrote {path}")
    return 0
