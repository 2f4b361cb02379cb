"""Ingest: scraper drop folders and manifests → images, posts, post_hashtags, ingest_errors.

``ingest(settings, sources)`` finds the posts (instaloader's layout, or a CSV / JSON Lines
manifest), skips post files already in the database, then reads, hashes, validates and
resizes the photos in worker processes (``imagestore.store_image``) and writes the rows
in the parent in batches. Each batch is one transaction whose inserts use the unique
constraints (``ON CONFLICT DO NOTHING``), so concurrent ingests of overlapping folders
create no duplicate and no partial post. A photo already in the store under its content
hash is a re-post: a new ``posts`` row pointing at the existing image.

Nothing is ever deleted or moved from a source folder. A file that cannot be used goes to
``ingest_errors`` with a stable reason (see ``REASONS`` and docs/ingest.md).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import logging
import lzma
import os
import re
import time
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache, partial
from pathlib import Path

from .errors import UserError
from .hashtags import parse_hashtags, scrape_tag_set, tags_from_list
from .imagestore import Rejected, Stored, store_image
from .progress import progress
from .settings import Settings

# SQLAlchemy, the schema and the database are imported inside the functions that write: the
# decoding workers import this module, and each would otherwise spend ~0.5 s importing them.

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
MANIFEST_EXTS = {".csv", ".jsonl"}
#: instaloader side files that are not part of a post's photo, caption or metadata, and its
#: downloads in progress (``<name>.temp``, renamed to ``<name>`` when complete)
IGNORED_SUFFIXES = ("_comments.json", "_comments.json.xz", "_location.txt", ".temp")
MAX_IMAGE_BYTES = 200 * 2**20
MAX_CAPTION_BYTES = 2**20
MAX_METADATA_BYTES = 16 * 2**20
#: rows per database transaction
BATCH = 500
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
    "metadata_without_photo": "a readable .json(.xz) with no photo of the same name",
    "unreadable_caption": "the caption cannot be read or decoded (UTF-8, or UTF-16 with a BOM)",
    "unreadable_metadata": "the .json(.xz) metadata cannot be decompressed or parsed",
    "unreadable_folder": "a folder cannot be listed",
    "unreadable_file": "a file cannot be opened or read",
    "symlink_loop": "a symbolic link that leads back to itself or to a folder above it",
    "dangling_symlink": "a symbolic link to nothing",
    "missing_file": "a manifest row names a photo that does not exist",
    "bad_manifest_row": "a manifest row without an image, or with an unusable value",
    "unexpected_error": "anything else (a bug: please report it with the detail)",
}

_STAMP = re.compile(r"^(\d{4})-(\d{2})-(\d{2})_(\d{2})-(\d{2})-(\d{2})_UTC")
_SIDECAR_INDEX = re.compile(r"_\d+$")  # instaloader's multi-photo posts: <stamp>_UTC_1.jpg, _2.jpg


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class PostFile:
    """One photo to ingest, with what belongs to it. Paths are absolute."""

    image: str
    post: str
    caption_file: str | None = None
    meta_file: str | None = None
    #: given by a manifest instead of files
    caption: str | None = None
    tags: tuple[str, ...] = ()
    taken_at: datetime | None = None


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str
    detail: str = ""


@dataclass
class Outcome:
    file: PostFile
    stored: Stored | None = None
    caption: str | None = None
    shortcode: str | None = None
    owner_id: str | None = None
    taken_at: datetime | None = None
    #: (tag, is_scrape_tag) in caption order
    tags: list[tuple[str, bool]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


@dataclass
class IngestReport:
    """What a run did. ``accepted``: new images; ``reposts``: new posts of an image already
    stored; ``duplicates``: post files ingested before (same path); ``rejected``: files per reason."""

    accepted: int = 0
    reposts: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def n_rejected(self) -> int:
        return sum(self.rejected.values())

    def summary(self) -> str:
        line = (f"ingest: {self.accepted} new images, {self.reposts} re-posts, {self.duplicates} already "
                f"ingested, {self.n_rejected} files rejected in {self.seconds:.1f}s")
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.rejected.items()))
        return f"{line} ({reasons}; see table ingest_errors)" if reasons else line

    def as_dict(self) -> dict:
        return {"accepted": self.accepted, "reposts": self.reposts, "duplicates": self.duplicates,
                "rejected": dict(sorted(self.rejected.items())), "seconds": round(self.seconds, 3)}


def _text(s: str) -> str:
    """``s`` storable as text: undecodable file-name bytes as ``\\xNN``, lone surrogates as ``?``, no NUL."""
    try:
        raw = s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = s.encode("utf-8", "replace")
    return raw.decode("utf-8", "backslashreplace").replace("\x00", "")


# --------------------------------------------------------------------------- finding posts


def discover(sources: list[Path]) -> tuple[list[PostFile], list[Problem]]:
    """The photos under ``sources`` (folders, walked recursively, or manifests), and what is wrong."""
    found: list[PostFile] = []
    problems: list[Problem] = []
    seen_dirs: set[tuple[int, int]] = set()
    for src in sources:
        if src.suffix.lower() in MANIFEST_EXTS and src.is_file():
            found += read_manifest(src, problems)
        else:
            _walk(Path(os.path.abspath(src)), seen_dirs, found, problems)
    unique: dict[str, PostFile] = {}
    for f in found:
        unique.setdefault(f.image, f)  # a photo named twice (overlapping sources): the first mention wins
    return list(unique.values()), problems


def _walk(top: Path, seen: set, found: list[PostFile], problems: list[Problem]) -> None:
    stack: list[tuple[str, frozenset]] = [(str(top), frozenset())]
    while stack:
        folder, ancestors = stack.pop()
        try:
            st = os.stat(folder)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            reason = "symlink_loop" if exc.errno == errno.ELOOP else "unreadable_folder"
            problems.append(Problem(folder, reason, exc.strerror or str(exc)))
            continue
        key = (st.st_dev, st.st_ino)
        if key in ancestors:
            problems.append(Problem(folder, "symlink_loop", "leads back to a folder above it"))
            continue
        if key in seen:  # reached twice (overlapping sources, or a link to a sibling)
            continue
        seen.add(key)
        files: dict[str, str] = {}
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_symlink():
                    os.stat(e.path)  # raises for loops and dangling links
                is_dir = e.is_dir()
            except OSError as exc:
                reason = {errno.ELOOP: "symlink_loop", errno.ENOENT: "dangling_symlink"}.get(
                    exc.errno, "unreadable_file")
                problems.append(Problem(e.path, reason, exc.strerror or str(exc)))
                continue
            if is_dir:
                subdirs.append(e.path)
            else:
                files[e.name] = e.path
        found += _posts_in_folder(files, problems)
        stack += [(d, ancestors | {key}) for d in reversed(subdirs)]


def _posts_in_folder(files: dict[str, str], problems: list[Problem]) -> list[PostFile]:
    """Group one folder's files by instaloader stem: photo, ``.txt`` caption, ``.json.xz`` metadata."""
    photos, captions, metas = [], {}, {}
    for name, path in files.items():
        low = name.lower()
        if low.endswith(IGNORED_SUFFIXES):
            continue
        if low.endswith(".json.xz"):
            metas[name[:-8]] = path
        elif low.endswith(".json"):
            metas.setdefault(name[:-5], path)
        elif low.endswith(".txt"):
            captions[name[:-4]] = path
        elif os.path.splitext(low)[1] in IMAGE_EXTS:
            photos.append((os.path.splitext(name)[0], path))
        else:
            problems.append(Problem(path, "unsupported_format", "not a photo, caption or metadata file"))
    out, used_captions, used_metas = [], set(), set()
    for stem, path in photos:
        base = _SIDECAR_INDEX.sub("", stem)
        cap = stem if stem in captions else base if base in captions else None
        meta = stem if stem in metas else base if base in metas else None
        used_captions.add(cap)
        used_metas.add(meta)
        out.append(PostFile(image=path, post=stem, caption_file=captions.get(cap), meta_file=metas.get(meta)))
    for stem, path in captions.items():
        if stem not in used_captions:
            problems.append(Problem(path, "caption_without_photo", f"no photo named {stem}.jpg/.png/.webp"))
    for stem, path in metas.items():
        if stem not in used_metas:
            try:
                read_metadata(path)
                problems.append(Problem(path, "metadata_without_photo", f"no photo named {stem}.jpg/.png/.webp"))
            except _Unreadable as exc:
                problems.append(Problem(path, "unreadable_metadata", str(exc)))
    return out


