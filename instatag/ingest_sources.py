"""Ingest, walking the sources: drop folders (instaloader's layout) and manifests → the posts to read.

``discover(sources)`` walks folders recursively (links followed once, loops reported) and groups
each folder's files by instaloader's file stem into ``PostFile``s (photo, ``.txt`` caption,
``.json(.xz)`` metadata, ``_comments.json``); instaloader's files that belong to no post are
counted (``SKIPPED``). A ``.csv`` / ``.jsonl`` manifest lists posts instead (``read_manifest``).
Nothing is opened but folders, manifests and orphan metadata (to tell a profile's from a post's).
"""

from __future__ import annotations

import ast
import csv
import errno
import io
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path

from .errors import UserError
from .hashtags import parse_hashtags, stored_tag
from .ingest_read import NotAPost, PostFile, Problem, Unreadable, as_text, read_metadata

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
MANIFEST_EXTS = {".csv", ".jsonl"}

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


_SIDECAR_INDEX = re.compile(r"_\d+$")  # instaloader's multi-photo posts: <stamp>_UTC_1.jpg, _2.jpg
# instaloader's title pictures: title pattern {date_utc}_UTC_{typename} (or {target}_{date_utc}_UTC_{typename})
_TITLE_PICTURE = re.compile(r"_utc_(?:profile_pic|cover)\.[a-z]+$")
_CAPTION_BACKUP = re.compile(r"_old_\d{2,}\.txt$")  # Instaloader.save_caption: '{0}_old_{2:02}{1}'
_RESUME_FILE = re.compile(r"(?:^|_)iterator_[\w-]+\.json(?:\.xz)?$")  # resumable_iteration, magic: urlsafe base64
_COMMENTS_SUFFIXES = ("_comments.json", "_comments.json.xz")

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
            except Unreadable as exc:
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
    return PostFile(image=image_path, post=post, caption=as_text(caption) if caption else None,
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
    return bool(body) and body[0] not in "#＃" and parse_hashtags("#" + body) == [stored_tag(body)]


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
