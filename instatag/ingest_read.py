"""Ingest, reading one post (in a decoding worker): its caption, metadata and comments files, and its photo.

``process_post(PostFile) -> Outcome`` reads a post's caption (``decode_caption``: UTF-8, UTF-16
with a BOM, else a legacy encoding), instaloader's metadata (``read_metadata``) and, when asked, the
owner's first comment, then reads, validates, hashes and resizes the photo into the image store
(``imagestore.store_image``). It touches no database: ``ingest_write`` writes what it returns.
What cannot be read becomes a ``Problem`` with a stable reason (``ingest.REASONS``).

The decoding workers import this module (``procpool`` pickles ``process_post`` by name), so it
imports neither SQLAlchemy nor the schema: each worker would spend ~0.5 s on them.
"""

from __future__ import annotations

import errno
import json
import logging
import lzma
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .hashtags import parse_hashtags, tags_from_list
from .imagestore import Rejected, Stored, store_image

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 200 * 2**20
MAX_CAPTION_BYTES = 2**20
MAX_METADATA_BYTES = 16 * 2**20
MAX_COMMENTS_BYTES = 16 * 2**20

NOTES = {
    "metadata_without_caption": "posts whose metadata holds no caption (and no .txt): stored without hashtags",
    "caption_encoding_fallback": "captions decoded from a legacy encoding (posts.caption_encoding)",
    "caption_edited": "posts ingested before whose caption changed since: caption and hashtags updated",
    "unreadable_comments": "comments files that could not be read (INSTATAG_OWNER_COMMENT_TAGS): no comment tags",
}

#: ``instaloader.node_type`` of metadata that describes a post (instaloader.structures.load_structure)
POST_NODE_TYPES = frozenset({"Post", "StoryItem"})

_STAMP = re.compile(r"^(\d{4})-(\d{2})-(\d{2})_(\d{2})-(\d{2})-(\d{2})_UTC")

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


def as_text(s: str) -> str:
    """``s`` storable as text: undecodable file-name bytes as ``\\xNN``, lone surrogates as ``?``, no NUL."""
    try:
        raw = s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = s.encode("utf-8", "replace")
    return raw.decode("utf-8", "backslashreplace").replace("\x00", "")

# --------------------------------------------------------------------------- reading one post (worker)


class Unreadable(Exception):
    """A post's file that cannot be read (its message says why)."""


class TooLarge(Unreadable):
    """A file over the size limit of its kind (``MAX_*_BYTES``)."""


