"""Caption → hashtags, the way Instagram reads them.

A hashtag is ``#`` (or the full-width ``＃``) followed by a run of letters, digits, ``_`` and
combining marks in any script (``#café``, ``#디저트``, ``#हिंदी``). Anything else ends it:
punctuation (``#cake!``), emoji (``#yum😋``), another ``#`` (``#a#b`` is two tags). Tags are
NFC-normalised and case-folded; purely numeric tags (``#1``) and tags longer than
``MAX_TAG_LENGTH`` are dropped (Instagram links neither); a tag repeated in one caption counts once.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

#: the database column holds at most this many characters
MAX_TAG_LENGTH = 255

_CANDIDATE = re.compile(r"[#＃]([^\s#＃]+)")
_JOINERS = {"\u200c", "\u200d"}  # zero-width (non-)joiner, part of words in Indic and Persian scripts


_WORD = re.compile(r"\w+")  # letters, digits and _ in any script; marks and joiners are checked one by one


def _tag_prefix(candidate: str) -> str:
    i = 0
    while i < len(candidate):
        if m := _WORD.match(candidate, i):
            i = m.end()
        elif candidate[i] in _JOINERS or unicodedata.category(candidate[i]).startswith("M"):
            i += 1
        else:
            break
    return candidate[:i]


def normalise(tag: str) -> str:
    """One tag as stored: without ``#``, NFC, case-folded (``#TomatoSoup`` → ``tomatosoup``)."""
    return unicodedata.normalize("NFC", tag.lstrip("#＃").casefold())


def parse_hashtags(caption: str | None) -> list[str]:
    """The hashtags of ``caption``: normalised, unique, in order of first appearance."""
    if not caption:
        return []
    text = unicodedata.normalize("NFC", caption)
    seen: dict[str, None] = {}
    for m in _CANDIDATE.finditer(text):
        tag = normalise(_tag_prefix(m.group(1)))
        if tag and not tag.isdigit() and len(tag) <= MAX_TAG_LENGTH:
            seen.setdefault(tag, None)
    return list(seen)


def tags_from_list(tags: Iterable[str]) -> list[str]:
    """A tag list from a manifest (``["#Cake", "pie"]``) through the same rules as a caption."""
    return parse_hashtags(" ".join("#" + str(t).strip().lstrip("#＃") for t in tags if str(t).strip()))


def scrape_tag_set(scrape_tags: Iterable[str]) -> frozenset[str]:
    """The scrape's own search tags, normalised, with their English plurals (``recipe``, ``recipes``)."""
    out = set()
    for t in scrape_tags:
        base = normalise(t.strip())
        if base:
            out |= {base, base + ("es" if base.endswith(("s", "x", "z", "ch", "sh")) else "s")}
    return frozenset(out)
