"""Build a label vocabulary version from every ingested post (``instatag vocab build``).

Hashtags of all posts of an image (an image re-posted twice gets the union) go through the one
label pipeline (``labels.LabelPipeline``); labels on fewer than ``min_count`` images are dropped
(``min_count`` is a number of images, or a share such as ``5%`` of the images with a candidate
label: ``grouping.min_count_images``); label order is count descending, then name. A vocabulary
that cannot train and validate a model (``check_trainable``: fewer than 2 labels, or a label with
too few training or validation images) is refused with a ``UserError`` before anything is stored.
The version is stored in one transaction: ``vocab_versions`` (config as applied, counts, frequency
tables in ``stats``), ``vocab_labels`` and ``image_labels``. Images left without a label stay in
the database, excluded from training.

Deterministic: the same posts and config give the same labels, order and counts. When the
result equals the newest stored version exactly, that version's id is returned and nothing is
written, so nightly re-runs without new posts do not pile up identical versions.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .grouping import canonical_json, load_grouping, min_count_images
from .labels import VALID_PCT, LabelPipeline, is_valid, match_key

#: What a vocabulary needs before a model is trained on it (``check_trainable``, docs/grouping.md).
#: At least 2 labels: with one, every image's ranking is that label, so dominant_recall@k and
#: precision@1 are 100 % for any model (the popularity baseline too): nothing to learn or compare.
MIN_LABELS = 2
#: Training images per label: with fewer than 5 (the usual few-shot floor, "5-shot") the network
#: memorises a label's photos rather than learning what they share.
MIN_TRAIN_IMAGES = 5
#: Validation images per label: a label's recall, AP and tuned threshold are measured on them. With
#: none the label is not measured at all (no AP, so neither mAP nor the promotion rule sees it); with
#: one, its recall is 0 % or 100 % and its threshold is fitted to a single photo.
MIN_VALID_IMAGES = 2


@dataclass(frozen=True)
class VocabBuild:
    version_id: int
    #: True when the result equalled the newest version and nothing new was stored
    reused: bool


def build_vocab(settings, groups_file: str | Path | None = None, min_count: int | str | None = None) -> int:
    """Build (or reuse an identical) vocabulary version from all posts; returns its id. ``UserError``
    when it cannot train a model (``check_trainable``)."""
    return build(settings, groups_file, min_count).version_id


def build(settings, groups_file: str | Path | None = None, min_count: int | str | None = None, *,
          check: bool = True) -> VocabBuild:
    """Build (or reuse an identical) vocabulary version from all posts. ``min_count`` (95, "95" or
    "5%") overrides the grouping file's. ``check``: refuse, storing nothing, a vocabulary that cannot
    train and validate a model (``check_trainable``); False stores it anyway (``vocab build --no-check``,
    to inspect what small data gives)."""
    from sqlalchemy import func, select

    from . import db, feedback
    from . import schema as t

    grouping = load_grouping(groups_file or settings.groups_file or None).with_scrape_tags(settings.scrape_tags)
    if min_count is not None:
        grouping = grouping.with_min_count(min_count)
    pipeline = LabelPipeline(grouping)
    wn = pipeline.require_wordnet()
    config = {"grouping": grouping.as_dict(), "tools": _tool_versions(wn, grouping.split_hashtags)}

    engine = db.get_engine(settings)
    with engine.connect() as conn:
        shas = dict(conn.execute(select(t.images.c.id, t.images.c.sha256)).all())
        n_posts = conn.execute(select(func.count()).select_from(t.posts)).scalar_one()
        tags_by_image = _tags_by_image(conn, t)
        verdicts = feedback.latest_verdicts(conn)
    result = _tally(pipeline, shas, tags_by_image, verdicts)
    if check:
        check_trainable(result["stats"], grouping.min_count)
    result.update(n_posts=n_posts, config=config, config_sha256=_sha(canonical_json(config)))

    with engine.begin() as conn:
        newest = conn.execute(select(t.vocab_versions.c.id, t.vocab_versions.c.config_sha256,
                                     t.vocab_versions.c.stats)
                              .order_by(t.vocab_versions.c.id.desc()).limit(1)).first()
        if newest and newest.config_sha256 == result["config_sha256"] \
                and newest.stats.get("content_sha256") == result["stats"]["content_sha256"]:
            return VocabBuild(newest.id, True)
        return VocabBuild(_store(conn, t, result), False)


def _tags_by_image(conn, t) -> dict[int, set[tuple[str, bool]]]:
    from sqlalchemy import func, select

    from .progress import progress

    total = conn.execute(select(func.count()).select_from(t.post_hashtags)).scalar_one()
    q = (select(t.posts.c.image_id, t.post_hashtags.c.tag, t.post_hashtags.c.is_scrape_tag)
         .join(t.posts, t.posts.c.id == t.post_hashtags.c.post_id))
    out: dict[int, set[tuple[str, bool]]] = defaultdict(set)
    rows = conn.execution_options(stream_results=True, yield_per=20_000).execute(q)
    for image_id, tag, is_scrape in progress(rows, total=total, desc="vocab: reading hashtags", unit="tags"):
        out[image_id].add((tag, bool(is_scrape)))
    return out


def _tally(pipeline: LabelPipeline, shas: dict[int, str], tags_by_image, verdicts=None) -> dict:
    """Labels per image, label order, members and the frequency tables. ``verdicts`` ({image_id:
    {label: confirmed | rejected}}, ``feedback.latest_verdicts``) take precedence over the uploader's
    labels of those images (``feedback.apply_verdicts``), before labels are counted."""
    from .feedback import apply_verdicts

    verdicts = {i: v for i, v in (verdicts or {}).items() if i in shas}
    from .progress import progress

    raw, lemmas, scrape, dropped, candidates = Counter(), Counter(), Counter(), Counter(), Counter()
    members: dict[str, set[str]] = defaultdict(set)
    image_candidates: dict[int, set[str]] = {}
    for image_id in progress(sorted(set(tags_by_image) | set(verdicts)), desc="vocab: mapping hashtags to labels",
                             unit="images"):
        tags = tags_by_image.get(image_id, set())
        raw.update({tag for tag, _ in tags})
        seen, labels, scr, drp = set(), set(), set(), set()
        for tag, is_scrape in tags:
            for r in pipeline.resolve(tag):
                seen.add(r.lemma)
                if is_scrape or r.why == "scrape":
                    scr.add(r.lemma)
                elif r.why == "drop":
                    drp.add(r.lemma)
                else:
                    labels.add(r.label)
                    members[r.label].add(r.lemma)
        if image_id in verdicts:
            labels = apply_verdicts(labels, verdicts[image_id])
        lemmas.update(seen)
        scrape.update(scr)
        dropped.update(drp)
        candidates.update(labels)
        image_candidates[image_id] = labels

    n_candidates = sum(1 for ls in image_candidates.values() if ls)
    min_count = min_count_images(pipeline.grouping.min_count, n_candidates)
    order = sorted((label for label, n in candidates.items() if n >= min_count), key=lambda x: (-candidates[x], x))
    keep = set(order)
    image_labels = {i: sorted(ls & keep) for i, ls in sorted(image_candidates.items()) if ls & keep}
    train, valid = Counter(), Counter()
    for image_id, ls in image_labels.items():
        (valid if is_valid(shas[image_id], VALID_PCT) else train).update(ls)
    n_valid = sum(is_valid(shas[i], VALID_PCT) for i in image_labels)

    stats = {
        "raw_tags": _table(raw),
        "lemmas": _table(lemmas),
        "labels": _table({label: candidates[label] for label in order}),
        "splits": dict(sorted((tag, parts) for tag, parts in pipeline.splits.items())),
        "dropped_rare": _table({label: n for label, n in candidates.items() if n < min_count}),
        "scrape": _table(scrape),
        "dropped": _table(dropped),
        "train_counts": {label: train[label] for label in order},
        "valid_counts": {label: valid[label] for label in order},
        "n_candidates": n_candidates,
        "min_count_images": min_count,
        "n_labelled": len(image_labels),
        "n_train_images": len(image_labels) - n_valid,
        "n_valid_images": n_valid,
        #: images whose labels people corrected (feedback.apply_verdicts replaced the uploader's)
        "n_verified_images": len(verdicts),
    }
    labels = [{"label": label, "idx": idx, "count": candidates[label], "members": sorted(members[label])}
              for idx, label in enumerate(order)]
    # the share is hashed as it was when stats held it, so an unchanged rebuild keeps its content_sha256
    digest = hashlib.sha256(canonical_json([labels, {**stats, "valid_pct": VALID_PCT}]).encode())
    for image_id, ls in image_labels.items():
        digest.update(canonical_json([image_id, ls]).encode())
    stats["content_sha256"] = digest.hexdigest()
    return {
        "labels": labels,
        "image_labels": image_labels,
        "valid_pct": VALID_PCT,
        "stats": stats,
        "n_images": len(shas),
        "n_unlabelled": len(shas) - len(image_labels),
        "n_raw_tags": len(raw),
        "n_lemmas": len(lemmas),
        "n_labels": len(order),
    }


# --------------------------------------------------------------------------- can it train a model?
def check_trainable(stats: dict, min_count: int | str) -> None:
    """Raise ``UserError`` unless a vocabulary can train and validate a model: at least MIN_LABELS
    labels, and every label on at least MIN_TRAIN_IMAGES images of the training split and
    MIN_VALID_IMAGES of the validation split (``labels.is_valid`` at ``VALID_PCT``, the presets' split).
    ``stats``: as ``vocab_versions.stats`` (``labels``, ``train_counts``, ``valid_counts``,
    ``dropped_rare``, ``n_candidates``, ``min_count_images``); ``min_count``: the rule that made it.
    The message names the numbers and what to change."""
    labels, dropped = stats["labels"], stats["dropped_rare"]
    n, need = stats["n_candidates"], stats["min_count_images"]
    rule = _rule(min_count, need, n)
    if len(labels) < MIN_LABELS:
        have = "no label" if not labels else "only " + ", ".join(f"{k} (on {c} images)" for k, c in labels.items())
        if not n:
            raise UserError(f"this vocabulary cannot train a model: {have}; no image has a hashtag that gives a "
                            f"label (a model needs at least {MIN_LABELS} labels). Ingest posts with content "
                            "hashtags, or check scrape_tags and drop in the grouping file.")
        below = ", ".join(f"{k} ({c})" for k, c in list(dropped.items())[:8]) or "none"
        raise UserError(f"this vocabulary cannot train a model: {have}, and a model needs at least {MIN_LABELS} "
                        f"labels. {rule} keeps the labels on at least {need} images; the most frequent labels "
                        f"below that: {below}. Lower min_count (--min-count, or the grouping file), group related "
                        "tags into one label in the grouping file, or ingest more posts.")
    train, valid = stats["train_counts"], stats["valid_counts"]
    short = [k for k in labels if train[k] < MIN_TRAIN_IMAGES or valid[k] < MIN_VALID_IMAGES]
    if not short:
        return
    listed = ", ".join(f"{k} {train[k]}/{valid[k]}" for k in short[:12])
    more = f", ... {len(short) - 12} more" if len(short) > 12 else ""
    higher, threshold = _raise_past(min_count, max(labels[k] for k in short) + 1, n)
    left = sum(c >= threshold for c in labels.values())
    fix = (f"raise min_count to {higher} to drop them ({left} labels would remain)" if left >= MIN_LABELS else
           f"raising min_count past them would leave {left} label{'s' * (left != 1)}")
    raise UserError(
        f"this vocabulary cannot train and validate a model: {len(short)} of its {len(labels)} labels "
        f"{'has' if len(short) == 1 else 'have'} fewer than {MIN_TRAIN_IMAGES} training or {MIN_VALID_IMAGES} "
        f"validation images (each label needs both; the validation split is {VALID_PCT:.0%} of the labelled "
        f"images, by content hash). Training/validation images: {listed}{more}. {rule} keeps the labels on at "
        f"least {need} images: {fix}; or group those tags with a related label in the grouping file, or ingest "
        "more posts.")


def _rule(min_count: int | str, need: int, n: int) -> str:
    if isinstance(min_count, int):
        return f"min_count {min_count}"
    return f"min_count {min_count} (of the {n} images with a candidate label)"


def _raise_past(min_count: int | str, images: int, n: int) -> tuple[str, int]:
    """(the min_count to suggest, the image count it means): at least ``images``, in ``min_count``'s form
    (a share is given to one decimal)."""
    if isinstance(min_count, int) or not n:
        return str(images), images
    tenths = (images - 1) * 1000 // n + 1  # the least share over images - 1
    while min_count_images(f"{tenths / 10:g}%", n) < images:
        tenths += 1
    share = f"{tenths / 10:g}%"
    threshold = min_count_images(share, n)
    return f"{share} ({threshold} images)", threshold


def _table(counts) -> dict[str, int]:
    """A frequency table, most frequent first, ties by name."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _tool_versions(wn, split: bool) -> dict:
    from importlib.metadata import version

    return {
        "lemmatizer": f"nltk {version('nltk')} WordNetLemmatizer (noun), WordNet {wn.get_version()}",
        "segmenter": f"wordsegment {version('wordsegment')}" if split else None,
        "emoji_names": f"emoji {version('emoji')} (CLDR short names)",
    }


def _store(conn, t, result: dict) -> int:
    from datetime import UTC, datetime

    from sqlalchemy import insert

    from . import db

    # created_at to the microsecond (SQLite's server default keeps whole seconds): instatag.drops tells
    # the drops a vocabulary was built on from the drops after it by comparing it with ingest_runs.started_at
    vid = conn.execute(insert(t.vocab_versions).values(created_at=datetime.now(UTC),
        config=result["config"], config_sha256=result["config_sha256"], n_posts=result["n_posts"],
        n_images=result["n_images"], n_unlabelled=result["n_unlabelled"], n_raw_tags=result["n_raw_tags"],
        n_lemmas=result["n_lemmas"], n_labels=result["n_labels"], stats=result["stats"],
        valid_pct=result["valid_pct"],
    )).inserted_primary_key[0]
    if result["labels"]:
        conn.execute(insert(t.vocab_labels), [{"vocab_version_id": vid, **row} for row in result["labels"]])
    db.copy_rows(conn, t.image_labels, ((vid, image_id, label) for image_id, ls in result["image_labels"].items()
                                        for label in ls), ("vocab_version_id", "image_id", "label"))
    return vid


# --------------------------------------------------------------------------- reading versions
def versions(settings) -> list[dict]:
    from sqlalchemy import select

    from . import db
    from . import schema as t

    v = t.vocab_versions
    cols = [v.c.id, v.c.created_at, v.c.n_posts, v.c.n_images, v.c.n_unlabelled, v.c.n_raw_tags,
            v.c.n_lemmas, v.c.n_labels]
    with db.get_engine(settings).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(*cols).order_by(v.c.id))]