def read_bytes(path: str, limit: int) -> tuple[bytes, os.stat_result]:
    """The whole file and its ``fstat`` (taken when opened), refused (``TooLarge``) before reading
    when it holds more than ``limit`` bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        expected = st.st_size
        if expected > limit:
            raise TooLarge(f"over {limit} bytes")
        parts, size = [], 0
        # ask for the expected size + 1 (os.read allocates what is asked), then until EOF or the limit
        while chunk := os.read(fd, min(limit + 1 - size, max(expected + 1 - size, 1 << 16))):
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"over {limit} bytes")
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
    the legacy encoding it was decoded from; raises ``Unreadable`` for binary data.

    The fallback is charset-normalizer's guess among ``LEGACY_ENCODINGS``, with cp1252 (Western
    European) chosen whenever it is among the guesses with the least "chaos": on a caption of a
    few words charset-normalizer often cannot tell cp1252 from cp1250 or Mac Roman
    (``crème`` → ``crčme``), and Western European captions are the common case. Central European,
    Turkish or Baltic captions that also read as plausible cp1252 are read as cp1252."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return data.decode("utf-16").replace("\x00", ""), None
        except UnicodeDecodeError as exc:
            raise Unreadable(str(exc)) from None
    try:
        return data.decode("utf-8-sig").replace("\x00", ""), None
    except UnicodeDecodeError as exc:
        utf8_error = exc
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data, cp_isolation=list(LEGACY_ENCODINGS)))
    if not matches:
        raise Unreadable(f"not UTF-8 ({utf8_error}), UTF-16 with a BOM, or text in a legacy encoding")
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
        data, st = read_bytes(path, MAX_CAPTION_BYTES)
    except OSError as exc:
        raise Unreadable(str(exc)) from None
    return *decode_caption(data), st


def _load_json(path: str, limit: int):
    """A ``.json`` or ``.json.xz`` file, parsed, and its ``fstat``; ``Unreadable`` when it cannot be."""
    try:
        data, st = read_bytes(path, limit)
        if path.lower().endswith(".xz"):
            dec = lzma.LZMADecompressor()
            data = dec.decompress(data, max_length=limit)
            if not dec.eof:
                raise Unreadable("truncated or over the size limit")
        return json.loads(data), st
    except (OSError, lzma.LZMAError, ValueError, RecursionError) as exc:
        raise Unreadable(str(exc) or type(exc).__name__) from None


def _short(value) -> str | None:
    """An id or shortcode as stored: text of 1 to 64 characters, else None."""
    if isinstance(value, str | int) and not isinstance(value, bool) and 0 < len(str(value)) <= 64:
        return as_text(str(value))
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
        raise Unreadable("not a JSON object")
    info = doc.get("instaloader")
    if isinstance(info, dict) and "node_type" in info and info["node_type"] not in POST_NODE_TYPES:
        raise NotAPost(str(info["node_type"]), st)
    node = doc.get("node", doc)
    if not isinstance(node, dict):
        raise Unreadable("'node' is not a JSON object")
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
            out["caption"] = as_text(caption)
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
        raise Unreadable(f"unexpected structure: {exc!r}") from None
    return out, st


def owner_comment_tags(path: str, owner_id: str) -> list[str]:
    """The hashtags of the post owner's own earliest comment in instaloader's ``_comments.json``
    (a list of ``{id, created_at, text, owner: {id, ...}, answers}``; answers are not comments of
    the post). Comments of anyone else never count. Raises ``Unreadable``."""
    comments = _load_json(path, MAX_COMMENTS_BYTES)[0]
    if not isinstance(comments, list):
        raise Unreadable("not a JSON list of comments")
    own = []
    for c in comments:
        try:
            if str(c["owner"]["id"]) == owner_id and isinstance(c["text"], str):
                own.append((float(c.get("created_at") or 0), int(c.get("id") or 0), c["text"]))
        except (TypeError, KeyError, ValueError) as exc:
            raise Unreadable(f"unexpected structure: {exc!r}") from None
    return parse_hashtags(min(own)[2]) if own else []


def _read_image(path: str) -> tuple[bytes, os.stat_result]:
    try:
        return read_bytes(path, MAX_IMAGE_BYTES)
    except TooLarge as exc:
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


def stat_key(st: os.stat_result) -> tuple[int, int, int]:
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
            out.caption_stat = stat_key(st)
            if out.caption_encoding:
                out.notes.append("caption_encoding_fallback")
        except Unreadable as exc:
            out.problems.append(Problem(f.caption_file, "unreadable_caption", str(exc)))
    if f.meta_file:
        try:
            meta, st = read_metadata(f.meta_file)
            if f.caption_file is None:
                out.caption = meta.get("caption")
                out.caption_stat = stat_key(st)
                if out.caption is None:
                    out.notes.append("metadata_without_caption")
        except NotAPost as exc:  # the post is read without it
            out.notes.append("not_a_post_metadata")
            if f.caption_file is None:
                out.caption_stat = stat_key(exc.stat)
        except Unreadable as exc:
            out.problems.append(Problem(f.meta_file, "unreadable_metadata", str(exc)))
    if out.problems:  # a post goes in whole or not at all
        return
    out.shortcode, out.owner_id = meta.get("shortcode"), meta.get("owner_id")
    out.taken_at = meta.get("taken_at") or out.taken_at or _stem_time(f.post)
    from_comment = []
    if comment_tags and f.comments_file and out.owner_id:
        try:
            from_comment = owner_comment_tags(f.comments_file, out.owner_id)
        except Unreadable:
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