# --------------------------------------------------------------------------- manifests


def read_manifest(path: Path, problems: list[Problem]) -> list[PostFile]:
    """Posts listed in a CSV or JSON Lines manifest (columns: image, caption and/or tags, post, taken_at)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the manifest ({exc})") from None
    base = Path(os.path.abspath(path.parent))
    rows: list[tuple[str, object]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        header = set(reader.fieldnames or ())
        if "image" not in header or not header & {"caption", "tags"}:
            raise UserError(f"{path}: a CSV manifest needs an 'image' column and a 'caption' or 'tags' column; "
                            f"it has {sorted(header)}")
        rows = [(f"{path}:{reader.line_num}", row) for row in reader]
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((f"{path}:{lineno}", json.loads(line)))
                except ValueError as exc:
                    problems.append(Problem(f"{path}:{lineno}", "bad_manifest_row", f"not JSON: {exc}"))
    out = []
    for where, row in rows:
        try:
            out.append(_manifest_post(row, base))
        except ValueError as exc:
            problems.append(Problem(where, "bad_manifest_row", str(exc)))
    return out


def _manifest_post(row: object, base: Path) -> PostFile:
    if not isinstance(row, dict):
        raise ValueError("a row must be a JSON object")
    image = row.get("image")
    if not isinstance(image, str) or not image.strip():
        raise ValueError("no image path")
    if "\x00" in image:
        raise ValueError("NUL character in the image path")
    image_path = os.path.normpath(base / image.strip())
    tags = row.get("tags") or ()
    if isinstance(tags, str):
        tags = re.split(r"[\s,]+", tags)
    if not isinstance(tags, list | tuple) or not all(isinstance(t, str | int) for t in tags):
        raise ValueError(f"tags must be a list or a space/comma separated string, not {tags!r}")
    caption = row.get("caption")
    if caption is not None and not isinstance(caption, str):
        raise ValueError(f"caption must be text, not {caption!r}")
    post = str(row.get("post") or "").strip() or Path(image_path).stem
    if len(post) > 255:
        raise ValueError("post id longer than 255 characters")
    return PostFile(image=image_path, post=post, caption=_text(caption) if caption else None,
                    tags=tuple(str(t) for t in tags if str(t).strip()), taken_at=parse_time(row.get("taken_at")))


def parse_time(value) -> datetime | None:
    """``taken_at`` from ISO 8601 text or unix seconds; naive times are UTC."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, int | float) or re.fullmatch(r"\d+(\.\d+)?", str(value).strip()):
            return datetime.fromtimestamp(float(value), UTC)
        t = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"taken_at {value!r} is neither ISO 8601 nor unix seconds") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- reading one post (worker)


