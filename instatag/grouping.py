"""The grouping file: which hashtags are never labels, which lemmas merge into one label.

A YAML mapping with exactly these keys (all optional; see ``docs/grouping.md``)::

    scrape_tags: [recipe]          # the scrape's own search tags: never labels, their plurals neither
    drop: [foodie, instafood]      # non-content tags
    min_count: 5%                  # labels on fewer images are dropped: a share of the images
                                   # with a candidate label ("5%"), or a number of images (95)
    groups:                        # group label -> member lemmas
      sweets_sum: [dessert, sweet]
    split_hashtags: true           # split run-together tags (#chocolatecake -> chocolate, cake)

Entries of ``scrape_tags``, ``drop`` and ``groups`` are stored as their match key
(``hashtags.match_key``: ``food_porn`` -> ``foodporn``, ``🍕`` -> ``pizza``), the key every tag is
compared under; group labels are case-folded, a leading ``#`` ignored. Loading checks only the
file itself; no WordNet is needed. ``load_grouping(None)`` reads the packaged default ``data/groups.yaml``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

from .errors import UserError
from .hashtags import match_key

DEFAULT_FILE = Path(__file__).resolve().parent / "data" / "groups.yaml"
KEYS = ("scrape_tags", "drop", "min_count", "groups", "split_hashtags")
#: a tag, lemma or label: one hashtag-like word, no spaces and no '#'
_TERM = re.compile(r"^[^\s#]{1,255}$")
#: min_count as a share: a percentage such as 5% or 2.5%
_SHARE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
#: min_count as typed on a command line or in a DAG run's form: "95" or "5%"
MIN_COUNT_PATTERN = r"^\s*\d+(\.\d+)?\s*%\s*$|^\s*0*[1-9][0-9]*\s*$"
MIN_COUNT_FORMS = "a whole number of images (95) or a share of the images with a candidate label (5%)"


@dataclass(frozen=True)
class Grouping:
    scrape_tags: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    #: an image count (int) or a share of the images with a candidate label ("5%"); see min_count_images
    min_count: int | str = 1
    #: group label -> member lemmas (sorted by label)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    split_hashtags: bool = True
    #: where it was read from (not part of the canonical config)
    source: str = field(default="", compare=False)

    def with_scrape_tags(self, extra) -> Grouping:
        """The same grouping with ``extra`` scrape tags added (e.g. ``settings.scrape_tags``)."""
        tags = _terms(self.source, "scrape_tags", list(self.scrape_tags) + list(extra))
        _check_overlaps(self.source, tags, self.drop, self.groups)
        return replace(self, scrape_tags=tags)

    def with_min_count(self, min_count: int | str) -> Grouping:
        """The same grouping with another ``min_count`` (95, "95" or "5%"; see ``parse_min_count``)."""
        return replace(self, min_count=parse_min_count(min_count, "--min-count"))

    def as_dict(self) -> dict:
        """The canonical form: sorted, de-duplicated, JSON-ready."""
        return {
            "scrape_tags": list(self.scrape_tags),
            "drop": list(self.drop),
            "min_count": self.min_count,
            "groups": {label: list(members) for label, members in self.groups.items()},
            "split_hashtags": self.split_hashtags,
        }

    def sha256(self) -> str:
        return hashlib.sha256(canonical_json(self.as_dict()).encode()).hexdigest()


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def load_grouping(path: str | Path | None = None) -> Grouping:
    """Read and validate a grouping file (``None``: the packaged default)."""
    import yaml

    path = Path(path) if path else DEFAULT_FILE
    if not path.is_file():
        raise UserError(f"grouping file {path}: no such file")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_unique_key_loader())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"grouping file {path}: not valid YAML: {exc}") from None
    return grouping_from_dict(data, source=str(path))


def grouping_from_dict(data, source: str = "<config>") -> Grouping:
    """Validate a grouping given as a mapping (a parsed file, or a stored ``vocab_versions.config``)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"grouping file {source}: must be a mapping with the keys {', '.join(KEYS)}, "
                        f"not {type(data).__name__}")
    unknown = [str(k) for k in data if k not in KEYS]
    if unknown:
        raise UserError(f"grouping file {source}: unknown key(s) {', '.join(sorted(unknown))}; "
                        f"the keys are {', '.join(KEYS)}")
    scrape = _terms(source, "scrape_tags", data.get("scrape_tags"))
    drop = _terms(source, "drop", data.get("drop"))
    min_count = parse_min_count(data.get("min_count", 1), f"grouping file {source}: min_count")
    split = data.get("split_hashtags", True)
    if not isinstance(split, bool):
        raise UserError(f"grouping file {source}: split_hashtags must be true or false, not {split!r}")
    groups = _groups(source, data.get("groups"))
    _check_overlaps(source, scrape, drop, groups)
    return Grouping(scrape, drop, min_count, groups, split, source)


def _norm(value) -> str:
    return value.strip().lstrip("#").casefold()


def _terms(source: str, key: str, value) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise UserError(f"grouping file {source}: {key} must be a list of hashtags, not {type(value).__name__}")
    out = set()
    for item in value:
        if not isinstance(item, str) or not _TERM.match(_norm(item)):
            raise UserError(f"grouping file {source}: {key} holds {item!r}; each entry must be one hashtag "
                            "(a word without spaces)")
        if not (term := match_key(item)):
            raise UserError(f"grouping file {source}: {key} holds {item!r}, which has no letter, digit or "
                            "emoji to match a hashtag by")
        out.add(term)
    return tuple(sorted(out))


