"""The one label pipeline: raw hashtag -> lemma(s) -> label, and a stored vocabulary version.

``LabelPipeline(grouping)`` maps hashtags to labels the way ``instatag vocab build`` does;
``LabelPipeline.for_version(settings)`` is a stored vocabulary (labels in model-output order,
training counts, labelled images) for training, evaluation and scoring. The rules, in order,
for one hashtag (docs/grouping.md has the details):

1. The match key (``hashtags.match_key``): case-fold, an emoji tag becomes its CLDR name,
   NFKC, separators and a trailing number folded out (``#Food_Porn`` -> ``foodporn``,
   ``#recipes2026`` -> ``recipes``, ``#🍕`` -> ``pizza``, ``#yum😋`` -> ``yum``). Every later
   step, and every entry of the grouping file, works on keys.
2. An entry of the grouping file (scrape tag, drop, group member) matches the key itself or its
   lemma; entries match through their own lemma too (``drop: [foodie]`` drops ``#foodies``).
3. Lemma: NLTK's ``WordNetLemmatizer().lemmatize(key, "n")`` (WordNet, offline).
4. A key that is neither a WordNet word nor a grouping entry is split when wordsegment maps it,
   or its singular, onto two or more known words of at least 3 letters (``chocolatecake`` ->
   chocolate, cake; ``applepies`` -> apple, pie); each part then goes through 2-3.
5. Scrape tags and dropped tags give no label; a group member gives the group's label; any
   other lemma is its own label. A stored version keeps only its labels (min_count applied).
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Iterable

from .errors import UserError
from .grouping import Grouping, grouping_from_dict
from .hashtags import match_key

Item = namedtuple("Item", "image_id sha256 resized_path labels")
#: one lemma of a tag and what became of it: label (None when excluded), why (None | "scrape" | "drop" | "rare")
Resolved = namedtuple("Resolved", "lemma label why")

MIN_PART = 3
_SPLITTABLE = re.compile(rf"^[a-z]{{{2 * MIN_PART},}}$")
_SCRAPE, _DROP = object(), object()


#: the share of images in the validation split of a new vocabulary version. A built version stores its
#: own (``vocab_versions.valid_pct``, ``LabelPipeline.valid_pct``): training, evaluation, the report
#: and the drops split that version's images by it, never by this constant.
VALID_PCT = 0.2


def is_valid(sha256: str, valid_pct: float = VALID_PCT) -> bool:
    """Whether an image belongs to the validation split: a function of its content hash alone."""
    return int(sha256[:8], 16) / 2**32 < valid_pct


def valid_pct_of(conn, vocab_version_id: int) -> float:
    """The validation share a vocabulary version was built with (``vocab_versions.valid_pct``)."""
    from sqlalchemy import select

    from . import schema as t

    found = conn.execute(select(t.vocab_versions.c.valid_pct).where(t.vocab_versions.c.id == vocab_version_id)
                         ).scalar()
    if found is None:
        raise UserError(f"vocabulary version {vocab_version_id} does not exist (see `instatag vocab list`)")
    return float(found)


def split(items: Iterable[Item], valid_pct: float = VALID_PCT) -> tuple[list[Item], list[Item]]:
    """(training items, validation items) by ``is_valid``."""
    train, valid = [], []
    for item in items:
        (valid if is_valid(item.sha256, valid_pct) else train).append(item)
    return train, valid


def _wordnet():
    from . import wordnet

    return wordnet.require()


def _segmenter():
    import wordsegment

    if not wordsegment.UNIGRAMS:
        wordsegment.load()
    return wordsegment.segment


class LabelPipeline:
    """Hashtags -> labels under one grouping; with a stored version, its labels and images too."""

    def __init__(self, grouping: Grouping, *, labels: list[str] | None = None, counts: dict | None = None,
                 splits: dict | None = None, version_id: int | None = None, valid_pct: float | None = None):
        self.grouping = grouping
        #: labels in model-output order (a stored version), else None: every candidate label
        self.labels = list(labels) if labels is not None else None
        #: training-split image count per label (a stored version)
        self.counts = dict(counts or {})
        self.version_id = version_id
        #: the validation share of the stored version (``vocab_versions.valid_pct``); None without one
        self.valid_pct = valid_pct
        #: tag -> parts of the hashtags split so far (a stored version starts from its recorded splits)
        self.splits: dict[str, list[str]] = {k: list(v) for k, v in (splits or {}).items()}
        self._index = {label: i for i, label in enumerate(self.labels or [])}
        self._wn = None
        self._lemmatizer = None
        self._entries: dict[str, object] | None = None
        self._cache: dict[str, tuple[Resolved, ...]] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_version(cls, settings, vocab_version_id: int | None = None) -> LabelPipeline:
        """The stored vocabulary ``vocab_version_id`` (the newest when None)."""
        from sqlalchemy import func, select

        from . import db
        from . import schema as t

        with db.get_engine(settings).connect() as conn:
            if vocab_version_id is None:
                vocab_version_id = conn.execute(select(func.max(t.vocab_versions.c.id))).scalar()
                if vocab_version_id is None:
                    raise UserError("no vocabulary version yet: run `instatag vocab build`")
            row = conn.execute(select(t.vocab_versions.c.config, t.vocab_versions.c.stats,
                                      t.vocab_versions.c.valid_pct)
                               .where(t.vocab_versions.c.id == vocab_version_id)).first()
            if row is None:
                raise UserError(f"vocabulary version {vocab_version_id} does not exist "
                                "(see `instatag vocab list`)")
            labels = conn.execute(select(t.vocab_labels.c.label)
                                  .where(t.vocab_labels.c.vocab_version_id == vocab_version_id)
                                  .order_by(t.vocab_labels.c.idx)).scalars().all()
        grouping = grouping_from_dict(row.config["grouping"], source=f"vocabulary version {vocab_version_id}")
        return cls(grouping, labels=labels, counts=row.stats.get("train_counts", {}),
                   splits=row.stats.get("splits", {}), version_id=vocab_version_id, valid_pct=float(row.valid_pct))

    def require_wordnet(self):
        """Load WordNet (or raise the UserError saying how to install it)."""
        if self._wn is None:
            from nltk.stem import WordNetLemmatizer

            self._wn = _wordnet()
            self._lemmatizer = WordNetLemmatizer()
        return self._wn

    # ------------------------------------------------------------------ one hashtag
    def lemma(self, word: str) -> str:
        """WordNet's noun lemma of a match key (the key itself when WordNet lacks it)."""
        self.require_wordnet()
        return self._lemmatizer.lemmatize(word, "n") if word else word

    def resolve(self, tag: str) -> tuple[Resolved, ...]:
        """The lemma(s) of a raw hashtag (several when split) and the label each gives."""
        if tag not in self._cache:
            key = match_key(tag)
            self._cache[tag] = tuple(self._resolve_lemma(lemma) for lemma in self._lemmas(key)) if key else ()
        return self._cache[tag]

    def lemmas(self, tag: str) -> tuple[str, ...]:
        return tuple(r.lemma for r in self.resolve(tag))

    def labels_for_tag(self, tag: str) -> tuple[str, ...]:
        """Every label a hashtag gives (several when it is split into parts), sorted."""
        return tuple(sorted({r.label for r in self.resolve(tag) if r.label is not None}))

    def labels_for_tags(self, tags: Iterable[str]) -> set[str]:
        return {label for tag in tags for label in self.labels_for_tag(tag)}

    def _lemmas(self, key: str) -> list[str]:
        entries = self._grouping_entries()
        if key in entries:
            return [key]
        lemma = self.lemma(key)
        if lemma in entries or not self.grouping.split_hashtags or self._known(key):
            return [lemma]
        parts = self._split(key)
        if not parts:
            return [lemma]
        return list(dict.fromkeys(p if p in entries else self.lemma(p) for p in parts))  # 🍕🍕: pizza once

    def _resolve_lemma(self, lemma: str) -> Resolved:
        target = self._grouping_entries().get(lemma, lemma)
        if target is _SCRAPE:
            return Resolved(lemma, None, "scrape")
        if target is _DROP:
            return Resolved(lemma, None, "drop")
        if self.labels is not None and target not in self._index:
            return Resolved(lemma, None, "rare")
        return Resolved(lemma, target, None)

    def _known(self, word: str) -> bool:
        return word in self._grouping_entries() or word in self.grouping.groups or \
            self.require_wordnet().morphy(word) is not None

    def _split(self, word: str) -> list[str] | None:
        if word in self.splits:
            return self.splits[word]
        if not _SPLITTABLE.match(word):
            return None
        segment = _segmenter()
        singulars = [word[: -len(old)] + new for old, new in self.require_wordnet().MORPHOLOGICAL_SUBSTITUTIONS["n"]
                     if word.endswith(old)]
        for form in [word, *singulars]:
            parts = segment(form)
            if len(parts) > 1 and all(len(p) >= MIN_PART and self._known(p) for p in parts):
                self.splits[word] = parts
                return parts
        return None

    def _grouping_entries(self) -> dict[str, object]:
        """word -> _SCRAPE | _DROP | group label, for every entry and (where free) the entry's lemma."""
        if self._entries is not None:
            return self._entries
        g = self.grouping
        explicit: dict[str, object] = {}
        for kind, words in ((_SCRAPE, g.scrape_tags), (_DROP, g.drop)):
            explicit.update(dict.fromkeys(words, kind))
        for label, members in g.groups.items():
            explicit.update(dict.fromkeys(members, label))
        derived: dict[str, tuple[object, str]] = {}
        for word, target in explicit.items():
            lemma = self.lemma(word)
            if lemma in explicit or lemma == word:
                continue
            if lemma in derived and derived[lemma][0] != target:
                raise UserError(f"grouping file {g.source}: {derived[lemma][1]!r} and {word!r} have the same "
                                f"WordNet lemma {lemma!r} but different roles; list {lemma!r} explicitly")
            derived.setdefault(lemma, (target, word))
        self._entries = {**{k: v for k, (v, _) in derived.items()}, **explicit}
        return self._entries

    # ------------------------------------------------------------------ a stored version
    def items(self, settings) -> list[Item]:
        """The version's labelled images, ordered by image id; labels in model-output order."""
        from sqlalchemy import select

        from . import db
        from . import schema as t

        self._need_version()
        q = (select(t.images.c.id, t.images.c.sha256, t.images.c.resized_path, t.image_labels.c.label)
             .join(t.image_labels, t.image_labels.c.image_id == t.images.c.id)
             .where(t.image_labels.c.vocab_version_id == self.version_id)
             .order_by(t.images.c.id))
        items: list[Item] = []
        data_dir = settings.data_dir.absolute()
        with db.get_engine(settings).connect() as conn:
            current, labels = None, []
            for image_id, sha, path, label in conn.execute(q):
                if current is None or current[0] != image_id:
                    if current:
                        items.append(Item(*current, tuple(sorted(labels, key=self._index.__getitem__))))
                    current, labels = (image_id, sha, data_dir / path), []
                labels.append(label)
            if current:
                items.append(Item(*current, tuple(sorted(labels, key=self._index.__getitem__))))
        return items

    def encode(self, labels: Iterable[str]):
        """Multi-hot float32 vector in model-output order."""
        import numpy as np

        self._need_version()
        out = np.zeros(len(self.labels), dtype=np.float32)
        for label in labels:
            if label not in self._index:
                raise ValueError(f"{label!r} is not a label of vocabulary version {self.version_id}")
            out[self._index[label]] = 1.0
        return out

    def decode(self, index: int) -> str:
        self._need_version()
        return self.labels[index]

    def _need_version(self) -> None:
        if self.labels is None or self.version_id is None:
            raise ValueError("this LabelPipeline has no stored version; use LabelPipeline.for_version")