class _Unreadable(Exception):
    pass


class _TooLarge(_Unreadable):
    pass


def _read_bytes(path: str, limit: int) -> tuple[bytes, os.stat_result]:
    """The whole file and its ``fstat`` (taken when opened), refused (``_TooLarge``) before reading
    when it holds more than ``limit`` bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        expected = st.st_size
        if expected > limit:
            raise _TooLarge(f"over {limit} bytes")
        parts, size = [], 0
        # ask for the expected size + 1 (os.read allocates what is asked), then until EOF or the limit
        while chunk := os.read(fd, min(limit + 1 - size, max(expected + 1 - size, 1 << 16))):
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                raise _TooLarge(f"over {limit} bytes")
            if size == expected:  # it asked for more: a short read at the size fstat gave is the end
                break
        return b"".join(parts), st
    finally:
        os.close(fd)


def read_caption(path: str) -> str:
    """A caption file: UTF-8 (BOM optional), or UTF-16 with a BOM."""
    try:
        data = _read_bytes(path, MAX_CAPTION_BYTES)[0]
        encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
        return data.decode(encoding).replace("\x00", "")
    except (OSError, UnicodeDecodeError) as exc:
        raise _Unreadable(str(exc)) from None


def read_metadata(path: str) -> dict:
    """caption, shortcode, owner_id, taken_at from instaloader's ``.json.xz`` (or ``.json``)."""
    try:
        data = _read_bytes(path, MAX_METADATA_BYTES)[0]
        if path.lower().endswith(".xz"):
            dec = lzma.LZMADecompressor()
            data = dec.decompress(data, max_length=MAX_METADATA_BYTES)
            if not dec.eof:
                raise _Unreadable("truncated or over the size limit")
        doc = json.loads(data)
    except (OSError, lzma.LZMAError, ValueError) as exc:
        raise _Unreadable(str(exc)) from None
    if not isinstance(doc, dict):
        raise _Unreadable("not a JSON object")
    node = doc.get("node", doc)
    if not isinstance(node, dict):
        raise _Unreadable("'node' is not a JSON object")
    out: dict = {}
    try:
        edges = (node.get("edge_media_to_caption") or {}).get("edges") or []
        if edges and isinstance(edges[0].get("node", {}).get("text"), str):
            out["caption"] = _text(edges[0]["node"]["text"])
        owner = node.get("owner") or {}
        for key, value in (("shortcode", node.get("shortcode")), ("owner_id", owner.get("id"))):
            if isinstance(value, str | int) and 0 < len(str(value)) <= 64:
                out[key] = _text(str(value))
        stamp = node.get("taken_at_timestamp")
        if isinstance(stamp, int | float) and not isinstance(stamp, bool):
            out["taken_at"] = datetime.fromtimestamp(stamp, UTC)
    except (AttributeError, TypeError, ValueError, OverflowError, OSError) as exc:
        raise _Unreadable(f"unexpected structure: {exc}") from None
    return out


