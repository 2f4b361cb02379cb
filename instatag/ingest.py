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
"""

from __future__ import annotations

import ast
import csv
import errno
import io
import json
import logging
import lzma
import os
import re
import time
from contextlib import closing, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache, partial
from pathlib import Path

from .errors import UserError
from .hashtags import normalise, parse_hashtags, scrape_tag_set, tags_from_list
from .imagestore import Rejected, Stored, store_image
from .progress import progress
from .settings import Settings

# SQLAlchemy, the schema and the database are imported inside the functions that write: the
# decoding workers import this module, and each would otherwise spend ~0.5 s importing them.

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
MANIFEST_EXTS = {".csv", ".jsonl"}
MAX_IMAGE_BYTES = 200 * 2**20
MAX_CAPTION_BYTES = 2**20
MAX_METADATA_BYTES = 16 * 2**20
MAX_COMMENTS_BYTES = 16 * 2**20
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
#: in the report's ``skipped`` (docs/ingest.md lists every file instaloader writes)
SKIPPED = {
    "title_picture": "a profile picture or highlight cover (<stamp>_UTC_profile_pic.jpg, _cover.jpg)",
    "caption_backup": "an earlier caption kept when the uploader edited it (<stamp>_UTC_old_01.txt)",
    "not_a_post_metadata": "a profile's or hashtag's .json(.xz) (instaloader.node_type not Post/StoryItem)",
    "resume_file": "instaloader's resume file of an interrupted download (iterator_<magic>.json.xz)",
    "profile_id": "a profile's id file (id, or <profile>_id)",
    "comments": "comments of a post (<stamp>_UTC_comments.json), read only with INSTATAG_OWNER_COMMENT_TAGS",
    "location": "a post's location (<stamp>_UTC_location.txt)",
    "download_in_progress": "a download in progress (<name>.temp, renamed when complete)",
}

#: what a run noticed about posts it accepted or updated (the report's ``notes``)
NOTES = {
    "metadata_without_caption": "posts whose metadata holds no caption (and no .txt): stored without hashtags",
    "caption_encoding_fallback": "captions decoded from a legacy encoding (posts.caption_encoding)",
    "caption_edited": "posts ingested before whose caption changed since: caption and hashtags updated",
    "unreadable_comments": "comments files that could not be read (INSTATAG_OWNER_COMMENT_TAGS): no comment tags",
}

#: ``instaloader.node_type`` of metadata that describes a post (instaloader.structures.load_structure)
POST_NODE_TYPES = frozenset({"Post", "StoryItem"})

_STAMP = re.compile(r"^(\d{4})-(\d{2})-(\d{2})_(\d{2})-(\d{2})-(\d{2})_UTC")
_SIDECAR_INDEX = re.compile(r"_\d+$")  # instaloader's multi-photo posts: <stamp>_UTC_1.jpg, _2.jpg
# instaloader's title pictures: title pattern {date_utc}_UTC_{typename} (or {target}_{date_utc}_UTC_{typename})
_TITLE_PICTURE = re.compile(r"_utc_(?:profile_pic|cover)\.[a-z]+$")
_CAPTION_BACKUP = re.compile(r"_old_\d{2,}\.txt$")  # Instaloader.save_caption: '{0}_old_{2:02}{1}'
_RESUME_FILE = re.compile(r"(?:^|_)iterator_[\w-]+\.json(?:\.xz)?$")  # resumable_iteration, magic: urlsafe base64
_COMMENTS_SUFFIXES = ("_comments.json", "_comments.json.xz")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class PostFile:
    """One photo to ingest, with what belongs to it. Paths are absolute."""

    image: str
    post: str
    caption_file: str | None = None
    meta_file: str | None = None
    #: instaloader's ``<stamp>_UTC_comments.json`` (read only with ``owner_comment_tags``)
    comments_file: str | None = None
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
    #: the legacy encoding the caption file was decoded from; None for UTF-8 and UTF-16 with a BOM
    caption_encoding: str | None = None
    #: (size, mtime_ns, ctime_ns) of the file the caption came from (.txt, else the metadata)
    caption_stat: tuple[int, int, int] | None = None
    shortcode: str | None = None
    owner_id: str | None = None
    taken_at: datetime | None = None
    #: (tag, is_scrape_tag) in caption order
    tags: list[tuple[str, bool]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    #: keys of ``NOTES`` (and ``SKIPPED``) this post gave rise to
    notes: list[str] = field(default_factory=list)


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


def _text(s: str) -> str:
    """``s`` storable as text: undecodable file-name bytes as ``\\xNN``, lone surrogates as ``?``, no NUL."""
    try:
        raw = s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = s.encode("utf-8", "replace")
    return raw.decode("utf-8", "backslashreplace").replace("\x00", "")


# --------------------------------------------------------------------------- finding posts


def discover(sources: list[Path], skipped: dict[str, int] | None = None) -> tuple[list[PostFile], list[Problem]]:
    """The photos under ``sources`` (folders, walked recursively, or manifests), and what is wrong.
    ``skipped`` (optional) counts instaloader's files that belong to no post, per kind (``SKIPPED``)."""
    found: list[PostFile] = []
    problems: list[Problem] = []
    skipped = {} if skipped is None else skipped
    seen_dirs: set[tuple[int, int]] = set()
    for src in sources:
        if src.suffix.lower() in MANIFEST_EXTS and src.is_file():
            found += read_manifest(src, problems)
        else:
            _walk(Path(os.path.realpath(src)), seen_dirs, found, problems, skipped)
    unique: dict[str, PostFile] = {}
    for f in found:
        unique.setdefault(f.image, f)  # a photo named twice (overlapping sources): the first mention wins
    return list(unique.values()), problems


