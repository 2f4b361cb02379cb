"""How two vocabulary terms are related in meaning: NLTK's WordNet, and the head of a compound tag.

``Relations(pipeline).between(a, b)`` returns the closest relation of two terms (lemmas or match keys,
as the label pipeline makes them), or None:

- ``synonym``: they share a WordNet synset (any part of speech): dessert/sweet (dessert.n.01),
  donut/doughnut, autumn/fall, bake/baked (bake.v.01).
- ``derived``: a lemma of one is a derivationally related form of a lemma of the other
  (smoker/smoked through smoke.v.01).
- ``kind_of``: one's noun or verb synset is a hypernym of the other's within ``MAX_DEPTH`` steps
  (vegan is a kind of vegetarian, barbecue of grill), among the first ``KIND_SENSES`` senses of
  each word (WordNet lists senses most frequent first); ``broader`` names the hypernym term.
- ``sibling``: the first noun senses of both share a direct hypernym (breakfast and brunch are
  kinds of meal.n.01); ``via`` names it. Only the first sense, and only one step: rarer senses and
  longer paths relate nearly any two foods (burrito and breakfast through nutriment.n.01, dinner
  and smoker as kinds of party).
- ``compound``: one term ends with a word whose lemma is the other (babybackribs ends with ribs ->
  rib, steaktartare with tartare, homebaking with baking), the English compound's head; ``broader``
  is the head. The part before it must be at least 3 letters.

Hypernym steps are counted by ``Synset.shortest_path_distance`` to the lowest common hypernym.
Relations say two terms *may* mean the same; ``instatag.suggest`` groups them only when the photos
agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

#: hypernym steps for kind_of ("shared hypernyms within a small depth"); siblings: one step
MAX_DEPTH = 2
#: senses of a word (per part of speech, most frequent first) that kind_of considers
KIND_SENSES = 2
MIN_MODIFIER = 3
#: relation kinds, closest first
KINDS = ("synonym", "derived", "compound", "kind_of", "sibling")


@dataclass(frozen=True)
class Relation:
    kind: str
    #: the WordNet synset(s) or words behind it, for people ("dessert.n.01", "meal.n.01")
    via: str
    #: the broader of the two terms when one is (kind_of, compound), else None
    broader: str | None = None

    def describe(self, a: str, b: str) -> str:
        if self.kind == "synonym":
            return f"WordNet synonyms ({self.via})"
        if self.kind == "derived":
            return f"WordNet derived forms ({self.via})"
        if self.kind == "compound":
            other = b if self.broader == a else a
            return f"{other} is a compound of {self.broader}"
        if self.kind == "kind_of":
            other = b if self.broader == a else a
            return f"WordNet: {other} is a kind of {self.broader} ({self.via})"
        return f"WordNet: both kinds of {self.via}"


class Relations:
    """Relations between terms under one label pipeline (its WordNet and lemmatiser)."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.wn = pipeline.require_wordnet()
        self.synsets = lru_cache(maxsize=None)(self._synsets)

    def _synsets(self, term: str) -> tuple:
        return tuple(self.wn.synsets(term)) if term.isalpha() else ()

    def between(self, a: str, b: str) -> Relation | None:
        if a == b:
            return None
        found = [r for r in (self._wordnet(a, b), self._compound(a, b), self._compound(b, a)) if r]
        return min(found, key=lambda r: KINDS.index(r.kind)) if found else None

    def _compound(self, whole: str, head: str) -> Relation | None:
        if not whole.isalpha() or len(whole) < len(head) + MIN_MODIFIER:
            return None
        for start in range(MIN_MODIFIER, len(whole) - 2):
            tail = whole[start:]
            if tail == head or self.pipeline.lemma(tail) == head:
                return Relation("compound", f"{whole[:start]}+{tail}", head)
        return None

    def _wordnet(self, a: str, b: str) -> Relation | None:
        sa, sb = self.synsets(a), self.synsets(b)
        if not sa or not sb:
            return None
        shared = [s for s in sa if s in sb]
        if shared:
            return Relation("synonym", shared[0].name())
        names_b = {lemma.name().lower() for s in sb for lemma in s.lemmas()}
        for s in sa:
            for lemma in s.lemmas():
                for form in lemma.derivationally_related_forms():
                    if form.name().lower() in names_b:
                        return Relation("derived", f"{lemma.synset().name()}/{form.synset().name()}")
        best = None
        for x in self._senses(a, KIND_SENSES):
            for y in self._senses(b, KIND_SENSES):
                if x.pos() != y.pos():
                    continue
                common = [c for c in x.lowest_common_hypernyms(y) if c in (x, y)]
                if not common:
                    continue
                d = x.shortest_path_distance(y)
                if d is not None and d <= MAX_DEPTH and (best is None or d < best[0]):
                    broader = a if common[0] == x else b
                    best = (d, Relation("kind_of", f"{(y if broader == a else x).name()} < {common[0].name()}",
                                        broader))
        if best:
            return best[1]
        x, y = self._senses(a, 1, "n"), self._senses(b, 1, "n")
        if x and y:
            shared = set(_parents(x[0])) & set(_parents(y[0]))
            if shared:
                return Relation("sibling", sorted(s.name() for s in shared)[0])
        return None

    def _senses(self, term: str, n: int, pos: str = "nv") -> list:
        """The first ``n`` senses of each part of speech in ``pos`` (nouns, verbs)."""
        out = []
        for p in pos:
            out += [s for s in self.synsets(term) if s.pos() == p][:n]
        return out


def _parents(synset) -> list:
    return synset.hypernyms() + synset.instance_hypernyms()