def _read_image(path: str) -> tuple[bytes, os.stat_result]:
    try:
        return _read_bytes(path, MAX_IMAGE_BYTES)
    except _TooLarge as exc:
        raise Rejected("file_too_large", str(exc)) from None
    except FileNotFoundError:
        raise Rejected("missing_file", "no such file") from None
    except OSError as exc:
        reason = "symlink_loop" if exc.errno == errno.ELOOP else "unreadable_file"
        raise Rejected(reason, exc.strerror or str(exc)) from None


def _stem_time(stem: str) -> datetime | None:
    """When instaloader's file name says the post was taken (``2026-11-01_06-01-38_UTC``)."""
    m = _STAMP.match(stem)
    try:
        return datetime(*map(int, m.groups()), tzinfo=UTC) if m else None
    except ValueError:  # 2026-13-45_...
        return None


def process_post(f: PostFile, data_dir: Path, side: int, max_pixels: int, scrape: frozenset,
                 link: bool = False) -> Outcome:
    """Read one post; store its photo unless something of the post is unreadable. ``link``: keep
    the original as a hard link to the photo file where possible."""
    out = Outcome(f, caption=f.caption, taken_at=f.taken_at)
    try:
        meta = {}
        if f.caption_file:
            try:
                out.caption = read_caption(f.caption_file)
            except _Unreadable as exc:
                out.problems.append(Problem(f.caption_file, "unreadable_caption", str(exc)))
        if f.meta_file:
            try:
                meta = read_metadata(f.meta_file)
            except _Unreadable as exc:
                out.problems.append(Problem(f.meta_file, "unreadable_metadata", str(exc)))
        if out.problems:  # a post goes in whole or not at all
            return out
        if out.caption is None:
            out.caption = meta.get("caption")
        out.shortcode, out.owner_id = meta.get("shortcode"), meta.get("owner_id")
        out.taken_at = meta.get("taken_at") or out.taken_at or _stem_time(f.post)
        tags = dict.fromkeys(parse_hashtags(out.caption) + tags_from_list(f.tags))
        out.tags = [(t, t in scrape) for t in tags]
        data, st = _read_image(f.image)
        out.stored = store_image(data, data_dir, side, max_pixels, (f.image, st) if link else None)
    except Rejected as exc:
        out.problems.append(Problem(f.image, exc.reason, exc.detail))
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop the run
        log.exception("unexpected error on %s", f.image)
        out.problems.append(Problem(f.image, "unexpected_error", repr(exc)))
    return out