def _walk(top: Path, seen: set, found: list[PostFile], problems: list[Problem], skipped: dict[str, int]) -> None:
    stack: list[tuple[str, frozenset]] = [(str(top), frozenset())]
    while stack:
        folder, ancestors = stack.pop()
        try:
            st = os.stat(folder)
            # a post is its real file: the same photo reached by another path (a link) is the same post
            entries = sorted(os.scandir(os.path.realpath(folder)), key=lambda e: e.name)
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
        found += _posts_in_folder(files, problems, skipped)
        stack += [(d, ancestors | {key}) for d in reversed(subdirs)]


def _side_file(low: str) -> str | None:
    """The ``SKIPPED`` kind of an instaloader file that is no part of a post, from its lower-case name."""
    if low.endswith(".temp"):
        return "download_in_progress"
    if low.endswith("_location.txt"):
        return "location"
    if low.endswith(".txt"):
        return "caption_backup" if "_old_" in low and _CAPTION_BACKUP.search(low) else None
    if low.endswith((".json.xz", ".json")):
        return "resume_file" if "iterator_" in low and _RESUME_FILE.search(low) else None
    if low.endswith(("_profile_pic.jpg", "_cover.jpg")) and _TITLE_PICTURE.search(low):
        return "title_picture"
    if low == "id" or low.endswith("_id"):
        return "profile_id"
    return None


def _posts_in_folder(files: dict[str, str], problems: list[Problem], skipped: dict[str, int]) -> list[PostFile]:
    """Group one folder's files by instaloader stem: photo, ``.txt`` caption, ``.json.xz`` metadata,
    ``_comments.json``; instaloader's files of no post are counted in ``skipped``."""
    photos, captions, metas, comments = [], {}, {}, {}

    def skip(kind: str) -> None:
        skipped[kind] = skipped.get(kind, 0) + 1

    for name, path in files.items():
        low = name.lower()
        if low.endswith(_COMMENTS_SUFFIXES):
            comments[name[:low.rindex("_comments.json")]] = path
        elif kind := _side_file(low):
            skip(kind)
        elif low.endswith(".json.xz"):
            metas[name[:-8]] = path
        elif low.endswith(".json"):
            metas.setdefault(name[:-5], path)
        elif low.endswith(".txt"):
            captions[name[:-4]] = path
        elif os.path.splitext(low)[1] in IMAGE_EXTS:
            photos.append((os.path.splitext(name)[0], path))
        else:
            problems.append(Problem(path, "unsupported_format", "not a photo, caption or metadata file"))
    out, used_captions, used_metas, used_comments = [], set(), set(), set()
    for stem, path in photos:
        base = _SIDECAR_INDEX.sub("", stem)
        cap = stem if stem in captions else base if base in captions else None
        meta = stem if stem in metas else base if base in metas else None
        comm = stem if stem in comments else base if base in comments else None
        used_captions.add(cap)
        used_metas.add(meta)
        used_comments.add(comm)
        out.append(PostFile(image=path, post=stem, caption_file=captions.get(cap), meta_file=metas.get(meta),
                            comments_file=comments.get(comm)))
    for stem, path in captions.items():
        if stem not in used_captions:
            problems.append(Problem(path, "caption_without_photo", f"no photo named {stem}.jpg/.png/.webp"))
    for stem, path in metas.items():
        if stem not in used_metas:
            try:
                read_metadata(path)
                problems.append(Problem(path, "metadata_without_photo", f"no photo named {stem}.jpg/.png/.webp"))
            except NotAPost:
                skip("not_a_post_metadata")
            except _Unreadable as exc:
                problems.append(Problem(path, "unreadable_metadata", str(exc)))
    if unused := len(comments.keys() - used_comments):
        skipped["comments"] = skipped.get("comments", 0) + unused
    return out


