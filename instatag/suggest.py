"""The vocabulary proposes its own grouping, with evidence (``instatag vocab suggest``).

``suggest(settings, groups_file)`` reads every ingested post, maps its hashtags under the grouping
file (``labels.LabelPipeline``, min_count left out) and proposes changes to that file, each with its
evidence; nothing is applied. ``grouping_text(report, ids)`` is the file plus the accepted suggestions
(``apply_changes``), written by ``grouping.dump_grouping`` with a comment per change. Kinds, in the
order they are listed:

- **W, keep a tag whole**: a split tag (``#finedining`` -> fine, dining) one of whose parts is never a
  tag of its own: the part is a fragment, not a label. Written as a one-member group, which keeps the
  tag unsplit (docs/grouping.md, rule 2). Counting only; the rest is measured on the grouping with
  these applied.
- **D, drop a label a photo cannot show**: measured by a linear probe (``instatag.probe``) on frozen
  pretrained features of the images (``instatag.features``, cached): the label's average precision is
  no better than a random ranking's (p >= ``ALPHA``, or under ``MIN_LIFT`` times it; only for labels
  on ``PROBE_POWER`` images or more, below that a real tag's AP is too noisy to tell), or its
  co-occurrence with the labels the probe can see (p < ``VISUAL_P``) is flat: no more specific than
  a random set of as many photos (permutation p >= ``ALPHA``, or under ``FLAT_RATIO`` times the
  random sets' divergence).
- **G, group labels that mean the same thing to the photo**: related in meaning (``instatag.relations``:
  WordNet synonyms, derived forms, a kind of the other within two hypernym steps, siblings under one
  direct hypernym, or a compound's head) **and** on the same photos: the probe's heads of the two (both clearly visual,
  p < ``VISUAL_P``) cannot tell the photos with only one from the photos with only the other (ROC AUC
  under ``SAME_PHOTO_AUC``), or, where that cannot be measured, one is on at least
  ``SAME_PHOTO_OVERLAP`` of the other's photos and they co-occur above chance; co-occurrence above
  chance or correlated probe scores select the pairs to test. Related pairs are clustered with
  complete linkage (scikit-learn), so every two members of a group qualify. The group's name is the
  member that is broader than (or a synonym of) all others (a WordNet hypernym, a compound's head),
  the most frequent such, else the most frequent member; an existing group that is the most frequent
  member keeps its label.
- **M, min_count**: on the grouping with every other suggestion applied, the probe's AP per label
  against the label's image count, fitted by an isotonic (monotone) regression on the log count (the
  AP a label of that frequency can expect): the cut where that falls below ``LEARNABLE_SHARE`` of the
  frequent labels' (the most frequent quarter's median AP), as a share of the images with a
  candidate label, raised until ``vocab.check_trainable`` passes.

Labels on fewer than ``PROBE_MIN`` images are not probed (min_count decides them). The report (JSON,
``<data dir>/suggestions/suggest-<UTC time>.json``) holds the base file, every suggestion with its
evidence and how to apply it, per-label probe figures, example image ids for thumbnails, and the
AP-by-frequency curve; the Airflow UI's instatag page shows the newest.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .errors import UserError
from .grouping import Grouping, dump_grouping, grouping_from_dict, load_grouping, min_count_images
from .hashtags import match_key

log = logging.getLogger(__name__)

#: labels on fewer images are not probed, nor suggested (min_count decides them)
PROBE_MIN = 10
#: the probe measures at most this many images (those first by content hash: a fixed random sample);
#: the figures are settled long before, and the random rankings and photo sets stay in memory
MAX_IMAGES = 20_000
#: the probe's AP alone proposes a drop only for labels on at least this many images
PROBE_POWER = 30
#: significance of "no better than chance" and "as flat as random photos"
ALPHA = 0.05
#: an AP under this many times a random ranking's is no better than chance in effect, significant or not
MIN_LIFT = 1.25
#: a label's co-occurrence is flat under this many times a random photo set's divergence
FLAT_RATIO = 2.0
#: labels the probe sees this clearly are the reference set of co-occurrence
VISUAL_P = 0.01
#: the probe cannot tell two labels' photos apart under this ROC AUC
SAME_PHOTO_AUC = 0.75
#: without enough photos to test: one label on at least this share of the other's photos
SAME_PHOTO_OVERLAP = 0.5
#: probe score correlation that makes a pair worth testing when the labels rarely co-occur
SCORE_CORRELATION = 0.5
#: min_count: a label must expect at least this share of the frequent labels' probe AP. Chosen on food10
#: (docs/grouping.md, Suggestions): 1/2 kept 33 labels whose probe mAP was 12 % under the default
#: grouping's 26; 2/3 keeps 26, 4 % under
LEARNABLE_SHARE = 2 / 3
#: example images per tag in the report (thumbnails in the UI)
EXAMPLES = 3
FOLDER = "suggestions"
KIND_ORDER = ("whole", "drop", "group", "min_count")
PREFIX = {"whole": "W", "drop": "D", "group": "G", "min_count": "M"}


@dataclass
class Suggestion:
    id: str
    kind: str
    #: what it changes, for people ("drop foodie", "group dessert: dessert, sweet")
    title: str
    #: why, one line: the comment written next to the entry
    reason: str
    #: the numbers behind it
    evidence: dict
    #: how ``apply`` writes it
    change: dict
    #: label or tag -> example image ids (thumbnails)
    examples: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- the data
@dataclass
class Corpus:
    """Every ingested image with its hashtags (as ``vocab.build`` reads them)."""

    shas: dict[int, str]
    paths: dict[int, Path]
    tags_by_image: dict
    n_posts: int


def read_corpus(settings) -> Corpus:
    from sqlalchemy import func, select

    from . import db
    from . import schema as t
    from .vocab import _tags_by_image

    with db.get_engine(settings).connect() as conn:
        rows = conn.execute(select(t.images.c.id, t.images.c.sha256, t.images.c.resized_path)).all()
        n_posts = conn.execute(select(func.count()).select_from(t.posts)).scalar_one()
        tags = _tags_by_image(conn, t)
    base = settings.data_dir.absolute()
    return Corpus({r.id: r.sha256 for r in rows}, {r.id: base / r.resized_path for r in rows}, tags, n_posts)


@dataclass
class Tally:
    """The candidate labels of every image under one grouping (``vocab._tally`` with min_count 1)."""

    grouping: Grouping
    pipeline: object
    image_labels: dict[int, list[str]]
    counts: dict[str, int]
    stats: dict
    shas: dict[int, str]


def tally(grouping: Grouping, corpus: Corpus) -> Tally:
    from dataclasses import replace

    from .labels import LabelPipeline
    from .vocab import _tally

    pipeline = LabelPipeline(replace(grouping, min_count=1))
    pipeline.require_wordnet()
    res = _tally(pipeline, corpus.shas, corpus.tags_by_image)
    return Tally(grouping, pipeline, res["image_labels"], {x["label"]: x["count"] for x in res["labels"]},
                 res["stats"], corpus.shas)


def _matrix(t: Tally, labels: list[str]) -> tuple[list[int], np.ndarray]:
    """(image ids with at least one of ``labels``, multi-hot [n, len(labels)])."""
    index = {label: j for j, label in enumerate(labels)}
    ids = [i for i, ls in t.image_labels.items() if any(x in index for x in ls)]
    Y = np.zeros((len(ids), len(labels)), np.float32)
    for r, i in enumerate(ids):
        for x in t.image_labels[i]:
            if x in index:
                Y[r, index[x]] = 1
    return ids, Y


def _examples(ids: list[int], shas: dict[int, str], column: np.ndarray) -> list[int]:
    """EXAMPLES image ids with the label, the first by content hash (a fixed, unbiased choice)."""
    mine = [i for i, y in zip(ids, column, strict=True) if y]
    return sorted(mine, key=shas.__getitem__)[:EXAMPLES]


# --------------------------------------------------------------------------- the probe, on one vocabulary
@dataclass
class Probed:
    labels: list[str]
    ids: list[int]
    Y: np.ndarray
    scores: np.ndarray
    evidence: list  # probe.LabelProbe per label
    seconds: float


def run_probe(t: Tally, corpus: Corpus, featurize, min_images: int = PROBE_MIN) -> Probed:
    from . import probe

    labels = sorted((x for x, n in t.counts.items() if n >= min_images), key=lambda x: (-t.counts[x], x))
    ids, Y = _matrix(t, labels)
    if len(ids) > MAX_IMAGES:
        keep = sorted(range(len(ids)), key=lambda r: corpus.shas[ids[r]])[:MAX_IMAGES]
        ids, Y = [ids[r] for r in sorted(keep)], Y[sorted(keep)]
    if len(ids) < 2 * probe.N_FOLDS or len(labels) < 2:
        raise UserError(f"too little to measure: {len(ids)} images and {len(labels)} labels on at least "
                        f"{min_images} images each; ingest more posts")
    X = featurize(ids)
    start = time.monotonic()
    folds = probe.folds_of([corpus.shas[i] for i in ids])
    scores = probe.out_of_fold_scores(X, Y, folds)
    evidence = probe.label_evidence(Y, scores, probe.RandomDraws(len(ids)))
    return Probed(labels, ids, Y, scores, evidence, time.monotonic() - start)


# --------------------------------------------------------------------------- W: keep a tag whole
def whole_tags(t: Tally, corpus: Corpus) -> list[Suggestion]:
    """Split tags with a part that is never a tag of its own."""
    p = t.pipeline
    standalone: set[str] = set()
    split: dict[str, list[str]] = {}
    for tag in t.stats["raw_tags"]:
        key = match_key(tag)
        labelled = [r.label for r in p.resolve(tag) if r.label]
        if key in p.splits:
            split[key] = labelled
        else:
            standalone.update(labelled)
    images: Counter = Counter()
    example: dict[str, list[int]] = defaultdict(list)
    for image_id in sorted(corpus.tags_by_image, key=corpus.shas.__getitem__):
        for key in {match_key(tag) for tag, is_scrape in corpus.tags_by_image[image_id] if not is_scrape} & set(split):
            images[key] += 1
            if len(example[key]) < EXAMPLES:
                example[key].append(image_id)
    out = []
    for key in sorted(split, key=lambda k: (-images[k], k)):
        fragments = [x for x in dict.fromkeys(split[key]) if x not in standalone]
        if not fragments or images[key] < PROBE_MIN or key in t.grouping.groups:
            continue
        parts = p.splits[key]
        out.append(Suggestion(
            "", "whole", f"keep #{key} whole",
            f"split into {' + '.join(parts)}, but {', '.join(fragments)} "
            f"{'is' if len(fragments) == 1 else 'are'} never a tag of its own ({images[key]} images)",
            {"tag": key, "parts": parts, "fragments": fragments, "images": images[key]},
            {"whole": key}, {f"#{key}": example[key]}))
    return out


def with_whole(grouping: Grouping, keys) -> Grouping:
    d = grouping.as_dict()
    d["groups"] = {**d["groups"], **{k: [k] for k in keys}}
    return grouping_from_dict(d, source=grouping.source)


# --------------------------------------------------------------------------- D: drops
def drops(pr: Probed, units: dict[str, list[str]], base: Grouping, corpus: Corpus) -> tuple[list[Suggestion], dict]:
    """Drop suggestions, and the per-label evidence table."""
    from . import probe

    visual = np.array([e.p_value < VISUAL_P for e in pr.evidence])
    draws = probe.RandomDraws(len(pr.ids), seed=1)
    table, out = {}, []
    for j, label in enumerate(pr.labels):
        e = pr.evidence[j]
        spec = probe.cooccurrence_specificity(pr.Y, j, visual, pr.labels, draws)
        no_signal = e.n >= PROBE_POWER and (e.p_value >= ALPHA or e.lift < MIN_LIFT)
        flat = spec is not None and (spec.p_value >= ALPHA or spec.ratio < FLAT_RATIO)
        row = {"label": label, "images": e.n, "prevalence": e.prevalence, "ap": e.ap, "chance": e.chance,
               "p_value": e.p_value, "visual": bool(visual[j]), "specificity": spec and {
                   "kl_bits": spec.kl_bits, "random_bits": spec.null_bits, "ratio": spec.ratio,
                   "p_value": spec.p_value, "top": spec.top, "top_lift": spec.top_lift},
               "no_signal": no_signal, "flat": flat}
        table[label] = row
        if not (no_signal or flat):
            continue
        why = [f"probe AP {e.ap:.3f} vs {e.chance:.3f} by chance ({e.lift:.2f}x, p = {e.p_value:.3f})" +
               (": no better" if no_signal else "")]
        if spec is not None:
            why.append(f"co-occurrence {spec.ratio:.1f}x as specific as random photos (p = {spec.p_value:.2f})"
                       + (": flat" if flat else ""))
        entries, remove = _entries(label, units, base)
        out.append(Suggestion("", "drop", f"drop {label}",
                              f"{label} ({e.n} images): " + "; ".join(why), row,
                              {"drop": entries, "remove_groups": remove},
                              {label: _examples(pr.ids, corpus.shas, pr.Y[:, j])}))
    out.sort(key=lambda s: (-s.evidence["images"], s.evidence["label"]))
    return out, table


def _entries(label: str, units: dict[str, list[str]], base: Grouping) -> tuple[list[str], list[str]]:
    """The grouping entries that make ``label``, and the base groups they come from."""
    return list(units.get(label, [label])), [label] if label in base.groups else []


# --------------------------------------------------------------------------- G: groups
def groups(pr: Probed, kept: list[str], units: dict[str, list[str]], base: Grouping, corpus: Corpus,
           counts: dict[str, int], relations) -> list[Suggestion]:
    """Group suggestions among the ``kept`` labels (those not proposed as drops)."""
    pairs = pair_evidence(pr, kept, units, relations)
    index = {label: j for j, label in enumerate(pr.labels)}
    out = []
    for members in _complete_linkage(pairs, kept):
        name = _group_name(members, pairs, counts, base)
        evidence = [pairs.get((a, b)) or pairs[(b, a)] for i, a in enumerate(members) for b in members[i + 1:]]
        n = int(pr.Y[:, [index[m] for m in members]].any(axis=1).sum())
        why = "; ".join(_pair_reason(v) for v in evidence[:3]) + ("; ..." if len(evidence) > 3 else "")
        out.append(Suggestion(
            "", "group", f"group {name}: {', '.join(members)}", f"{', '.join(members)} ({n} images): {why}",
            {"name": name, "labels": members, "images": n, "pairs": evidence},
            {"group": name, "members": sorted({e for m in members for e in units.get(m, [m])}),
             "remove_groups": [m for m in members if m in base.groups]},
            {m: _examples(pr.ids, corpus.shas, pr.Y[:, index[m]]) for m in members}))
    out.sort(key=lambda s: (-s.evidence["images"], s.evidence["name"]))
    return out


def pair_evidence(pr: Probed, kept: list[str], units: dict[str, list[str]], relations) -> dict:
    """(a, b) -> the evidence of two labels related in meaning that co-occur above chance or whose probe
    scores correlate; ``same_photos`` says whether they qualify for a group."""
    from . import probe

    index = {label: j for j, label in enumerate(pr.labels)}
    kept = [x for x in kept if x in index]
    cols = [index[x] for x in kept]
    Y = pr.Y[:, cols].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.nan_to_num(np.corrcoef(pr.scores[:, cols].T))
        p = Y.mean(axis=0)
        joint = (Y.T @ Y) / len(Y)
        above_chance = joint > np.outer(p, p)  # co-occur more than independent labels would (NPMI > 0)
    candidates = np.argwhere(np.triu(above_chance | (corr >= SCORE_CORRELATION), k=1))
    pairs: dict[tuple[str, str], dict] = {}
    for a_i, b_i in candidates:  # the others are neither on the same posts nor on the same kind of photo
        a, b = kept[a_i], kept[b_i]
        ya, yb = pr.Y[:, index[a]], pr.Y[:, index[b]]
        co = probe.cooccurrence(ya, yb)
        related = _unit_relation(relations, units, a, b)
        if related is None:
            continue
        rel, meaning = related
        visual = pr.evidence[index[a]].p_value < VISUAL_P and pr.evidence[index[b]].p_value < VISUAL_P
        auc = probe.pair_discrimination(pr.scores[:, index[a]], pr.scores[:, index[b]], ya, yb) \
            if visual else None
        same = auc < SAME_PHOTO_AUC if auc is not None else co.overlap >= SAME_PHOTO_OVERLAP and co.npmi > 0
        pairs[(a, b)] = {"a": a, "b": b, "relation": rel.kind, "via": rel.via, "broader": rel.broader,
                         "meaning": meaning, "auc": auc, "only_a": co.only_a, "only_b": co.only_b,
                         "both": co.both, "jaccard": co.jaccard, "overlap": co.overlap, "npmi": co.npmi,
                         "score_correlation": float(corr[a_i, b_i]), "same_photos": bool(same)}
    return pairs


def _complete_linkage(pairs: dict, order: list[str]) -> list[list[str]]:
    """Clusters of two or more labels in which every two qualify (``same_photos``): scikit-learn's
    agglomerative clustering with complete linkage on a distance of 1 between labels that do not
    qualify and, between those that do, half how well the probe tells them apart (0 when not at all)."""
    from sklearn.cluster import AgglomerativeClustering

    linked = sorted({x for (a, b), v in pairs.items() if v["same_photos"] for x in (a, b)}, key=order.index)
    if len(linked) < 2:
        return []
    dist = np.ones((len(linked), len(linked)))
    np.fill_diagonal(dist, 0)
    for (a, b), v in pairs.items():
        if v["same_photos"]:
            i, j = linked.index(a), linked.index(b)
            dist[i, j] = dist[j, i] = 0.5 * min(1.0, 2 * abs((0.5 if v["auc"] is None else v["auc"]) - 0.5))
    clusters = AgglomerativeClustering(n_clusters=None, metric="precomputed", linkage="complete",
                                       distance_threshold=1.0).fit_predict(dist)
    out = [[x for x, k in zip(linked, clusters, strict=True) if k == c] for c in sorted(set(clusters))]
    return [c for c in out if len(c) > 1]


def _pair_reason(v: dict) -> str:
    same = (f"the probe cannot tell them apart (AUC {v['auc']:.2f} on {v['only_a']}/{v['only_b']} photos "
            f"with only one)" if v["auc"] is not None else
            f"{v['overlap']:.0%} of the rarer one's photos carry both")
    posts = "never on the same photo" if not v["both"] else f"co-occurrence NPMI {v['npmi']:+.2f}"
    return f"{v['meaning']}, {same}, {posts}"


def _unit_relation(relations, units: dict[str, list[str]], a: str, b: str):
    """The closest relation between any term of ``a`` (its label and entries) and any of ``b``: the relation
    said of the labels (``broader`` is ``a`` or ``b``) and its description in the terms it was found
    between; None when there is none."""
    from .relations import KINDS, Relation

    found = []
    for x in dict.fromkeys([a, *units.get(a, [])]):
        for y in dict.fromkeys([b, *units.get(b, [])]):
            rel = relations.between(x, y)
            if rel:
                broader = None if rel.broader is None else (a if rel.broader == x else b)
                found.append((Relation(rel.kind, rel.via, broader), rel.describe(x, y)))
    return min(found, key=lambda r: KINDS.index(r[0].kind)) if found else None


def _group_name(members: list[str], pairs: dict, counts: dict[str, int], base: Grouping) -> str:
    """An existing group's label when that group is the most frequent member, else the member broader than
    (or a synonym or derived form of) every other, the most frequent such, else the most frequent member."""
    def frequency(m: str):
        return counts.get(m, 0), -len(m), m

    most = max(members, key=frequency)
    if most in base.groups:
        return most

    def covers(m: str) -> bool:
        for o in members:
            if o == m:
                continue
            v = pairs.get((m, o)) or pairs.get((o, m))
            if v is None or not (v["relation"] in ("synonym", "derived") or v["broader"] == m):
                return False
        return True

    broad = [m for m in members if covers(m)]
    return max(broad or members, key=frequency)


# --------------------------------------------------------------------------- M: min_count
def min_count_cut(pr: Probed, t: Tally) -> tuple[Suggestion | None, list[dict]]:
    """The min_count suggestion on a probed vocabulary, and the AP-by-frequency curve."""
    from sklearn.isotonic import IsotonicRegression

    from .vocab import MIN_LABELS, check_trainable

    order = sorted(range(len(pr.labels)), key=lambda j: (-t.counts[pr.labels[j]], pr.labels[j]))
    aps = np.array([pr.evidence[j].ap for j in order])
    counts = [t.counts[pr.labels[j]] for j in order]
    expected = IsotonicRegression(increasing=True).fit_transform(np.log(counts), aps)
    top = float(np.median(aps[: max(3, len(aps) // 4)]))
    threshold = LEARNABLE_SHARE * top
    curve = [{"label": pr.labels[j], "images": counts[i], "ap": float(aps[i]), "chance": pr.evidence[j].chance,
              "expected_ap": float(expected[i])} for i, j in enumerate(order)]
    below = np.flatnonzero(expected < threshold)
    keep = int(below[0]) if len(below) else len(order)
    keep = max(keep, MIN_LABELS)
    n = t.stats["n_candidates"]
    while keep <= len(order):
        need = counts[keep - 1]
        floor = counts[keep] if keep < len(order) else 0
        value = _as_share(need, floor, n)
        stats = tally_stats(t, value)
        try:
            check_trainable(stats, value)
            break
        except UserError:
            keep -= 1
            if keep < MIN_LABELS:
                return None, curve
    else:
        return None, curve
    kept = stats["labels"]
    first_out = curve[keep] if keep < len(curve) else None
    where = (f"from {first_out['label']} ({first_out['images']} images) on, a label can expect a probe AP of "
             f"{first_out['expected_ap']:.3f}, under {LEARNABLE_SHARE:.2f} x the frequent labels' {top:.3f}"
             if first_out else "every probed label is learnable")
    reason = (f"keeps the {len(kept)} labels on at least {stats['min_count_images']} of the {n} images with a "
              f"candidate label: {where}")
    return Suggestion("", "min_count", f"min_count {value}", reason,
                      {"min_count": value, "images": stats["min_count_images"], "n_candidates": n,
                       "labels": len(kept), "frequent_ap": top, "threshold": threshold},
                      {"min_count": value}), curve


def _as_share(need: int, floor: int, n: int) -> str | int:
    """A share "P%" (0.1 % steps) whose image count keeps labels on ``need`` images but not ``floor``;
    the count itself when no share falls between."""
    if n <= 0:
        return need
    tenths = max(1, (floor * 1000) // n)
    while tenths <= 1000:
        share = f"{tenths / 10:g}%"
        images = min_count_images(share, n)
        if floor < images <= need:
            return share
        if images > need:
            break
        tenths += 1
    return need


def tally_stats(t: Tally, min_count) -> dict:
    """What ``vocab._tally`` stores in ``stats`` for ``t``'s grouping at ``min_count``: the fields
    ``vocab.check_trainable`` reads."""
    from .labels import VALID_PCT, is_valid

    need = min_count_images(min_count, t.stats["n_candidates"])
    labels = {x: n for x, n in sorted(t.counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= need}
    train, valid = Counter(), Counter()
    for image_id, ls in t.image_labels.items():
        (valid if is_valid(t.shas[image_id], VALID_PCT) else train).update(x for x in ls if x in labels)
    return {"labels": labels, "dropped_rare": {x: n for x, n in t.counts.items() if n < need},
            "train_counts": {x: train[x] for x in labels}, "valid_counts": {x: valid[x] for x in labels},
            "n_candidates": t.stats["n_candidates"], "min_count_images": need}


# --------------------------------------------------------------------------- the whole run
@dataclass
class Report:
    created_at: str
    #: the grouping file the suggestions are for, and its content (canonical form)
    groups_file: str
    base: dict
    #: scrape tags of the settings, added to the file's for the analysis (as ``vocab build`` does)
    scrape_tags: list
    backbone: str
    counts: dict
    seconds: dict
    suggestions: list[Suggestion]
    #: per probed label of the grouping with the W suggestions applied: probe and co-occurrence figures
    labels: dict
    #: per label of the grouping with all but M applied: images, probe AP, the AP expected at that frequency
    curve: list
    #: the grouping with every suggestion accepted, and its label count
    suggested: dict
    suggested_labels: int
    path: str = ""

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return {k: v for k, v in asdict(self).items() if k != "path"}

    @classmethod
    def from_dict(cls, data: dict, path: str = "") -> Report:
        data = dict(data)
        data["suggestions"] = [Suggestion(**s) for s in data["suggestions"]]
        return cls(**data, path=path)

    def by_id(self) -> dict[str, Suggestion]:
        return {s.id: s for s in self.suggestions}


def suggest(settings, groups_file: str | Path | None = None, featurize=None, arch: str | None = None,
            size: int | None = None) -> Report:
    """Measure and list grouping suggestions for ``groups_file`` (default: INSTATAG_GROUPS_FILE, else
    the packaged one) on every ingested post. ``featurize(image_ids) -> float [n, d]`` replaces the
    backbone features (tests); ``arch``/``size``: the backbone (default: the ``default`` preset's).
    Nothing is written but the feature cache; ``save_report`` stores the result."""
    from .relations import Relations

    start = time.monotonic()
    base = load_grouping(groups_file or settings.groups_file or None)
    grouping = base.with_scrape_tags(settings.scrape_tags)
    corpus = read_corpus(settings)
    if not corpus.tags_by_image:
        raise UserError("no posts ingested yet: run `instatag ingest` first")
    if featurize is None:
        featurize, backbone = _featurizer(settings, corpus, arch, size)
    else:
        backbone = getattr(featurize, "backbone", "injected")

    t0 = tally(grouping, corpus)
    whole = whole_tags(t0, corpus)
    g1 = with_whole(grouping, [w.change["whole"] for w in whole])
    t1 = tally(g1, corpus)
    feature_start = time.monotonic()
    featurize(sorted({i for i, ls in t1.image_labels.items() if ls}))  # once, with progress; cached after
    feature_s = time.monotonic() - feature_start
    pr1 = run_probe(t1, corpus, featurize)
    units = {label: list(members) for label, members in g1.groups.items()}
    drop_s, table = drops(pr1, units, base, corpus)
    dropped = {s.evidence["label"] for s in drop_s}
    group_start = time.monotonic()
    group_s = groups(pr1, [x for x in pr1.labels if x not in dropped], units, base, corpus, t1.counts,
                     Relations(t1.pipeline))
    group_s_time = time.monotonic() - group_start
    draft = _numbered([*whole, *drop_s, *group_s])
    g2, _ = apply_changes(grouping, draft)
    t2 = tally(g2, corpus)
    pr2 = run_probe(t2, corpus, featurize)
    cut, curve = min_count_cut(pr2, t2)
    suggestions = _numbered([*draft, *([cut] if cut else [])])
    suggested, _ = apply_changes(base, suggestions)
    final = apply_changes(grouping, suggestions)[0]
    n_labels = len(tally_stats(tally(final, corpus), final.min_count)["labels"])
    kinds = Counter(s.kind for s in suggestions)
    return Report(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"), groups_file=base.source, base=base.as_dict(),
        scrape_tags=sorted(settings.scrape_tags), backbone=backbone,
        counts={"posts": corpus.n_posts, "images": len(corpus.shas), "candidates": t1.stats["n_candidates"],
                "probed_images": len(pr1.ids), "probed_labels": len(pr1.labels),
                "labels_now": len(tally_stats(t0, grouping.min_count)["labels"]),
                **{f"{k}_suggestions": kinds[k] for k in KIND_ORDER}},
        seconds={"features": round(feature_s, 1), "probe": round(pr1.seconds + pr2.seconds, 1),
                 "groups": round(group_s_time, 1), "total": round(time.monotonic() - start, 1)},
        suggestions=suggestions, labels=table, curve=curve, suggested=suggested.as_dict(),
        suggested_labels=n_labels)


def _featurizer(settings, corpus: Corpus, arch, size):
    from . import features

    arch_, size_ = features.default_backbone()
    arch, size = arch or arch_, int(size or size_)

    def featurize(ids):
        return features.image_features(settings, [features.Image(corpus.shas[i], corpus.paths[i]) for i in ids],
                                       arch, size)

    return featurize, features.backbone_id(settings, arch, size)


def _numbered(suggestions: list[Suggestion]) -> list[Suggestion]:
    """IDs by kind in list order: W1.., D1.., G1.., M1."""
    out, seen = [], Counter()
    for s in sorted(suggestions, key=lambda s: KIND_ORDER.index(s.kind)):
        seen[s.kind] += 1
        s.id = f"{PREFIX[s.kind]}{seen[s.kind]}"
        out.append(s)
    return out


# --------------------------------------------------------------------------- applying suggestions
def apply_changes(grouping: Grouping, suggestions) -> tuple[Grouping, dict]:
    """``grouping`` with ``suggestions`` applied (whole, group, drop, min_count, in that order), and the
    comment of each changed entry (``grouping.dump_grouping``'s ``notes``). A tag kept whole that is
    then grouped or dropped is only grouped or dropped."""
    d = grouping.as_dict()
    groups = {label: list(members) for label, members in d["groups"].items()}
    drop = list(d["drop"])
    notes: dict = {"drop": {}, "groups": {}, "min_count": None}

    def take_out(entries) -> None:  # from every group; a group left empty goes
        for label in list(groups):
            rest = [m for m in groups[label] if m not in entries]
            if len(rest) != len(groups[label]):
                groups[label] = rest
                if not rest:
                    del groups[label]
                    notes["groups"].pop(label, None)

    for s in sorted(suggestions, key=lambda s: KIND_ORDER.index(s.kind)):
        c, note = s.change, f"{s.id}: {s.reason}"
        if s.kind == "whole":
            key = c["whole"]
            if key not in drop and not any(key in m for m in groups.values()):
                groups[key] = [key]
                notes["groups"][key] = note
        elif s.kind == "group":
            for label in c["remove_groups"]:
                groups.pop(label, None)
            members = set(c["members"])
            take_out(members)
            groups[c["group"]] = sorted(members)
            notes["groups"][c["group"]] = note
        elif s.kind == "drop":
            for label in c["remove_groups"]:
                groups.pop(label, None)
            take_out(set(c["drop"]))
            for entry in c["drop"]:
                if entry not in drop:
                    drop.append(entry)
                notes["drop"][entry] = note
        elif s.kind == "min_count":
            d["min_count"] = c["min_count"]
            notes["min_count"] = note
    d.update(groups=groups, drop=drop)
    return grouping_from_dict(d, source=grouping.source), notes


def accepted(report: Report, ids) -> list[Suggestion]:
    """The suggestions named by ``ids`` (``all``, or IDs such as D1 G2, any case); UserError for an unknown one."""
    ids = [i.strip() for x in ids for i in str(x).replace(",", " ").split()]
    if any(i.lower() == "all" for i in ids):
        return list(report.suggestions)
    known = report.by_id()
    unknown = [i for i in ids if i.upper() not in known]
    if unknown:
        raise UserError(f"no suggestion {', '.join(unknown)} in this report; its suggestions are "
                        f"{', '.join(known) or 'none'}")
    wanted = {i.upper() for i in ids}
    return [s for s in report.suggestions if s.id in wanted]


def grouping_text(report: Report, ids) -> str:
    """The grouping file: the report's base file plus the accepted suggestions, commented."""
    chosen = accepted(report, ids)
    base = grouping_from_dict(report.base, source=report.groups_file)
    grouping, notes = apply_changes(base, chosen)
    import textwrap

    header = textwrap.fill(
        f"Grouping written by `instatag vocab suggest` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC from "
        f"{report.groups_file}: its entries (not its comments) plus the accepted suggestions "
        f"{', '.join(s.id for s in chosen) or '(none)'} of the report of {report.created_at}"
        + (f" ({Path(report.path).name})" if report.path else "") + ", each commented with its id and "
        "evidence. Use it with `instatag vocab build --groups FILE` or the retrain DAG's groups_file param "
        "(docs/grouping.md, Suggestions).", width=100, break_on_hyphens=False)
    return dump_grouping(grouping, notes, header)


# --------------------------------------------------------------------------- stored reports
def reports_dir(settings) -> Path:
    return settings.data_dir / FOLDER


def save_report(settings, report: Report) -> Path:
    """Store the report as ``<data dir>/suggestions/suggest-<UTC time>.json`` (atomically); its path."""
    from .files import write_atomic

    stamp = datetime.fromisoformat(report.created_at).strftime("%Y%m%dT%H%M%SZ")
    folder = reports_dir(settings)
    path, n = folder / f"suggest-{stamp}.json", 1
    while path.exists():
        n += 1
        path = folder / f"suggest-{stamp}-{n}.json"
    write_atomic(path, json.dumps(report.as_dict(), indent=1, ensure_ascii=False, default=_json).encode())
    report.path = str(path)
    return path


def _json(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


def report_files(settings) -> list[Path]:
    """Stored reports, newest first."""
    folder = reports_dir(settings)
    if not folder.is_dir():
        return []

    def order(path: Path):  # suggest-<stamp>.json, then suggest-<stamp>-2.json ... in the same second
        _, stamp, *n = path.stem.split("-")
        return stamp, int(n[0]) if n and n[0].isdigit() else 1

    return sorted(folder.glob("suggest-*.json"), key=order, reverse=True)


def load_report(path: str | Path) -> Report:
    path = Path(path)
    try:
        return Report.from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: no such suggestion report") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"{path}: not a suggestion report ({exc})") from None


def latest_report(settings) -> Report | None:
    files = report_files(settings)
    return load_report(files[0]) if files else None


# --------------------------------------------------------------------------- text
def describe(report: Report) -> str:
    c = report.counts
    lines = [
        f"Suggestions for {report.groups_file} ({c['posts']} posts, {c['images']} images, {c['candidates']} with "
        f"a candidate label; it gives {c['labels_now']} labels now)",
        f"probe: {report.backbone} features of {c['probed_images']} images, {c['probed_labels']} labels on at least "
        f"{PROBE_MIN} images; {report.seconds['total']:.0f} s (features {report.seconds['features']:.0f} s, "
        f"probe {report.seconds['probe']:.0f} s)",
        "",
    ]
    if not report.suggestions:
        lines.append("no suggestions: the grouping file fits the data as far as the probe can tell")
    for s in report.suggestions:
        lines.append(f"{s.id:>4}  {s.title}")
        lines.append(f"      {s.reason}")
    lines += ["", f"with all accepted: {report.suggested_labels} labels. Probe AP by frequency (the grouping with all "
              "but M applied): label, images, AP, AP expected at that frequency (isotonic fit)"]
    for row in report.curve:
        lines.append(f"      {row['label'][:24]:24} {row['images']:>6} {row['ap']:.3f} {row['expected_ap']:.3f}")
    if report.path:
        lines += ["", f"report: {report.path}"]
    lines.append("accept: instatag vocab suggest --report latest --accept all|ID... --write FILE")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI
def add_cli(vocab_sub) -> None:
    """``instatag vocab suggest``, under ``vocab.add_cli``'s subparsers (``cli`` adds it there)."""
    from .archs import names

    p = vocab_sub.add_parser(
        "suggest", help="propose drops, groups and min_count for the grouping file, with evidence",
        description="Measure which labels a photo cannot show (a linear probe on frozen pretrained features, "
        "cached under the data dir), which mean the same thing to the photo (WordNet, co-occurrence, the "
        "probe's confusions) and where min_count should cut; print the ranked suggestions with their "
        "evidence and store the report (the Airflow UI's instatag page shows it). Nothing is applied: "
        "--accept and --write write a new grouping file. See docs/grouping.md, Suggestions.")
    p.add_argument("--groups", type=Path, metavar="FILE",
                   help="grouping YAML to improve (default: INSTATAG_GROUPS_FILE, else the packaged one)")
    p.add_argument("--report", metavar="PATH|latest",
                   help="use a stored report instead of measuring again (e.g. to accept after reviewing it)")
    p.add_argument("--accept", nargs="+", metavar="ID", help="the suggestions to accept: all, or IDs (D1 G2 M1)")
    p.add_argument("--write", type=Path, metavar="FILE",
                   help="write the grouping file plus the accepted suggestions (needs --accept)")
    p.add_argument("--force", action="store_true", help="let --write replace an existing file")
    p.add_argument("--arch", choices=names(), help="backbone of the probe (default: the default preset's)")
    p.add_argument("--size", type=int, metavar="PX", help="input side of the probe (default: the default preset's)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_suggest_cmd)


def _suggest_cmd(args, settings) -> int:
    if args.write and not args.accept:
        raise UserError("--write needs --accept: all, or the IDs of the suggestions to accept (e.g. D1 G2 M1)")
    if args.accept and not args.write:
        raise UserError("--accept needs --write FILE: the grouping file to write")
    if args.write and args.write.exists() and not args.force:
        raise UserError(f"{args.write} exists; choose another file or add --force to replace it (its comments "
                        "would be lost)")
    if args.report:
        report = latest_report(settings) if args.report == "latest" else load_report(args.report)
        if report is None:
            raise UserError("no stored suggestion report yet: run `instatag vocab suggest` first")
    else:
        report = suggest(settings, args.groups, arch=args.arch, size=args.size)
        save_report(settings, report)
    if args.json:
        print(json.dumps(report.as_dict(), indent=1, ensure_ascii=False, default=_json))
    else:
        print(describe(report))
    if args.write:
        from .files import write_atomic

        text = grouping_text(report, args.accept)
        write_atomic(args.write, text.encode())
        load_grouping(args.write)  # it must load back
        chosen = accepted(report, args.accept)
        print(f"\nwrote {args.write} with {len(chosen)} accepted suggestion(s) "
              f"({', '.join(s.id for s in chosen) or 'none'}); next: instatag vocab build --groups {args.write}")
    return 0