# --------------------------------------------------------------------------- database


def _insert(conn, table):
    """INSERT with ON CONFLICT support for the connection's dialect."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def _already_ingested(engine, files: list[PostFile]) -> set[str]:
    from sqlalchemy import select

    from .schema import posts

    paths = [_text(f.image) for f in files]
    found: set[str] = set()
    with engine.connect() as conn:
        for i in range(0, len(paths), 500):
            chunk = paths[i:i + 500]
            found |= set(conn.execute(select(posts.c.source_path).where(posts.c.source_path.in_(chunk))).scalars())
    return found


_IMAGE_COLUMNS = ("sha256", "post", "source_path", "format", "width", "height", "taken_at", "caption",
                  "original_path", "resized_path")
_POST_COLUMNS = ("image_id", "post", "source_path", "shortcode", "owner_id", "taken_at", "caption")


@cache
def _batch_table():
    """The temporary table one batch's accepted posts are copied into (column types from the schema)."""
    from sqlalchemy import Boolean, Column, MetaData, Table

    from .schema import images, posts

    columns = [*(images.c[name] for name in _IMAGE_COLUMNS), posts.c.shortcode, posts.c.owner_id]
    return Table("ingest_batch", MetaData(), *(Column(c.name, c.type) for c in columns),
                 Column("first_of_image", Boolean), prefixes=["TEMPORARY"])


def _insert_images_and_posts(conn, good: list[Outcome], paths: list[str]) -> tuple[int, dict[str, int]]:
    """Copy the accepted posts into the batch table; from it one INSERT ... SELECT adds the new
    images, one the new posts (``ON CONFLICT DO NOTHING`` both). Returns (images added,
    {source_path: post id} of the posts added)."""
    from sqlalchemy import select, true

    from . import db
    from .schema import images, posts

    batch, seen, rows = _batch_table(), set(), []
    for o, path in zip(good, paths, strict=True):
        s = o.stored
        rows.append((s.sha256, _text(o.file.post)[:255], path, s.format, s.width, s.height, o.taken_at, o.caption,
                     s.original_path, s.resized_path, o.shortcode, o.owner_id, s.sha256 not in seen))
        seen.add(s.sha256)
    batch.drop(conn, checkfirst=True)  # left on a pooled SQLite connection by a failed batch
    batch.create(conn)
    db.copy_rows(conn, batch, rows)
    new_images = (select(*(batch.c[name] for name in _IMAGE_COLUMNS)).where(batch.c.first_of_image)
                  .order_by(batch.c.sha256))  # one lock order in every process: no deadlock
    stmt = _insert(conn, images).from_select(_IMAGE_COLUMNS, new_images)
    inserted = len(conn.execute(stmt.on_conflict_do_nothing(index_elements=["sha256"]).returning(images.c.id)).all())
    new_posts = (select(images.c.id, *(batch.c[name] for name in _POST_COLUMNS[1:]))
                 .join_from(batch, images, images.c.sha256 == batch.c.sha256)
                 .where(true())  # SQLite parses INSERT ... SELECT ... ON CONFLICT only with a WHERE
                 .order_by(batch.c.source_path))
    stmt = _insert(conn, posts).from_select(_POST_COLUMNS, new_posts)
    new = dict(conn.execute(stmt.on_conflict_do_nothing(index_elements=["source_path"])
                            .returning(posts.c.source_path, posts.c.id)).all())
    batch.drop(conn)
    return inserted, new


