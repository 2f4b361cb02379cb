"""The grouping file: which hashtags are never labels, which lemmas merge into one label.

A YAML mapping with exactly these keys (all optional; see ``docs/grouping.md``)::

    scrape_tags: [recipe]          # the scrape's own search tags: never labels, their plurals neither
    drop: [foodie, instafood]      # non-content tags
    min_count: 20                  # labels on fewer images are dropped
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
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from .errors import UserError
from .hashtags import match_key

DEFAULT_FILE = Path(__file__).resolve().parent / "data" / "groups.yaml"
KEYS = ("scrape_tags", "drop", "min_count", "groups", "split_hashtags")
#: a tag, lemma or label: one hashtag-like word, no spaces and no '#'
_TERM = re.compile(r"^[^\s#]{1,255}$")


@dataclass(frozen=True)
class Grouping:
    scrape_tags: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    min_count: int = 1
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

    def with_min_count(self, min_count: int) -> Grouping:
        return replace(self, min_count=_min_count(self.source or "--min-count", min_count))

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
    min_count = _min_count(source, data.get("min_count", 1))
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


def _min_count(source: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"grouping file {source}: min_count must be a positive whole number, not {value!r}")
    return value


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