def describe(settings, version_id: int | None = None, top: int = 30) -> str:
    """A human summary of one stored version (the newest when None)."""
    from sqlalchemy import func, select

    from . import db
    from . import schema as t

    v = t.vocab_versions
    with db.get_engine(settings).connect() as conn:
        if version_id is None:
            version_id = conn.execute(select(func.max(v.c.id))).scalar()
            if version_id is None:
                raise UserError("no vocabulary version yet: run `instatag vocab build`")
        row = conn.execute(select(v).where(v.c.id == version_id)).first()
        if row is None:
            raise UserError(f"vocabulary version {version_id} does not exist (see `instatag vocab list`)")
        labels = conn.execute(select(t.vocab_labels).where(t.vocab_labels.c.vocab_version_id == version_id)
                              .order_by(t.vocab_labels.c.idx)).all()
    s, g = row.stats, row.config["grouping"]
    need = s.get("min_count_images", g["min_count"])  # versions built before min_count shares lack it
    rule = g["min_count"] if need == g["min_count"] else (
        f"{g['min_count']} = {need} of the {s['n_candidates']} images with a candidate label")
    lines = [
        f"vocabulary version {row.id} (created {row.created_at:%Y-%m-%d %H:%M}, config sha256 "
        f"{row.config_sha256[:12]}, min_count {rule}, splitting {'on' if g['split_hashtags'] else 'off'})",
        f"posts {row.n_posts}, images {row.n_images}: {row.n_images - row.n_unlabelled} labelled "
        f"({s['n_train_images']} train / {s['n_valid_images']} valid), {row.n_unlabelled} without a label "
        "(kept in the database, excluded from training)",
        f"distinct: {row.n_raw_tags} raw tags -> {row.n_lemmas} lemmas -> {row.n_labels} labels "
        f"({len(s['dropped_rare'])} candidate labels on fewer than {need} images dropped)",
        "",
        f"{'idx':>4}  {'label':24} {'images':>7} {'train':>6}  members",
    ]
    for r in labels[:top]:
        lines.append(f"{r.idx:>4}  {r.label:24} {r.count:>7} {s['train_counts'].get(r.label, 0):>6}  "
                     f"{', '.join(r.members)}")
    if len(labels) > top:
        lines.append(f"      ... {len(labels) - top} more (`instatag vocab show {row.id} --top {len(labels)}`)")
    splits = s["splits"]
    lines += ["", f"split hashtags ({len(splits)}):" + ("" if splits else " none")]
    lines += [f"  #{tag} -> {' '.join(parts)}" for tag, parts in splits.items()]
    for key, title in (("dropped_rare", f"dropped below min_count {need}"),
                       ("dropped", "dropped by the grouping file"), ("scrape", "scrape tags")):
        table = s[key]
        shown = ", ".join(f"{k} ({n})" for k, n in list(table.items())[:top])
        more = f", ... {len(table) - top} more" if len(table) > top else ""
        lines.append(f"{title} ({len(table)}): {shown or 'none'}{more}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI
def add_cli(sub):
    """``instatag vocab build|show|list|trace``; returns the ``vocab`` subparsers, where ``cli`` adds
    ``suggest`` (``suggest.add_cli``: this module does not import suggest, which imports it)."""
    p = sub.add_parser("vocab", help="build and inspect label vocabularies",
                       description="Label vocabularies: hashtags -> WordNet lemmas -> grouped labels "
                       "(see docs/grouping.md).")
    vs = p.add_subparsers(dest="vocab_command", required=True, metavar="COMMAND")
    b = vs.add_parser("build", help="build a new vocabulary version from all ingested posts",
                      description="Lemmatize every hashtag (WordNet), split run-together tags, apply the "
                      "grouping file, drop rare labels and store the result as a new vocabulary version "
                      "(or report the newest one when nothing changed).")
    b.add_argument("--groups", type=Path, metavar="FILE",
                   help="grouping YAML (default: INSTATAG_GROUPS_FILE, else the packaged instatag/data/groups.yaml)")
    b.add_argument("--min-count", metavar="N|P%", help="drop labels on fewer than N images, or on fewer than "
                   "P%% of the images with a candidate label (e.g. 95 or 5%%; overrides the file's min_count)")
    b.add_argument("--no-check", dest="check", action="store_false",
                   help="store the version even when it cannot train and validate a model (fewer than "
                   f"{MIN_LABELS} labels, or a label with fewer than {MIN_TRAIN_IMAGES} training or "
                   f"{MIN_VALID_IMAGES} validation images), to inspect it; `instatag train` would then train it")
    b.add_argument("--top", type=int, default=30, metavar="N", help="labels to list in the summary (default 30)")
    b.set_defaults(handler=_build_cmd)
    s = vs.add_parser("show", help="summarise a vocabulary version (default: the newest)")
    s.add_argument("version", nargs="?", type=int, metavar="VERSION", help="vocabulary version id")
    s.add_argument("--top", type=int, default=30, metavar="N", help="labels to list (default 30)")
    s.add_argument("--json", action="store_true", help="print the stored stats as JSON instead")
    s.set_defaults(handler=_show_cmd)
    ls = vs.add_parser("list", help="list the vocabulary versions")
    ls.set_defaults(handler=_list_cmd)
    e = vs.add_parser("trace", help="trace hashtags to their match key, lemmas and labels",
                      description="Trace hashtags through the label pipeline: the match key every rule "
                      "compares (separators and a trailing number folded, emoji named), lemma(s), split "
                      "parts, label or why there is none. With --version, under that stored vocabulary.")
    e.add_argument("tags", nargs="+", metavar="TAG", help="hashtags, with or without '#'")
    e.add_argument("--groups", type=Path, metavar="FILE", help="grouping YAML (default as for build)")
    e.add_argument("--version", type=int, metavar="VERSION", help="use a stored vocabulary version instead")
    e.set_defaults(handler=_explain_cmd)
    return vs


def _build_cmd(args, settings) -> int:
    res = build(settings, args.groups, args.min_count, check=args.check)
    if res.reused:
        print(f"nothing changed since vocabulary version {res.version_id}: reusing it\n")
    print(describe(settings, res.version_id, top=args.top))
    return 0


def _show_cmd(args, settings) -> int:
    if args.json:
        from sqlalchemy import func, select

        from . import db
        from . import schema as t

        with db.get_engine(settings).connect() as conn:
            vid = args.version or conn.execute(select(func.max(t.vocab_versions.c.id))).scalar()
            stats = conn.execute(select(t.vocab_versions.c.stats).where(t.vocab_versions.c.id == vid)).scalar()
        if stats is None:
            raise UserError("no such vocabulary version (see `instatag vocab list`)")
        print(json.dumps(stats, indent=1, ensure_ascii=False))
        return 0
    print(describe(settings, args.version, top=args.top))
    return 0


def _list_cmd(args, settings) -> int:
    rows = versions(settings)
    if not rows:
        print("no vocabulary version yet: run `instatag vocab build`")
    for r in rows:
        print(f"{r['id']:>5}  {r['created_at']:%Y-%m-%d %H:%M}  posts {r['n_posts']:>7}  images {r['n_images']:>7}  "
              f"unlabelled {r['n_unlabelled']:>6}  {r['n_raw_tags']} tags -> {r['n_lemmas']} lemmas -> "
              f"{r['n_labels']} labels")
    return 0


def _explain_cmd(args, settings) -> int:
    if args.version is not None:
        pipeline = LabelPipeline.for_version(settings, args.version)
    else:
        pipeline = LabelPipeline(load_grouping(args.groups or settings.groups_file or None)
                                 .with_scrape_tags(settings.scrape_tags))
    for tag in args.tags:
        resolved = pipeline.resolve(tag)
        key = match_key(tag)
        split = pipeline.splits.get(key)
        head = f"#{tag.lstrip('#')} [key {key or '-'}]" + (f" (split: {' '.join(split)})" if split else "")
        if not resolved:
            print(f"{head}: no letter, digit or emoji, ignored")
        for r in resolved:
            print(f"{head}: lemma {r.lemma!r} -> " + (f"label {r.label!r}" if r.label else {
                "scrape": "no label (scrape tag)", "drop": "no label (dropped by the grouping file)",
                "rare": "no label (not in this vocabulary version)"}[r.why]))
    return 0
