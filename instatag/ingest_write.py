"""Ingest, writing: batches of read posts → images, posts, post_hashtags, ingest_errors; the run's row; edited captions.

``write_batch`` is one transaction per batch whose inserts use the unique constraints
(``ON CONFLICT DO NOTHING``), so concurrent ingests of overlapping folders create no duplicate and
no partial post; bulk rows go through ``db.copy_rows``. ``edited_captions`` picks the posts ingested
before whose caption file changed, ``update_captions`` reads and stores them again. ``start_run`` /
``finish_run`` keep the drop's ``ingest_runs`` row. ``IngestReport`` holds what a run counted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from .ingest_read import Outcome, PostFile, Problem, as_text, read_post_text, stat_key
from .ingest_sources import SKIPPED

# SQLAlchemy and the schema are imported inside the functions: the CLI imports this module (through
# ingest) for every command, `instatag --help` included, and should not pay for them.

#: rows per database transaction
BATCH = 500


@dataclass
class IngestReport:
    """What a run did. ``accepted``: new images; ``reposts``: new posts of an image already
    stored; ``duplicates``: post files ingested before (same path); ``rejected``: files per reason;
    ``skipped``: instaloader files that belong to no post, per kind (``SKIPPED``); ``notes``:
    what was noticed about accepted posts, per kind (``NOTES``); ``ingest_run_id``: the run's row in
    ``ingest_runs`` (the drop; its new posts carry the id)."""

    accepted: int = 0
    reposts: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    ingest_run_id: int | None = None

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    def summary(self) -> str:
        line = (f"ingest: {self.accepted} new images, {self.reposts} re-posts, {self.duplicates} already "
                f"ingested, {self.n_rejected} files rejected in {self.seconds:.1f}s")
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.rejected.items()))
        line = f"{line} ({reasons}; see table ingest_errors)" if reasons else line
        if self.notes:
            line += "; " + ", ".join(f"{k} {n}" for k, n in sorted(self.notes.items()))
        if self.skipped:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.skipped.items()))
            line += f"; {sum(self.skipped.values())} instaloader files of no post skipped ({kinds})"
        return line

    def as_dict(self) -> dict:
        return {"accepted": self.accepted, "reposts": self.reposts, "duplicates": self.duplicates,
                "rejected": dict(sorted(self.rejected.items())), "skipped": dict(sorted(self.skipped.items())),
                "notes": dict(sorted(self.notes.items())), "seconds": round(self.seconds, 3),
                "ingest_run_id": self.ingest_run_id}

# --------------------------------------------------------------------------- database


def _insert(conn, table):
    """INSERT with ON CONFLICT support for the connection's dialect."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def already_ingested(engine, files: list[PostFile]) -> dict[str, tuple | None]:
    """{source_path: the caption file's ``stat_key`` recorded (None: none)} of the posts of ``files``
    already in the database."""
    from sqlalchemy import select

    from .schema import posts

    paths = [as_text(f.image) for f in files]
    found: dict[str, tuple | None] = {}
    c = posts.c
    with engine.connect() as conn:
        for i in range(0, len(paths), 500):
            chunk = paths[i:i + 500]
            q = (select(c.source_path, c.caption_file_size, c.caption_file_mtime_ns, c.caption_file_ctime_ns)
                 .where(c.source_path.in_(chunk)))
            found.update((path, None if size is None else (size, mtime, ctime))
                         for path, size, mtime, ctime in conn.execute(q))
    return found


_IMAGE_COLUMNS = ("sha256", "post", "source_path", "format", "width", "height", "taken_at", "caption",
                  "original_path", "resized_path")
_POST_COLUMNS = ("image_id", "post", "source_path", "shortcode", "owner_id", "taken_at", "caption",
                 "caption_encoding", "caption_file_size", "caption_file_mtime_ns", "caption_file_ctime_ns")


@cache
def _batch_table():
    """The temporary table one batch's accepted posts are copied into (column types from the schema)."""
    from sqlalchemy import Boolean, Column, MetaData, Table

    from .schema import images, posts

    columns = [*(images.c[name] for name in _IMAGE_COLUMNS), posts.c.shortcode, posts.c.owner_id,
               *(posts.c[name] for name in _POST_COLUMNS[7:])]
    return Table("ingest_batch", MetaData(), *(Column(c.name, c.type) for c in columns),
                 Column("first_of_image", Boolean), prefixes=["TEMPORARY"])


