"""Caption → hashtags, the way Instagram reads them.

Ingest stores each tag as typed (``parse_hashtags``). The rules, with one example each, are in
docs/ingest.md ("Hashtags"). In short, ``#`` (or the full-width ``＃``) starts a tag:

- a **word tag**: a letter, digit or ``_``, then letters, digits, ``_`` and combining marks in any
  script (``#café``, ``#디저트``, ``#हिंदी``), zero-width (non-)joiners inside (Persian, Indic);
  anything else ends it: punctuation (``#cake!``), emoji (``#yum😋``), another ``#`` (``#a#b``);
- an **emoji tag**: an emoji first, then emoji and their components (skin tones, joiners,
  variation selectors): ``#🍕``, ``#👨‍🍳``. Instagram links emoji hashtags since 2015;
- **no tag**: a ``#`` inside a URL (``…/lasagna/#wprm-recipe-container-812``, ``youtu.be/x?a#t=1m22s``),
  or followed by an invisible mark (``#️⃣`` is the keycap emoji).

A tag never starts or ends with an invisible mark (zero-width joiners and non-joiners,
variation selectors, the keycap mark). Tags are NFC-normalised and case-folded; purely numeric
tags (``#1``) and tags longer than ``MAX_TAG_LENGTH`` are dropped (Instagram links neither); a tag
repeated in one caption counts once. Parsing imports nothing beyond the standard library.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

#: the database column holds at most this many characters
MAX_TAG_LENGTH = 255

_CANDIDATE = re.compile(r"[#＃]([^\s#＃]+)")
_WORD = re.compile(r"\w+")  # letters, digits and _ in any script; marks and joiners are checked one by one
_JOINERS = frozenset("\u200c\u200d")  # zero-width (non-)joiner: part of words in Indic and Persian scripts
_SKIN_TONES = re.compile("[\U0001F3FB-\U0001F3FF]")
#: a URL runs to the next space: a scheme, ``www.``, or a domain name followed by ``/``
_URL = re.compile(r"(?<![\w.-])(?:[a-z][a-z0-9+.-]*://|www\.|(?:[\w-]+\.)+[a-z]{2,}/)\S*", re.IGNORECASE)


def _invisible(c: str) -> bool:
    """Zero-width (non-)joiner, variation selector, combining enclosing keycap, emoji tag character."""
    o = ord(c)
    return (c in _JOINERS or 0xFE00 <= o <= 0xFE0F or 0xE0100 <= o <= 0xE01EF or o == 0x20E3
            or 0xE0020 <= o <= 0xE007F)


def _emoji(c: str) -> bool:
    """A pictographic symbol (Unicode category So: 🍕, ❤, ©, flags' regional indicators)."""
    return unicodedata.category(c) == "So"


def _emoji_part(c: str) -> bool:
    return _emoji(c) or _invisible(c) or _SKIN_TONES.match(c) is not None


def _mark(c: str) -> bool:
    """A visible combining mark (accents, Indic vowel signs); invisible marks are not."""
    return unicodedata.category(c).startswith("M") and not _invisible(c)


def _tag_prefix(candidate: str) -> str:
    """The tag at the start of ``candidate`` (the text after ``#`` up to the next space or ``#``)."""
    if m := _WORD.match(candidate):
        i = m.end()
        if i == len(candidate):  # the common case: letters, digits and _ only
            return candidate
        while i < len(candidate):
            if m := _WORD.match(candidate, i):
                i = m.end()
            elif candidate[i] in _JOINERS or _mark(candidate[i]):
                i += 1
            else:
                break
    elif _emoji(candidate[0]):
        i = 1
        while i < len(candidate) and _emoji_part(candidate[i]):
            i += 1
    else:  # punctuation, an invisible mark (#️⃣ is the keycap emoji), a mark without a base
        return ""
    while i and _invisible(candidate[i - 1]):
        i -= 1
    return candidate[:i]


def normalise(tag: str) -> str:
    """One tag as stored: without ``#``, NFC, case-folded (``#TomatoSoup`` → ``tomatosoup``)."""
    return unicodedata.normalize("NFC", tag.lstrip("#＃").casefold())


def _url_spans(text: str) -> list[tuple[int, int]]:
    if "/" not in text and "www." not in text and "WWW." not in text:
        return []
    return [m.span() for m in _URL.finditer(text)]


def parse_hashtags(caption: str | None) -> list[str]:
    """The hashtags of ``caption`` as typed (normalised by ``normalise``), unique, in order of
    first appearance."""
    if not caption:
        return []
    text = unicodedata.normalize("NFC", caption)
    urls = _url_spans(text)
    seen: dict[str, None] = {}
    for m in _CANDIDATE.finditer(text):
        if urls and any(a <= m.start() < b for a, b in urls):
            continue
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
