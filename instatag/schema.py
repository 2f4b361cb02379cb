"""The one storage schema (SQLAlchemy 2 Core tables), for PostgreSQL and SQLite.

Changes to it are Alembic migrations under ``instatag/migrations`` (``instatag db revision``);
``tests/test_schema.py`` fails when this file and the migrations disagree.
The views over it live in ``sql/views.sql``.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Id = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only


def _now():
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


# --------------------------------------------------------------------------- ingest
#: one run of ``instatag ingest`` (or of the ingest DAG's task): a *drop*; its new posts carry its id
ingest_runs = Table(
    "ingest_runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    #: set from the ingesting process's clock (UTC): a drop is fresh for every vocabulary version created
    #: before it started (docs/drops.md)
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    #: running | succeeded | failed (running with the process gone: interrupted)
    Column("status", String(16), nullable=False),
    #: the folders and manifests it read
    Column("sources", JSON, nullable=False),
    #: the Airflow DAG run that ran it (AIRFLOW_CTX_DAG_RUN_ID), else "cli"
    Column("started_by", String(255)),
    #: new posts and new images it added; its IngestReport as JSON
    Column("n_posts", Integer, nullable=False, default=0),
    Column("n_images", Integer, nullable=False, default=0),
    Column("report", JSON),
)

images = Table(
    "images",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("sha256", String(64), nullable=False, unique=True),
    #: stem of the first post that brought the image (e.g. 2026-11-01_06-01-38_UTC)
    Column("post", String(255), nullable=False),
    Column("source_path", Text, nullable=False),
    Column("format", String(16), nullable=False),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("taken_at", DateTime(timezone=True)),
    Column("caption", Text),
    #: paths relative to the data dir
    Column("original_path", Text, nullable=False),
    Column("resized_path", Text, nullable=False),
    Column("ingested_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
#: the tag browser's unfiltered page, newest post first
Index("ix_images_taken_at", images.c.taken_at, images.c.id)

posts = Table(
    "posts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("image_id", ForeignKey("images.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("post", String(255), nullable=False),
    Column("source_path", Text, nullable=False, unique=True),
    Column("shortcode", String(64)),
    Column("owner_id", String(64)),
    Column("taken_at", DateTime(timezone=True)),
    Column("caption", Text),
    Column("ingested_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    #: the legacy encoding the caption file was decoded from (e.g. cp1252); NULL for UTF-8 / UTF-16
    Column("caption_encoding", String(32)),
    #: size, mtime and ctime (ns) of the file the caption was read from (.txt, else the metadata),
    #: as last read: a re-run that sees them change reads the caption again (edited captions)
    Column("caption_file_size", BigInteger),
    Column("caption_file_mtime_ns", BigInteger),
    Column("caption_file_ctime_ns", BigInteger),
    #: the ingest run (drop) that added the post; NULL for posts ingested before runs were recorded
    Column("ingest_run_id", ForeignKey("ingest_runs.id", ondelete="SET NULL"), index=True),
)
#: a post's predicted tags by its name (view predicted_tags)
Index("ix_posts_post", posts.c.post)

post_hashtags = Table(
    "post_hashtags",
    metadata,
    Column("post_id", ForeignKey("posts.id", ondelete="CASCADE"), primary_key=True),
    Column("tag", String(255), primary_key=True),
    Column("position", Integer, nullable=False),
    #: True for the scrape's own search tags (recorded, never labels)
    Column("is_scrape_tag", Boolean, nullable=False, default=False),
)
Index("ix_post_hashtags_tag", post_hashtags.c.tag)

ingest_errors = Table(
    "ingest_errors",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("path", Text, nullable=False),
    Column("reason", String(64), nullable=False),
    Column("detail", Text),
    Column("first_seen_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("seen_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("path", "reason", name="uq_ingest_errors_path_reason"),
)

# --------------------------------------------------------------------------- vocabulary
vocab_versions = Table(
    "vocab_versions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    _now(),
    #: the grouping config as applied, and its sha256 (same posts + config -> same vocabulary)
    Column("config", JSON, nullable=False),
    Column("config_sha256", String(64), nullable=False),
    Column("n_posts", Integer, nullable=False),
    Column("n_images", Integer, nullable=False),
    Column("n_unlabelled", Integer, nullable=False),
    Column("n_raw_tags", Integer, nullable=False),
    Column("n_lemmas", Integer, nullable=False),
    Column("n_labels", Integer, nullable=False),
    #: frequency tables (raw tags, lemmas, labels) and the hashtag splits, for the report
    Column("stats", JSON, nullable=False),
    #: share of the images in the validation split (``labels.is_valid``): every split of this version's
    #: images (training, evaluation, report, drops) uses it; written by ``vocab.build_vocab``
    Column("valid_pct", Float, nullable=False),
)

vocab_labels = Table(
    "vocab_labels",
    metadata,
    Column("vocab_version_id", ForeignKey("vocab_versions.id", ondelete="CASCADE"), primary_key=True),
    Column("label", String(255), primary_key=True),
    #: position of the label in the model's output
    Column("idx", Integer, nullable=False),
    #: number of images carrying the label
    Column("count", Integer, nullable=False),
    Column("members", JSON, nullable=False),
)

image_labels = Table(
    "image_labels",
    metadata,
    Column("vocab_version_id", ForeignKey("vocab_versions.id", ondelete="CASCADE"), primary_key=True),
    Column("image_id", ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    Column("label", String(255), primary_key=True),
)

# --------------------------------------------------------------------------- training and models
training_runs = Table(
    "training_runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("vocab_version_id", ForeignKey("vocab_versions.id"), nullable=False),
    Column("params", JSON, nullable=False),
    #: running | succeeded | failed
    Column("status", String(16), nullable=False),
    Column("error", Text),
    #: lr_find curve (lrs, losses) and the suggested learning rate
    Column("lr_find", JSON),
    Column("device", String(64)),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True)),
    #: the training process (os.getpid(), socket.gethostname()) and its last sign of life (start, lr_find,
    #: every epoch): a run left "running" by a killed process is told by them (instatag.train.stale_reason)
    Column("pid", Integer),
    Column("host", String(255)),
    Column("heartbeat_at", DateTime(timezone=True)),
)

training_epochs = Table(
    "training_epochs",
    metadata,
    Column("training_run_id", ForeignKey("training_runs.id", ondelete="CASCADE"), primary_key=True),
    #: running epoch number across both phases, from 0
    Column("epoch", Integer, primary_key=True),
    #: frozen | unfrozen
    Column("phase", String(16), nullable=False),
    Column("train_loss", Float),
    Column("valid_loss", Float),
    Column("metrics", JSON, nullable=False),
    Column("images_seen", BigInteger, nullable=False),
    Column("seconds", Float, nullable=False),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("training_run_id", ForeignKey("training_runs.id"), unique=True),
    Column("vocab_version_id", ForeignKey("vocab_versions.id"), nullable=False),
    Column("arch", String(64), nullable=False),
    Column("params", JSON, nullable=False),
    Column("metrics", JSON),
    #: relative to the data dir; the file's sha256 is verified on every load
    Column("artifact_path", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    #: candidate | champion | retired
    Column("status", String(16), nullable=False, default="candidate"),
    _now(),
    Column("promoted_at", DateTime(timezone=True)),
)
Index("ix_model_versions_status", model_versions.c.status)

label_metrics = Table(
    "label_metrics",
    metadata,
    Column("model_version_id", ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True),
    Column("label", String(255), primary_key=True),
    Column("precision", Float),
    Column("recall", Float),
    Column("ap", Float),
    Column("support", Integer, nullable=False),
    Column("threshold", Float),
    #: the popularity baseline's precision, recall and AP for this label
    Column("baseline", JSON),
)

promotion_decisions = Table(
    "promotion_decisions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("candidate_id", ForeignKey("model_versions.id"), nullable=False),
    Column("champion_id", ForeignKey("model_versions.id")),
    #: promoted | rejected | rollback | manual
    Column("decision", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("forced", Boolean, nullable=False, default=False),
    Column("comparison", JSON),
    Column("decided_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# --------------------------------------------------------------------------- predictions
predictions = Table(
    "predictions",
    metadata,
    Column("model_version_id", ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True),
    Column("image_id", ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    Column("label", String(255), primary_key=True),
    Column("probability", Float, nullable=False),
    Column("rank", Integer, nullable=False),
    Column("scored_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
Index("ix_predictions_label_probability", predictions.c.model_version_id, predictions.c.label,
      predictions.c.probability)
Index("ix_predictions_image", predictions.c.image_id)

# --------------------------------------------------------------------------- corrections
label_corrections = Table(
    "label_corrections",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("image_id", ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
    #: a label of the vocabulary the person saw (checked when recorded)
    Column("label", String(255), nullable=False),
    #: confirmed | rejected; append-only: the newest row per (image_id, label) counts (view label_verdicts)
    Column("verdict", String(16), nullable=False),
    #: the Airflow user name (web) or the CSV's user column (feedback import)
    Column("user", String(255), nullable=False),
    #: the model version whose predictions were shown (NULL: imported without one)
    Column("model_version_id", ForeignKey("model_versions.id", ondelete="SET NULL")),
    _now(),
)
Index("ix_label_corrections_image_label", label_corrections.c.image_id, label_corrections.c.label,
      label_corrections.c.id)


#: every label's probability as the model gave it (scoring writes it beside ``predictions``, which keeps
#: only the tags): what grading a drop and its drift figures read (instatag.drops)
image_probabilities = Table(
    "image_probabilities",
    metadata,
    Column("model_version_id", ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True),
    Column("image_id", ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    #: float32 little-endian, one per label in the model's output order (model.json ``labels``)
    Column("probs", LargeBinary, nullable=False),
    Column("scored_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# --------------------------------------------------------------------------- drops
#: a drop graded by a model: the fresh-label evaluation of its new photos and its drift figures
drop_evaluations = Table(
    "drop_evaluations",
    metadata,
    Column("ingest_run_id", ForeignKey("ingest_runs.id", ondelete="CASCADE"), primary_key=True),
    Column("model_version_id", ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True),
    Column("graded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    #: the drop's new posts; its new photos the model scored; those with a label in the model's vocabulary
    Column("n_posts", Integer, nullable=False),
    Column("n_images", Integer, nullable=False),
    Column("n_labelled", Integer, nullable=False),
    #: distinct hashtags of the drop that no post of the model's vocabulary version carried
    Column("n_new_tags", Integer, nullable=False),
    #: dominant_recall@2 on the fresh labels; the model's own on its validation split; the popularity
    #: baseline's on the fresh labels; mAP on the fresh labels and on the validation split
    Column("dominant_recall_2", Float),
    Column("valid_dominant_recall_2", Float),
    Column("baseline_dominant_recall_2", Float),
    Column("map", Float),
    Column("valid_map", Float),
    #: whether a figure crossed its threshold, and which ("; "-separated)
    Column("flagged", Boolean, nullable=False),
    Column("reasons", Text),
    #: {"model", "baseline"} summaries on the fresh labels (instatag.metrics) and "validation"
    Column("metrics", JSON, nullable=False),
    #: every drift figure with its test, p-value, threshold and flag (instatag.drift)
    Column("drift", JSON, nullable=False),
)