def _insert_images_and_posts(conn, good: list[Outcome], paths: list[str],
                             ingest_run_id: int | None = None) -> tuple[int, dict[str, int]]:
    """Copy the accepted posts into the batch table; from it one INSERT ... SELECT adds the new
    images, one the new posts of run ``ingest_run_id`` (``ON CONFLICT DO NOTHING`` both). Returns
    (images added, {source_path: post id} of the posts added)."""
    from sqlalchemy import literal, select, true

    from . import db
    from .schema import images, posts

    batch, seen, rows = _batch_table(), set(), []
    for o, path in zip(good, paths, strict=True):
        s = o.stored
        rows.append((s.sha256, as_text(o.file.post)[:255], path, s.format, s.width, s.height, o.taken_at, o.caption,
                     s.original_path, s.resized_path, o.shortcode, o.owner_id, o.caption_encoding,
                     *(o.caption_stat or (None, None, None)), s.sha256 not in seen))
        seen.add(s.sha256)
    batch.drop(conn, checkfirst=True)  # left on a pooled SQLite connection by a failed batch
    batch.create(conn)
    db.copy_rows(conn, batch, rows)
    new_images = (select(*(batch.c[name] for name in _IMAGE_COLUMNS)).where(batch.c.first_of_image)
                  .order_by(batch.c.sha256))  # one lock order in every process: no deadlock
    stmt = _insert(conn, images).from_select(_IMAGE_COLUMNS, new_images)
    inserted = len(conn.execute(stmt.on_conflict_do_nothing(index_elements=["sha256"]).returning(images.c.id)).all())
    new_posts = (select(images.c.id, *(batch.c[name] for name in _POST_COLUMNS[1:]),
                        literal(ingest_run_id, posts.c.ingest_run_id.type))
                 .join_from(batch, images, images.c.sha256 == batch.c.sha256)
                 .where(true())  # SQLite parses INSERT ... SELECT ... ON CONFLICT only with a WHERE
                 .order_by(batch.c.source_path))
    stmt = _insert(conn, posts).from_select((*_POST_COLUMNS, "ingest_run_id"), new_posts)
    new = dict(conn.execute(stmt.on_conflict_do_nothing(index_elements=["source_path"])
                            .returning(posts.c.source_path, posts.c.id)).all())
    batch.drop(conn)
    return inserted, new


def write_batch(conn, outcomes: list[Outcome], problems: list[Problem], report: IngestReport) -> None:
    """One transaction: images, posts and their hashtags, errors. The unique constraints decide.
    An accepted post's photo, caption and metadata paths leave ``ingest_errors`` (fixed since)."""
    from sqlalchemy import func

    from . import db
    from .schema import ingest_errors, post_hashtags

    good = [o for o in outcomes if o.stored and not o.problems]
    if good:
        paths = [as_text(o.file.image) for o in good]
        inserted, new = _insert_images_and_posts(conn, good, paths, report.ingest_run_id)
        report.accepted += inserted
        report.reposts += len(new) - inserted
        report.duplicates += len(good) - len(new)
        db.copy_rows(conn, post_hashtags, ((new[path], tag, pos, is_scrape) for o, path in zip(good, paths, strict=True)
                                           if path in new for pos, (tag, is_scrape) in enumerate(o.tags)),
                     ("post_id", "tag", "position", "is_scrape_tag"))
        fixed = sorted({as_text(f) for o in good for f in (o.file.image, o.file.caption_file, o.file.meta_file) if f})
        for i in range(0, len(fixed), 500):  # ingest_errors holds what is still wrong: a post's files are not
            conn.execute(ingest_errors.delete().where(ingest_errors.c.path.in_(fixed[i:i + 500])))
    errors = {(as_text(p.path), p.reason): as_text(p.detail)[:2000]
              for p in problems + [p for o in outcomes for p in o.problems]}
    if errors:
        stmt = _insert(conn, ingest_errors)
        stmt = stmt.on_conflict_do_update(index_elements=["path", "reason"],
                                          set_={"seen_at": func.now(), "detail": stmt.excluded.detail})
        conn.execute(stmt, [dict(path=p, reason=r, detail=d) for (p, r), d in sorted(errors.items())])
        for _, reason in errors:
            report.rejected[reason] = report.rejected.get(reason, 0) + 1


def count_notes(report: IngestReport, notes: list[str]) -> None:
    for kind in notes:
        counts = report.skipped if kind in SKIPPED else report.notes
        counts[kind] = counts.get(kind, 0) + 1


def edited_captions(found: list[PostFile], done: dict[str, tuple | None]) -> list[PostFile]:
    """The posts of ``found`` ingested before (``done``: their caption file's stat as recorded)
    whose caption file (the ``.txt``, else the metadata) is not the file read then: a changed
    size, mtime or ctime, a caption file that appeared, or a post ingested before these were
    recorded. One ``stat`` per caption file."""
    out, stats = [], {}
    for f in found:
        source = f.caption_file or f.meta_file
        if source is None:
            continue
        recorded = done.get(as_text(f.image), False)
        if recorded is False:  # not ingested before
            continue
        if source not in stats:
            try:
                stats[source] = stat_key(os.stat(source))
            except OSError:
                stats[source] = None  # gone since the folder was listed: the next run sees
                continue
        if stats[source] is not None and stats[source] != recorded:
            out.append(f)
    return out


