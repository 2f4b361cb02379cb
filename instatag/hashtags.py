"""Caption → hashtags, the way Instagram reads them, and the one key every vocabulary rule compares.

Ingest stores each tag as typed (``parse_hashtags``); the vocabulary compares tags through
``match_key``. The rules, with one example each, are in docs/ingest.md ("Hashtags") and
docs/grouping.md ("The match key"). In short, ``#`` (or the full-width ``＃``) starts a tag:

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
repeated in one caption counts once. Parsing imports nothing beyond the standard library; only
``match_key`` of an emoji tag imports the ``emoji`` library (the vocabulary step).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

#: the database column holds at most this many characters
MAX_TAG_LENGTH = 255
#: a trailing number is folded out of the match key only after at least this many characters
MIN_STEM = 3

_CANDIDATE = re.compile(r"[#＃]([^\s#＃]+)")
_WORD = re.compile(r"\w+")  # letters, digits and _ in any script; marks and joiners are checked one by one
_JOINERS = frozenset("\u200c\u200d")  # zero-width (non-)joiner: part of words in Indic and Persian scripts
_SKIN_TONES = re.compile("[\U0001F3FB-\U0001F3FF]")
#: a URL runs to the next space: a scheme, ``www.``, or a domain name followed by ``/``
_URL = re.compile(r"(?<![\w.-])(?:[a-z][a-z0-9+.-]*://|www\.|(?:[\w-]+\.)+[a-z]{2,}/)\S*", re.IGNORECASE)
_TRAILING_NUMBER = re.compile(r"\d+$")


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


def stored_tag(tag: str) -> str:
    """One tag as ``post_hashtags`` stores it: without ``#``, NFC, case-folded (``#TomatoSoup`` →
    ``tomatosoup``). Only that: what a vocabulary compares is ``match_key``, which also folds
    width, separators, emoji and trailing numbers."""
    return unicodedata.normalize("NFC", tag.lstrip("#＃").casefold())


def _url_spans(text: str) -> list[tuple[int, int]]:
    if "/" not in text and "www." not in text and "WWW." not in text:
        return []
    return [m.span() for m in _URL.finditer(text)]


def parse_hashtags(caption: str | None) -> list[str]:
    """The hashtags of ``caption`` as typed (each as ``stored_tag`` writes it), unique, in order of
    first appearance."""
    if not caption:
        return []
    text = unicodedata.normalize("NFC", caption)
    urls = _url_spans(text)
    seen: dict[str, None] = {}
    for m in _CANDIDATE.finditer(text):
        if urls and any(a <= m.start() < b for a, b in urls):
            continue
        tag = stored_tag(_tag_prefix(m.group(1)))
        if tag and not tag.isdigit() and len(tag) <= MAX_TAG_LENGTH:
            seen.setdefault(tag, None)
    return list(seen)


def tags_from_list(tags: Iterable[str]) -> list[str]:
    """A tag list from a manifest (``["#Cake", "pie"]``) through the same rules as a caption."""
    return parse_hashtags(" ".join("#" + str(t).strip().lstrip("#＃") for t in tags if str(t).strip()))


# --------------------------------------------------------------------------- the match key
def match_key(tag: str) -> str:
    """The one key under which a hashtag (or an entry of the grouping file) is compared: the
    drop list, scrape tags, groups, the WordNet lemmatiser and the word splitter all see this.

    In order: case-fold, drop a leading ``#``; an emoji tag (no letter or digit) becomes its CLDR
    short name, skin tones left out (``🍕`` → ``pizza``, ``🍎`` → ``red_apple``; the ``emoji``
    library, imported only here); NFKC (``ｃａｋｅ`` → ``cake``); separators go (Unicode connector
    and dash punctuation: ``food_porn`` → ``foodporn``, ``ice-cream`` → ``icecream``); anything but
    a letter or digit goes from the start, and from the end unless a visible mark
    (``__pie__`` → ``pie``, ``yum😋`` → ``yum``); a trailing number goes when ``MIN_STEM`` or more
    characters precede it (``recipes2026`` → ``recipes``, ``top10`` → ``top``; ``b12``, ``7up``,
    ``2026`` stay). ``''`` when nothing is left (``😋!``, ``___``)."""
    text = tag.casefold().lstrip("#＃")
    if not any(c.isalnum() for c in text) and any(_emoji(c) for c in text):
        text = _emoji_names(text)
    return _fold(text)


def _emoji_names(text: str) -> str:
    import emoji

    return emoji.demojize(_SKIN_TONES.sub("", text), delimiters=("_", "_")).casefold()


def _fold(text: str) -> str:
    """``match_key`` without emoji names (what ingest can compute without the emoji library)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(c for c in text if unicodedata.category(c) not in ("Pc", "Pd"))
    start, end = 0, len(text)
    while start < end and not text[start].isalnum():
        start += 1
    while end > start and not (text[end - 1].isalnum() or _mark(text[end - 1])):
        end -= 1
    text = text[start:end]
    if (m := _TRAILING_NUMBER.search(text)) and m.start() >= MIN_STEM:
        text = text[:m.start()]
    return text


@dataclass(frozen=True)
class ScrapeTags:
    """The scrape's own search tags as match keys, with their English plurals. ``tag in scrape``
    compares the tag's key without emoji names (``recipes2026`` and ``re_cipe`` are in ``recipe``'s)."""

    keys: frozenset[str] = frozenset()

    def __contains__(self, tag: str) -> bool:
        if tag in self.keys:
            return True
        if tag.isascii() and tag.isalpha() and tag.islower():  # the common case: already its own key
            return False
        return _fold(tag.lstrip("#＃")) in self.keys

    def __iter__(self):
        return iter(sorted(self.keys))

    def __len__(self) -> int:
        return len(self.keys)


def scrape_tag_set(scrape_tags: Iterable[str]) -> ScrapeTags:
    """The scrape's own search tags (``recipe``, ``recipes``): which stored tags ingest flags
    ``is_scrape_tag``."""
    out = set()
    for t in scrape_tags:
        base = _fold(t.strip().lstrip("#＃"))
        if base:
            out |= {base, base + ("es" if base.endswith(("s", "x", "z", "ch", "sh")) else "s")}
    return ScrapeTags(frozenset(out))