def parse_min_count(value, what: str = "min_count") -> int | str:
    """``min_count`` in its canonical form: a whole number of images >= 1 (``95``; a string of digits,
    as typed on a command line, counts too) or a share ``"P%"`` with 0 < P <= 100 (``"5%"``,
    ``"2.5%"``; written without trailing zeros). Anything else is a ``UserError`` naming ``what``."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    share = _SHARE.match(value) if isinstance(value, str) else None
    if share and 0 < Decimal(share[1]) <= 100:
        return f"{Decimal(share[1]).normalize():f}%"
    raise UserError(f"{what} must be {MIN_COUNT_FORMS}, not {value!r}")


def min_count_images(min_count: int | str, n_candidates: int) -> int:
    """How many images a label needs to be kept: ``min_count`` itself when it is a number of images;
    for a share ``"P%"``, P % of ``n_candidates`` (the images whose hashtags give at least one
    candidate label, before any is dropped as rare) rounded up, and at least 1. Exact: ``"5%"`` of
    1,949 images is 98 (97.45 rounded up)."""
    if isinstance(min_count, int):
        return min_count
    share = Fraction(Decimal(min_count.rstrip("%"))) / 100
    return max(1, math.ceil(share * n_candidates))


def _groups(source: str, value) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"grouping file {source}: groups must map a group label to a list of lemmas, "
                        f"not {type(value).__name__}")
    groups: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for raw_label, members in value.items():
        if not isinstance(raw_label, str) or not _TERM.match(_norm(raw_label)):
            raise UserError(f"grouping file {source}: group label {raw_label!r} must be one word without spaces")
        label = _norm(raw_label)
        if label in groups:
            raise UserError(f"grouping file {source}: group {label!r} is defined twice")
        if members is None or members == []:
            raise UserError(f"grouping file {source}: group {label!r} is empty; list its member lemmas")
        terms = _terms(source, f"group {label!r}", members)
        for lemma in terms:
            if lemma in owner:
                raise UserError(f"grouping file {source}: {lemma!r} is in two groups, "
                                f"{owner[lemma]!r} and {label!r}; a lemma may belong to one group only")
            owner[lemma] = label
        groups[label] = terms
    for label in groups:
        if owner.get(label, label) != label:
            raise UserError(f"grouping file {source}: group label {label!r} is also a member of group "
                            f"{owner[label]!r}; rename one of them")
    return dict(sorted(groups.items()))


def _check_overlaps(source: str, scrape, drop, groups) -> None:
    grouped = {m: label for label, members in groups.items() for m in (label, *members)}
    both = sorted(set(scrape) & set(drop))
    if both:
        raise UserError(f"grouping file {source}: {both[0]!r} is in both scrape_tags and drop; list it once")
    for key, terms in (("scrape_tags", scrape), ("drop", drop)):
        for term in terms:
            if term in grouped:
                raise UserError(f"grouping file {source}: {term!r} is in {key} and in group {grouped[term]!r}; "
                                f"{key} are never labels, so remove it from one of them")


@lru_cache(maxsize=1)
def _unique_key_loader():
    """A safe YAML loader that refuses a key given twice (PyYAML would keep the last silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


# --------------------------------------------------------------------------- writing a grouping file
def dump_grouping(grouping: Grouping, notes: dict | None = None, header: str = "") -> str:
    """A grouping file's YAML text, with comments: ``header`` (lines, '# ' added) on top, and a comment
    after an entry where ``notes`` has one: ``notes["drop"][entry]``, ``notes["groups"][label]``,
    ``notes["min_count"]``. PyYAML drops comments, so the text is written here, each scalar quoted by
    PyYAML where YAML needs it. ``load_grouping`` reads it back to ``grouping`` (tests/test_suggest.py)."""
    notes = notes or {}

    def note(text: str | None) -> str:
        return f"  # {' '.join(str(text).split())}" if text else ""

    def flow(items) -> str:
        return "[" + ", ".join(_yaml_scalar(i) for i in items) + "]"

    lines = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    lines.append(f"scrape_tags: {flow(grouping.scrape_tags)}")
    drop_notes = notes.get("drop", {})
    if any(drop_notes.get(d) for d in grouping.drop):
        lines.append("drop:")
        lines += [f"  - {_yaml_scalar(d)}{note(drop_notes.get(d))}" for d in grouping.drop]
    else:
        lines.append(f"drop: {flow(grouping.drop)}")
    lines.append(f"min_count: {_yaml_scalar(grouping.min_count)}{note(notes.get('min_count'))}")
    lines.append(f"split_hashtags: {'true' if grouping.split_hashtags else 'false'}")
    if grouping.groups:
        lines.append("groups:")
        group_notes = notes.get("groups", {})
        lines += [f"  {_yaml_scalar(label)}: {flow(members)}{note(group_notes.get(label))}"
                  for label, members in grouping.groups.items()]
    else:
        lines.append("groups: {}")
    return "\n".join(lines) + "\n"


def _yaml_scalar(value) -> str:
    """One scalar as YAML writes it in a flow sequence (quoted when plain would mean something else)."""
    import yaml

    text = yaml.safe_dump([value], default_flow_style=True, allow_unicode=True, width=10**6).strip()
    return text[1:-1]
