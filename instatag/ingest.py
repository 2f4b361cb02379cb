"""Ingest: scraper drop folders and manifests → images, posts, post_hashtags, ingest_errors.

``ingest(settings, sources)`` finds the posts (instaloader's layout, or a CSV / JSON Lines
manifest), skips post files already in the database, then reads, hashes, validates and
resizes the photos in worker processes (``imagestore.store_image``) and writes the rows
in the parent in batches. Each batch is one transaction whose inserts use the unique
constraints (``ON CONFLICT DO NOTHING``), so concurrent ingests of overlapping folders
create no duplicate and no partial post. A photo already in the store under its content
hash is a re-post: a new ``posts`` row pointing at the existing image.

Nothing is ever deleted or moved from a source folder. A file that cannot be used goes to
``ingest_errors`` with a stable reason (see ``REASONS`` and docs/ingest.md); instaloader's own
files that belong to no post are skipped and counted (``SKIPPED``). A re-run stats the caption
file of every post ingested before and reads the captions that changed again (``update_captions``).

This module runs the job; its three parts live beside it: ``ingest_sources`` walks the folders
and manifests (``discover``), ``ingest_read`` reads one post in a decoding worker
(``process_post``), ``ingest_write`` writes the batches and the run's row (``write_batch``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import closing, suppress
from functools import partial
from pathlib import Path

from .errors import UserError
from .hashtags import scrape_tag_set
from .ingest_read import MAX_IMAGE_BYTES, Outcome, PostFile, Problem, as_text, process_post
from .ingest_sources import MANIFEST_EXTS, discover
from .ingest_write import (
    BATCH,
    IngestReport,
    already_ingested,
    count_notes,
    edited_captions,
    finish_run,
    start_run,
    update_captions,
    write_batch,
)
from .progress import progress
from .settings import Settings

log = logging.getLogger(__name__)

#: below this many posts a process pool costs more than it saves
PARALLEL_MIN = 200

REASONS = {
    "empty_file": "the photo file has 0 bytes",
    "truncated_image": "the photo's data ends early",
    "corrupt_image": "the photo's header or data cannot be decoded",
    "not_an_image": "no image format recognised (e.g. an HTML page named .jpg)",
    "unsupported_format": "not a photo, caption or metadata file, or an image format not accepted",
    "too_many_pixels": "width × height over INSTATAG_MAX_PIXELS (decompression bomb guard)",
    "file_too_large": f"the photo file is over {MAX_IMAGE_BYTES // 2**20} MiB",
    "caption_without_photo": "a caption .txt with no photo of the same name",
    "metadata_without_photo": "a readable post's .json(.xz) with no photo of the same name",
    "unreadable_caption": "the caption is binary, over 1 MiB, or in no encoding that can be told apart",
    "unreadable_metadata": "the .json(.xz) metadata cannot be decompressed or parsed",
    "unreadable_folder": "a folder cannot be listed",
    "unreadable_file": "a file cannot be opened or read",
    "symlink_loop": "a symbolic link that leads back to itself or to a folder above it",
    "dangling_symlink": "a symbolic link to nothing",
    "missing_file": "a manifest row names a photo that does not exist",
    "bad_manifest_row": "a manifest row without an image, or with an unusable value (e.g. an unreadable tag list)",
    "unexpected_error": "anything else (a bug: please report it with the detail)",
}

#: instaloader's files that belong to no post, skipped without an ``ingest_errors`` row and counted



# --------------------------------------------------------------------------- the run


def _workers(settings: Settings, workers: int | None, n: int) -> int:
    """Decoding processes for ``n`` photos: one per core unless told, none for small runs."""
    w = workers or settings.ingest_workers or len(os.sched_getaffinity(0))
    return 1 if n < PARALLEL_MIN or w == 1 else min(w, n)


def _outcomes(todo: list[PostFile], fn, n_workers: int):
    """``fn`` of each post, in order: in this process, or in ``n_workers`` worker processes
    (``procpool``: they start clean under any parent, Airflow's task processes included)."""
    if n_workers == 1:
        yield from map(fn, todo)
        return
    from .procpool import imap

    yield from imap(fn, todo, n_workers, chunksize=max(1, min(32, len(todo) // (n_workers * 8))))


def _write(engine, batch: list[Outcome], problems: list[Problem], report: IngestReport) -> None:
    """``write_batch`` in a transaction of its own. When it fails, the photos of the batch (and
    of those decoded meanwhile) stay in the image store without rows; nothing is deleted, since
    another ingest may have committed rows for the same content-addressed files. The next run
    adopts them: their posts are not ingested yet, ``store_image`` finds their files and keeps
    them, and the rows are added."""
    try:
        with engine.begin() as conn:
            write_batch(conn, batch, problems, report)
    except Exception:
        log.error("ingest: writing %d posts to the database failed; the photos already in the image store "
                  "stay there and the next ingest of these posts adds their rows", len(batch))
        raise


def ingest(settings: Settings, sources: list[Path] | None = None, workers: int | None = None) -> IngestReport:
    """Ingest ``sources`` (folders or manifests; default ``settings.drop_dirs``) into the database."""
    start = time.monotonic()
    sources = [Path(s) for s in (sources or settings.drop_dirs)]
    if not sources:
        raise UserError("nothing to ingest: give a SOURCE folder or manifest, or set INSTATAG_DROP_DIRS")
    for src in sources:
        if not src.exists():
            raise UserError(f"{src}: no such folder or manifest")
        if src.is_file() and src.suffix.lower() not in MANIFEST_EXTS:
            raise UserError(f"{src}: a SOURCE is a folder or a .csv / .jsonl manifest")
    from sqlalchemy import inspect

    from . import db

    engine = db.get_engine(settings)
    if not inspect(engine).has_table("posts"):
        raise UserError("the database has no instatag tables: run `instatag db upgrade` first")
    report = IngestReport(ingest_run_id=start_run(engine, sources))
    try:
        _ingest(settings, engine, sources, workers, report)
    except BaseException:
        with suppress(Exception):  # the database may be what failed: the original error is the one to see
            finish_run(engine, report, "failed")
        raise
    report.seconds = time.monotonic() - start
    finish_run(engine, report, "succeeded")
    log.info("%s", report.summary())
    return report


def _ingest(settings: Settings, engine, sources: list[Path], workers: int | None, report: IngestReport) -> None:
    """The run itself: new posts, then the captions edited since; counts go to ``report``."""
    found, problems = discover(sources, report.skipped)
    done = already_ingested(engine, found)
    todo = [f for f in found if as_text(f.image) not in done]
    edited = edited_captions(found, done)
    report.duplicates += len(found) - len(todo)
    n_workers = _workers(settings, workers, len(todo))
    log.info("ingest: %d photos found, %d new, %d already ingested; %d worker(s)",
             len(found), len(todo), len(found) - len(todo), n_workers)
    scrape = scrape_tag_set(settings.scrape_tags)
    fn = partial(process_post, data_dir=Path(os.path.abspath(settings.data_dir)), side=settings.resized_side,
                 max_pixels=settings.max_pixels, scrape=scrape, link=settings.store_originals == "link",
                 comment_tags=settings.owner_comment_tags)
    batch: list[Outcome] = []
    copied = 0
    with closing(_outcomes(todo, fn, n_workers)) as outcomes:  # closed on an error: the workers stop
        for outcome in progress(outcomes, total=len(todo), desc="ingest", unit="photo"):
            copied += bool(outcome.stored and outcome.stored.copied)
            if outcome.notes and outcome.stored and not outcome.problems:
                count_notes(report, outcome.notes)
            batch.append(outcome)
            if len(batch) >= BATCH:
                _write(engine, batch, [], report)
                batch = []
    _write(engine, batch, problems, report)
    if edited:
        log.info("ingest: reading the captions of %d posts ingested before again: their caption file changed "
                 "(or was not recorded yet)", len(edited))
        update_captions(engine, edited, scrape, settings.owner_comment_tags, report)
    if copied and settings.store_originals == "link":
        log.info("ingest: %d originals copied into the store, not hard-linked: their folders are on another "
                 "filesystem than the data dir, or links are not allowed there", copied)


# --------------------------------------------------------------------------- CLI


def add_cli(sub) -> None:
    p = sub.add_parser(
        "ingest",
        help="ingest scraped posts (instaloader folders or CSV/JSONL manifests) into the database",
        description="Read instaloader drop folders (<stamp>_UTC.jpg|.png|.webp with .txt caption and optional "
        ".json.xz metadata, walked recursively; instaloader's files of no post are skipped and counted) or "
        "manifests (.csv / .jsonl: image, caption or tags, post, taken_at). New photos go to the "
        "content-addressed store with a resized copy; re-runs and re-posts add no image, and re-runs update "
        "the hashtags of captions edited since; unusable files are recorded in ingest_errors with a reason, "
        "never moved or deleted. See docs/ingest.md.",
    )
    p.add_argument("sources", nargs="*", type=Path, metavar="SOURCE",
                   help="a drop folder or a manifest file (default: INSTATAG_DROP_DIRS)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="decoding processes (default INSTATAG_INGEST_WORKERS, 0: one per core)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_cli)


def _cli(args, settings) -> int:
    if args.workers is not None and args.workers < 0:
        raise UserError("--workers must be 0 (one per core) or more")
    report = ingest(settings, args.sources, workers=args.workers)
    print(json.dumps(report.as_dict()) if args.json else report.summary())
    return 0
