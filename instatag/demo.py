"""``instatag demo``: the whole job end to end, in process, on the embedded default.

It runs the same functions the Airflow tasks run (``instatag.pipeline``), in the order of the
DAGs: ingest → vocabulary → train → evaluate → promote → score → report, on SQLite under the
data dir, with no Airflow server. Without ``--source`` it first writes a small synthetic scrape
(``instatag.sample``) whose tags a model can learn from the pixels.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .errors import UserError
from .settings import Settings

log = logging.getLogger(__name__)

SAMPLE_POSTS = 360


def add_cli(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole job end to end in process (ingest, vocab, train, evaluate, promote, score, report)",
        description=__doc__,
    )
    p.add_argument("--source", type=Path, action="append",
                   help="scrape folder(s) to ingest (default: generate a synthetic sample scrape)")
    p.add_argument("--posts", type=int, default=SAMPLE_POSTS, help="posts in the synthetic sample scrape")
    p.add_argument("--preset", default="default", help="training preset (see `instatag train --help`)")
    p.add_argument("--epochs", type=int, help="override the preset's unfrozen epochs")
    p.add_argument("--freeze-epochs", type=int, help="override the preset's frozen epochs")
    p.add_argument("--lr", help="override the preset's learning rate: auto (lr_find) or a number")
    p.add_argument("--min-count", metavar="N|P%", help="override the grouping file's min_count: a number of "
                   "images or a share of the images with a candidate label (95 or 5%%)")
    p.set_defaults(handler=_run)


def _run(args, settings: Settings) -> int:
    summary = run_demo(settings, sources=args.source, posts=args.posts, preset=args.preset,
                       epochs=args.epochs, freeze_epochs=args.freeze_epochs, lr=args.lr,
                       min_count=args.min_count)
    print(format_summary(summary))
    return 0


def run_demo(settings: Settings, sources: list[Path] | None = None, posts: int = SAMPLE_POSTS,
             preset: str = "default", epochs: int | None = None, freeze_epochs: int | None = None,
             lr: str | None = None, min_count: int | str | None = None) -> dict:
    """Run every stage once with ``settings`` (passed to each ``instatag.pipeline`` function; the
    process environment is neither read nor changed); returns what the summary prints."""
    from . import db, pipeline, sample

    started = time.monotonic()
    if not sources:
        folder = settings.data_dir / "sample-scrape"
        if not folder.is_dir():
            log.info("writing a synthetic sample scrape of %d posts to %s", posts, folder)
            sample.make_scrape(folder, n_posts=posts)
        sources = [folder]
        if min_count is None:
            min_count = 5
    missing = [str(s) for s in sources if not Path(s).exists()]
    if missing:
        raise UserError(f"no such source: {', '.join(missing)}")

    steps = {}
    db.upgrade(settings)
    steps["ingest"] = pipeline.ingest_drops([str(s) for s in sources], settings=settings)
    vocab_id = pipeline.build_vocabulary(min_count=min_count, settings=settings)
    params = {"preset": preset}
    if epochs is not None:
        params["epochs"] = epochs
    if freeze_epochs is not None:
        params["freeze_epochs"] = freeze_epochs
    if lr is not None:
        params["lr"] = lr if lr == "auto" else float(lr)
    model_id = pipeline.train_model(vocab_id, settings=settings, **params)
    steps["evaluate"] = pipeline.evaluate_model(model_id, settings=settings)
    steps["promote"] = pipeline.promote_model(model_id, settings=settings)
    steps["score"] = [pipeline.score_shard(0, 1, all_images=True, settings=settings)]
    report = pipeline.make_report(model_id, settings=settings)
    return {
        "settings": settings,
        "vocab_version": vocab_id,
        "model_version": model_id,
        "report": report,
        "seconds": time.monotonic() - started,
        **steps,
    }


def format_summary(s: dict) -> str:
    from sqlalchemy import func, select

    from . import db
    from . import schema as t

    settings: Settings = s["settings"]
    engine = db.get_engine(settings)
    with engine.connect() as conn:
        n_images = conn.execute(select(func.count()).select_from(t.images)).scalar()
        n_errors = conn.execute(select(func.count()).select_from(t.ingest_errors)).scalar()
        labels = conn.execute(
            select(t.vocab_labels.c.label, t.vocab_labels.c.count)
            .where(t.vocab_labels.c.vocab_version_id == s["vocab_version"])
            .order_by(t.vocab_labels.c.idx)
        ).all()
        n_pred = conn.execute(select(func.count()).select_from(t.predictions)).scalar()
    metrics = s["evaluate"]
    model, base = metrics.get("model", {}), metrics.get("baseline", {})
    lines = [
        "",
        f"instatag demo finished in {s['seconds']:.0f} s",
        f"  database      {settings.database_url}",
        f"  images        {n_images} ingested, {n_errors} files rejected (table ingest_errors)",
        f"  vocabulary    version {s['vocab_version']}: {len(labels)} labels: "
        + ", ".join(f"{label} ({n})" for label, n in labels),
        f"  model         version {s['model_version']}: {s['promote'].get('reason', '')}",
        "  metrics       model    popularity baseline",
    ]
    for key in ("dominant_recall@1", "dominant_recall@2", "map", "micro_f1", "recall@2"):
        if key in model:
            lines.append(f"    {key:18} {model[key]:.3f}    {base.get(key, float('nan')):.3f}")
    lines += [
        f"  predictions   {n_pred} rows (view predicted_tags shows the champion's)",
        f"  report        {s['report']}",
        "",
        "Try these queries:",
        "  instatag sql sql/examples/top_tags_since.sql -p since=2000-01-01",
        f"  instatag sql sql/examples/images_with_tag.sql -p tag={labels[0][0] if labels else 'cake'}"
        " -p min_probability=0.5",
        "  instatag sql sql/examples/tag_cooccurrence.sql",
    ]
    return "\n".join(lines)