# --------------------------------------------------------------------------- manifests


def read_manifest(path: Path, problems: list[Problem]) -> list[PostFile]:
    """Posts listed in a CSV or JSON Lines manifest (columns: image, caption and/or tags, post, taken_at)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the manifest ({exc})") from None
    base = Path(os.path.realpath(path.parent))  # real paths, as discover's walk gives
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
        tags = tag_cell(tags)
    if not isinstance(tags, list | tuple) or not all(isinstance(t, str | int) for t in tags):
        raise ValueError(f"tags must be a list or a space/comma separated string, not {tags!r}")
    for t in tags:  # each entry must be one whole hashtag: never a row accepted with its tags silently lost
        if not is_one_hashtag(t):
            raise ValueError(f"tag {t!r} of {row.get('tags')!r} is not a hashtag: each entry must be one whole tag")
    caption = row.get("caption")
    if caption is not None and not isinstance(caption, str):
        raise ValueError(f"caption must be text, not {caption!r}")
    post = str(row.get("post") or "").strip() or Path(image_path).stem
    if len(post) > 255:
        raise ValueError("post id longer than 255 characters")
    return PostFile(image=image_path, post=post, caption=_text(caption) if caption else None,
                    tags=tuple(str(t) for t in tags if str(t).strip()), taken_at=parse_time(row.get("taken_at")))


_TAG_SEPARATORS = re.compile(r"[\s,;|]+")
_CODE = re.compile(r"^[A-Za-z_][\w.]*\s*\(")  # np.array(...), list(...), set(...): a call, not a list


def tag_cell(cell: str) -> list:
    """The tags of one manifest cell: a list written out (JSON ``["cake", "pie"]``, Python
    ``['cake', 'pie']`` or ``('cake',)``, as pandas writes a list column), else text split on
    whitespace, commas, semicolons and ``|`` (empty pieces dropped). Raises ``ValueError`` for a
    list that cannot be read, Python strings written side by side (``["cake" "pie"]``, which Python
    would join into ``cakepie``) and a cell that looks like code (``np.array(['cake'])``)."""
    text = cell.strip()
    if _CODE.match(text):
        raise ValueError(f"tags {cell[:200]!r} look like code, not a list: write the list itself")
    if not text.startswith(("[", "(")):
        return [t for t in _TAG_SEPARATORS.split(text) if t]
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = _python_list(text, cell)
    if isinstance(value, str):  # ('cake') is a string in Python
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError(f"tags {cell[:200]!r} are not a list")
    return list(value)


def _python_list(text: str, cell: str):
    """A list (or tuple, or string) written as a Python literal; ``ValueError`` if it is none, or if
    it holds strings side by side, which Python joins (``['cake' 'pie']`` is ``['cakepie']``)."""
    import tokenize

    try:
        value = ast.literal_eval(text)  # literals only: never runs code
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"tags {cell[:200]!r} look like a list but are neither JSON nor a Python list") from None
    n_strings = sum(tok.type == tokenize.STRING for tok in tokenize.generate_tokens(io.StringIO(text).readline))
    if isinstance(value, list | tuple) and n_strings != sum(isinstance(v, str) for v in value):
        raise ValueError(f"tags {cell[:200]!r} hold strings side by side without a comma")
    if isinstance(value, str) and n_strings != 1:
        raise ValueError(f"tags {cell[:200]!r} hold strings side by side without a comma")
    return value


def is_one_hashtag(entry: str | int) -> bool:
    """Whether one manifest tag entry is exactly one hashtag: an optional leading ``#`` (or ``＃``),
    then what ``parse_hashtags`` reads as one whole tag (``cake!``, ``ice cream``, ``cake/pie`` and
    ``''`` are not). A numeric entry (``2026``) passes and is dropped later, as Instagram links no
    numeric tag."""
    text = str(entry).strip()
    body = text[1:] if text[:1] in ("#", "＃") else text
    if body.isdigit():
        return True
    return bool(body) and body[0] not in "#＃" and parse_hashtags("#" + body) == [normalise(body)]


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


class NotAPost(Exception):
    """Metadata instaloader wrote for something else than a post (a profile, a hashtag, a resume file)."""

    def __init__(self, node_type: str, stat: os.stat_result):
        super().__init__(node_type)
        self.stat = stat


#: Windows' "ANSI" code pages: what a caption saved by a Windows editor that does not write UTF-8 is in
#: (ISO-8859-1 text decodes the same as cp1252)
LEGACY_ENCODINGS = ("cp1252", "cp1250", "cp1251", "cp1253", "cp1254", "cp1255", "cp1256", "cp1257", "cp1258",
                    "cp874", "cp932", "cp936", "cp949", "cp950")


def decode_caption(data: bytes) -> tuple[str, str | None]:
    """A caption file's text and, when it is neither UTF-8 (BOM optional) nor UTF-16 with a BOM,
    the legacy encoding it was decoded from; raises ``_Unreadable`` for binary data.

    The fallback is charset-normalizer's guess among ``LEGACY_ENCODINGS``, with cp1252 (Western
    European) chosen whenever it is among the guesses with the least "chaos": on a caption of a
    few words charset-normalizer often cannot tell cp1252 from cp1250 or Mac Roman
    (``crème`` → ``crčme``), and Western European captions are the common case. Central European,
    Turkish or Baltic captions that also read as plausible cp1252 are read as cp1252."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return data.decode("utf-16").replace("\x00", ""), None
        except UnicodeDecodeError as exc:
            raise _Unreadable(str(exc)) from None
    try:
        return data.decode("utf-8-sig").replace("\x00", ""), None
    except UnicodeDecodeError as exc:
        utf8_error = exc
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data, cp_isolation=list(LEGACY_ENCODINGS)))
    if not matches:
        raise _Unreadable(f"not UTF-8 ({utf8_error}), UTF-16 with a BOM, or text in a legacy encoding")
    least = min(m.chaos for m in matches)
    if any("cp1252" in m.could_be_from_charset for m in matches if m.chaos <= least):
        encoding = "cp1252"
    else:
        encoding = min(matches, key=lambda m: (m.chaos, -m.coherence)).encoding
    return data.decode(encoding).replace("\x00", ""), encoding