def update_captions(engine, files: list[PostFile], scrape: frozenset, comment_tags: bool,
                    report: IngestReport) -> None:
    """Read the caption of each post of ``files`` (ingested before; ``edited_captions``) again.
    Where its caption or hashtags differ from those stored, replace the post's caption, hashtags
    and caption encoding (and its image's caption when this post brought the image) and note
    ``caption_edited``; record the caption file's new stat either way. Nothing else of the post
    changes. A caption that cannot be read any more is recorded in ``ingest_errors`` and the post
    keeps what it had. One transaction per ``BATCH`` posts; the posts' rows are locked first, so
    two runs at once update one after the other."""
    from collections import defaultdict

    from sqlalchemy import bindparam, delete, select, update

    from .schema import images, post_hashtags, posts

    for i in range(0, len(files), BATCH):
        read, problems = {}, []
        for f in files[i:i + BATCH]:
            o = Outcome(f, caption=f.caption, taken_at=f.taken_at)
            read_post_text(o, scrape, comment_tags)
            if o.problems:
                problems += o.problems
            else:
                read[as_text(f.image)] = o
        with engine.begin() as conn:
            q = (select(posts.c.id, posts.c.source_path, posts.c.caption, posts.c.caption_encoding)
                 .where(posts.c.source_path.in_(list(read))))
            stored = conn.execute(q.order_by(posts.c.id).with_for_update()).all()
            old_tags = defaultdict(list)
            tag_rows = conn.execute(select(post_hashtags.c.post_id, post_hashtags.c.tag, post_hashtags.c.is_scrape_tag)
                                    .where(post_hashtags.c.post_id.in_([r.id for r in stored]))
                                    .order_by(post_hashtags.c.post_id, post_hashtags.c.position))
            for post_id, tag, is_scrape in tag_rows:
                old_tags[post_id].append((tag, bool(is_scrape)))
            changed = []
            for r in stored:
                o = read[r.source_path]
                if (r.caption, r.caption_encoding, old_tags[r.id]) != (o.caption, o.caption_encoding, o.tags):
                    changed.append((r, o))
            if stored:
                size, mtime, ctime = (bindparam(n) for n in ("b_size", "b_mtime", "b_ctime"))
                conn.execute(update(posts).where(posts.c.id == bindparam("b_id"))
                             .values(caption_file_size=size, caption_file_mtime_ns=mtime, caption_file_ctime_ns=ctime),
                             [dict(zip(("b_id", "b_size", "b_mtime", "b_ctime"),
                                       (r.id, *read[r.source_path].caption_stat), strict=True)) for r in stored])
            if changed:
                ids = [r.id for r, _ in changed]
                conn.execute(update(posts).where(posts.c.id == bindparam("b_id"))
                             .values(caption=bindparam("b_caption"), caption_encoding=bindparam("b_encoding")),
                             [{"b_id": r.id, "b_caption": o.caption, "b_encoding": o.caption_encoding}
                              for r, o in changed])
                conn.execute(update(images).where(images.c.source_path == bindparam("b_path"))
                             .values(caption=bindparam("b_caption")),
                             [{"b_path": r.source_path, "b_caption": o.caption} for r, o in changed])
                conn.execute(delete(post_hashtags).where(post_hashtags.c.post_id.in_(ids)))
                new_tags = [{"post_id": r.id, "tag": tag, "position": pos, "is_scrape_tag": is_scrape}
                            for r, o in changed for pos, (tag, is_scrape) in enumerate(o.tags)]
                if new_tags:
                    conn.execute(_insert(conn, post_hashtags).on_conflict_do_nothing(), new_tags)
                for _, o in changed:
                    count_notes(report, ["caption_edited", *o.notes])
        if problems:
            with engine.begin() as conn:
                write_batch(conn, [], problems, report)


def start_run(engine, sources: list[Path]) -> int:
    """A new ``ingest_runs`` row (status running, started now by this process's clock, UTC); its id.
    ``started_by``: the Airflow DAG run (``AIRFLOW_CTX_DAG_RUN_ID``) when inside a task, else "cli"."""
    from sqlalchemy import insert

    from .schema import ingest_runs

    with engine.begin() as conn:
        return int(conn.execute(insert(ingest_runs).values(
            started_at=datetime.now(UTC), status="running", sources=[as_text(str(s)) for s in sources],
            started_by=os.environ.get("AIRFLOW_CTX_DAG_RUN_ID", "cli")[:255], n_posts=0, n_images=0,
        )).inserted_primary_key[0])


def finish_run(engine, report: IngestReport, status: str) -> None:
    """Record the end of run ``report.ingest_run_id``: status, time, its new posts and images, the report."""
    from sqlalchemy import func, select, update

    from .schema import ingest_runs, posts

    run = report.ingest_run_id
    with engine.begin() as conn:
        n_posts = conn.execute(select(func.count()).select_from(posts).where(posts.c.ingest_run_id == run)).scalar()
        conn.execute(update(ingest_runs).where(ingest_runs.c.id == run).values(
            status=status, finished_at=datetime.now(UTC), n_posts=n_posts, n_images=report.accepted,
            report=report.as_dict()))