def write_batch(conn, outcomes: list[Outcome], problems: list[Problem], report: IngestReport) -> None:
    """One transaction: images, posts and their hashtags, errors. The unique constraints decide."""
    from sqlalchemy import func

    from . import db
    from .schema import ingest_errors, post_hashtags

    good = [o for o in outcomes if o.stored and not o.problems]
    if good:
        paths = [_text(o.file.image) for o in good]
        inserted, new = _insert_images_and_posts(conn, good, paths)
        report.accepted += inserted
        report.reposts += len(new) - inserted
        report.duplicates += len(good) - len(new)
        db.copy_rows(conn, post_hashtags, ((new[path], tag, pos, is_scrape) for o, path in zip(good, paths, strict=True)
                                           if path in new for pos, (tag, is_scrape) in enumerate(o.tags)),
                     ("post_id", "tag", "position", "is_scrape_tag"))
    errors = {(_text(p.path), p.reason): _text(p.detail)[:2000]
              for p in problems + [p for o in outcomes for p in o.problems]}
    if errors:
        stmt = _insert(conn, ingest_errors)
        stmt = stmt.on_conflict_do_update(index_elements=["path", "reason"],
                                          set_={"seen_at": func.now(), "detail": stmt.excluded.detail})
        conn.execute(stmt, [dict(path=p, reason=r, detail=d) for (p, r), d in sorted(errors.items())])
        for _, reason in errors:
            report.rejected[reason] = report.rejected.get(reason, 0) + 1


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
    report = IngestReport()
    found, problems = discover(sources)
    done = _already_ingested(engine, found)
    todo = [f for f in found if _text(f.image) not in done]
    report.duplicates += len(found) - len(todo)
    n_workers = _workers(settings, workers, len(todo))
    log.info("ingest: %d photos found, %d new, %d already ingested; %d worker(s)",
             len(found), len(todo), len(found) - len(todo), n_workers)
    fn = partial(process_post, data_dir=Path(os.path.abspath(settings.data_dir)), side=settings.resized_side,
                 max_pixels=settings.max_pixels, scrape=scrape_tag_set(settings.scrape_tags),
                 link=settings.store_originals == "link")
    batch: list[Outcome] = []
    copied = 0
    with closing(_outcomes(todo, fn, n_workers)) as outcomes:  # closed on an error: the workers stop
        for outcome in progress(outcomes, total=len(todo), desc="ingest", unit="photo"):
            copied += bool(outcome.stored and outcome.stored.copied)
            batch.append(outcome)
            if len(batch) >= BATCH:
                _write(engine, batch, [], report)
                batch = []
    _write(engine, batch, problems, report)
    report.seconds = time.monotonic() - start
    if copied and settings.store_originals == "link":
        log.info("ingest: %d originals copied into the store, not hard-linked: their folders are on another "
                 "filesystem than the data dir, or links are not allowed there", copied)
    log.info("%s", report.summary())
    return report


# --------------------------------------------------------------------------- CLI


def add_cli(sub) -> None:
    p = sub.add_parser(
        "ingest",
        help="ingest scraped posts (instaloader folders or CSV/JSONL manifests) into the database",
        description="Read instaloader drop folders (<stamp>_UTC.jpg|.png|.webp with .txt caption and optional "
        ".json.xz metadata, walked recursively) or manifests (.csv / .jsonl: image, caption or tags, post, "
        "taken_at). New photos go to the content-addressed store with a resized copy; re-runs and re-posts "
        "add no image; unusable files are recorded in ingest_errors with a reason, never moved or deleted. "
        "See docs/ingest.md.",
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