def read_caption(path: str) -> tuple[str, str | None, os.stat_result]:
    """A caption file: its text, the legacy encoding it was decoded from (None for UTF-8 and
    UTF-16 with a BOM; ``decode_caption``) and its ``fstat``."""
    try:
        data, st = _read_bytes(path, MAX_CAPTION_BYTES)
    except OSError as exc:
        raise _Unreadable(str(exc)) from None
    return *decode_caption(data), st


def _load_json(path: str, limit: int):
    """A ``.json`` or ``.json.xz`` file, parsed, and its ``fstat``; ``_Unreadable`` when it cannot be."""
    try:
        data, st = _read_bytes(path, limit)
        if path.lower().endswith(".xz"):
            dec = lzma.LZMADecompressor()
            data = dec.decompress(data, max_length=limit)
            if not dec.eof:
                raise _Unreadable("truncated or over the size limit")
        return json.loads(data), st
    except (OSError, lzma.LZMAError, ValueError, RecursionError) as exc:
        raise _Unreadable(str(exc) or type(exc).__name__) from None


def _short(value) -> str | None:
    """An id or shortcode as stored: text of 1 to 64 characters, else None."""
    if isinstance(value, str | int) and not isinstance(value, bool) and 0 < len(str(value)) <= 64:
        return _text(str(value))
    return None


def read_metadata(path: str) -> tuple[dict, os.stat_result]:
    """caption, shortcode, owner_id, taken_at (those found) from instaloader's ``.json.xz`` (or
    ``.json``), and the file's ``fstat``.

    Read with the fallbacks of instaloader's own ``Post`` (instaloader/structures.py): the caption
    from the GraphQL node's ``edge_media_to_caption``, else the newer ``caption`` field, else the
    iPhone structure's ``iphone_struct.caption.text``; the time from ``date``, else
    ``taken_at_timestamp``, else ``iphone_struct.taken_at``; the owner from ``owner.id``, else
    ``iphone_struct.user.pk``; the shortcode from ``shortcode``, else ``code``. A file whose
    ``instaloader.node_type`` is not a post's (``POST_NODE_TYPES``) raises ``NotAPost``; a file
    without it (older instaloader, or the node alone) is read as a post."""
    doc, st = _load_json(path, MAX_METADATA_BYTES)
    if not isinstance(doc, dict):
        raise _Unreadable("not a JSON object")
    info = doc.get("instaloader")
    if isinstance(info, dict) and "node_type" in info and info["node_type"] not in POST_NODE_TYPES:
        raise NotAPost(str(info["node_type"]), st)
    node = doc.get("node", doc)
    if not isinstance(node, dict):
        raise _Unreadable("'node' is not a JSON object")
    out: dict = {}
    try:
        iphone = node.get("iphone_struct") if isinstance(node.get("iphone_struct"), dict) else {}
        edges = (node.get("edge_media_to_caption") or {}).get("edges") or []
        if edges:
            caption = edges[0]["node"]["text"]
        elif "caption" in node:
            caption = node["caption"]
        else:
            caption = iphone.get("caption")
        if isinstance(caption, dict):  # the iPhone API's caption object
            caption = caption.get("text")
        if isinstance(caption, str):
            out["caption"] = _text(caption)
        owner = node.get("owner") or {}
        user = iphone.get("user") or {}
        for key, value in (("shortcode", node.get("shortcode") or node.get("code") or iphone.get("code")),
                           ("owner_id", owner.get("id") or user.get("pk") or user.get("id"))):
            if (value := _short(value)) is not None:
                out[key] = value
        stamp = node["date"] if "date" in node else node.get("taken_at_timestamp", iphone.get("taken_at"))
        if isinstance(stamp, int | float) and not isinstance(stamp, bool):
            out["taken_at"] = datetime.fromtimestamp(stamp, UTC)
    except (AttributeError, TypeError, KeyError, IndexError, ValueError, OverflowError, OSError) as exc:
        raise _Unreadable(f"unexpected structure: {exc!r}") from None
    return out, st


def owner_comment_tags(path: str, owner_id: str) -> list[str]:
    """The hashtags of the post owner's own earliest comment in instaloader's ``_comments.json``
    (a list of ``{id, created_at, text, owner: {id, ...}, answers}``; answers are not comments of
    the post). Comments of anyone else never count. Raises ``_Unreadable``."""
    comments = _load_json(path, MAX_COMMENTS_BYTES)[0]
    if not isinstance(comments, list):
        raise _Unreadable("not a JSON list of comments")
    own = []
    for c in comments:
        try:
            if str(c["owner"]["id"]) == owner_id and isinstance(c["text"], str):
                own.append((float(c.get("created_at") or 0), int(c.get("id") or 0), c["text"]))
        except (TypeError, KeyError, ValueError) as exc:
            raise _Unreadable(f"unexpected structure: {exc!r}") from None
    return parse_hashtags(min(own)[2]) if own else []


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


def _stat_key(st: os.stat_result) -> tuple[int, int, int]:
    """What tells that a caption file changed: size, mtime and ctime (ns). instaloader sets a
    rewritten caption's mtime back to the post's date, so the ctime is what changes then."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def read_post_text(out: Outcome, scrape: frozenset, comment_tags: bool = False) -> None:
    """Fill ``out`` from its post's caption, metadata and (``comment_tags``) comments files:
    caption, its encoding and file stat, shortcode, owner, taken_at, tags, notes; what cannot be
    read goes to ``out.problems``. Reads no photo."""
    f = out.file
    meta: dict = {}
    if f.caption_file:
        try:
            out.caption, out.caption_encoding, st = read_caption(f.caption_file)
            out.caption_stat = _stat_key(st)
            if out.caption_encoding:
                out.notes.append("caption_encoding_fallback")
        except _Unreadable as exc:
            out.problems.append(Problem(f.caption_file, "unreadable_caption", str(exc)))
    if f.meta_file:
        try:
            meta, st = read_metadata(f.meta_file)
            if f.caption_file is None:
                out.caption = meta.get("caption")
                out.caption_stat = _stat_key(st)
                if out.caption is None:
                    out.notes.append("metadata_without_caption")
        except NotAPost as exc:  # the post is read without it
            out.notes.append("not_a_post_metadata")
            if f.caption_file is None:
                out.caption_stat = _stat_key(exc.stat)
        except _Unreadable as exc:
            out.problems.append(Problem(f.meta_file, "unreadable_metadata", str(exc)))
    if out.problems:  # a post goes in whole or not at all
        return
    out.shortcode, out.owner_id = meta.get("shortcode"), meta.get("owner_id")
    out.taken_at = meta.get("taken_at") or out.taken_at or _stem_time(f.post)
    from_comment = []
    if comment_tags and f.comments_file and out.owner_id:
        try:
            from_comment = owner_comment_tags(f.comments_file, out.owner_id)
        except _Unreadable:
            out.notes.append("unreadable_comments")
    tags = dict.fromkeys(parse_hashtags(out.caption) + tags_from_list(f.tags) + from_comment)
    out.tags = [(t, t in scrape) for t in tags]


def process_post(f: PostFile, data_dir: Path, side: int, max_pixels: int, scrape: frozenset,
                 link: bool = False, comment_tags: bool = False) -> Outcome:
    """Read one post; store its photo unless something of the post is unreadable. ``link``: keep
    the original as a hard link to the photo file where possible; ``comment_tags``: add the
    hashtags of the owner's first comment (``owner_comment_tags``)."""
    out = Outcome(f, caption=f.caption, taken_at=f.taken_at)
    try:
        read_post_text(out, scrape, comment_tags)
        if out.problems:
            return out
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


def _already_ingested(engine, files: list[PostFile]) -> dict[str, tuple | None]:
    """{source_path: the caption file's ``_stat_key`` recorded (None: none)} of the posts of ``files``
    already in the database."""
    from sqlalchemy import select

    from .schema import posts

    paths = [_text(f.image) for f in files]
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
        rows.append((s.sha256, _text(o.file.post)[:255], path, s.format, s.width, s.height, o.taken_at, o.caption,
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
        paths = [_text(o.file.image) for o in good]
        inserted, new = _insert_images_and_posts(conn, good, paths, report.ingest_run_id)
        report.accepted += inserted
        report.reposts += len(new) - inserted
        report.duplicates += len(good) - len(new)
        db.copy_rows(conn, post_hashtags, ((new[path], tag, pos, is_scrape) for o, path in zip(good, paths, strict=True)
                                           if path in new for pos, (tag, is_scrape) in enumerate(o.tags)),
                     ("post_id", "tag", "position", "is_scrape_tag"))
        fixed = sorted({_text(f) for o in good for f in (o.file.image, o.file.caption_file, o.file.meta_file) if f})
        for i in range(0, len(fixed), 500):  # ingest_errors holds what is still wrong: a post's files are not
            conn.execute(ingest_errors.delete().where(ingest_errors.c.path.in_(fixed[i:i + 500])))
    errors = {(_text(p.path), p.reason): _text(p.detail)[:2000]
              for p in problems + [p for o in outcomes for p in o.problems]}
    if errors:
        stmt = _insert(conn, ingest_errors)
        stmt = stmt.on_conflict_do_update(index_elements=["path", "reason"],
                                          set_={"seen_at": func.now(), "detail": stmt.excluded.detail})
        conn.execute(stmt, [dict(path=p, reason=r, detail=d) for (p, r), d in sorted(errors.items())])
        for _, reason in errors:
            report.rejected[reason] = report.rejected.get(reason, 0) + 1


def _count_notes(report: IngestReport, notes: list[str]) -> None:
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
        recorded = done.get(_text(f.image), False)
        if recorded is False:  # not ingested before
            continue
        if source not in stats:
            try:
                stats[source] = _stat_key(os.stat(source))
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
                read[_text(f.image)] = o
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
                    _count_notes(report, ["caption_edited", *o.notes])
        if problems:
            with engine.begin() as conn:
                write_batch(conn, [], problems, report)


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
    done = _already_ingested(engine, found)
    todo = [f for f in found if _text(f.image) not in done]
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
                _count_notes(report, outcome.notes)
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


def start_run(engine, sources: list[Path]) -> int:
    """A new ``ingest_runs`` row (status running, started now by this process's clock, UTC); its id.
    ``started_by``: the Airflow DAG run (``AIRFLOW_CTX_DAG_RUN_ID``) when inside a task, else "cli"."""
    from sqlalchemy import insert

    from .schema import ingest_runs

    with engine.begin() as conn:
        return int(conn.execute(insert(ingest_runs).values(
            started_at=datetime.now(UTC), status="running", sources=[_text(str(s)) for s in sources],
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

