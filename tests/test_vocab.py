"""Building, storing and loading vocabulary versions (SQLite and PostgreSQL), the CLI, food10."""

from __future__ import annotations

import collections
import csv
import hashlib

import numpy as np
import pytest
from builders import TAGGED_POSTS, add_posts, unchecked_vocab, vocab_rows, write_post
from sqlalchemy import func, select

from instatag import db
from instatag import schema as t
from instatag.cli import main
from instatag.errors import UserError
from instatag.labels import VALID_PCT, LabelPipeline, is_valid, valid_pct_of
from instatag.vocab import (
    MIN_LABELS,
    MIN_TRAIN_IMAGES,
    MIN_VALID_IMAGES,
    build,
    build_vocab,
    check_trainable,
    describe,
)


@pytest.mark.pg_drivers
def test_build_stores_labels_images_and_stats(settings, groups_file):
    add_posts(settings, TAGGED_POSTS)
    vid = unchecked_vocab(settings, groups_file)
    labels, per_image, row = vocab_rows(settings, vid)
    assert [(r[0], r[2]) for r in labels] == [("sweets_sum", 3), ("apple", 2), ("bbq", 2), ("pie", 2), ("rib", 2)]
    assert [r[1] for r in labels] == [0, 1, 2, 3, 4]
    assert dict((r[0], r[3]) for r in labels)["bbq"] == ["barbecue", "bbq", "grill"]
    assert per_image == {
        "p1": {"apple", "pie", "sweets_sum"},
        "p2": {"apple", "pie", "sweets_sum"},
        "p3": {"bbq", "rib", "sweets_sum"},  # union of both posts of the photo
        "p4": {"bbq", "rib"},
    }
    assert (row.n_posts, row.n_images, row.n_unlabelled, row.n_labels) == (8, 7, 3, 5)
    s = row.stats
    assert s["raw_tags"]["recipe"] == 5 and s["raw_tags"]["applepie"] == 1 and len(s["raw_tags"]) == row.n_raw_tags
    assert s["lemmas"]["recipe"] == 6 and s["lemmas"]["rib"] == 2 and len(s["lemmas"]) == row.n_lemmas
    assert list(s["labels"].items()) == [(r[0], r[2]) for r in labels]
    assert s["splits"] == {"applepie": ["apple", "pie"], "chocolatecake": ["chocolate", "cake"]}
    assert s["dropped_rare"] == {"cake": 1, "chocolate": 1, "tofu": 1}
    assert s["scrape"] == {"recipe": 6} and s["dropped"] == {"foodie": 2, "yummy": 2}
    train = collections.Counter(lb for key, ls in per_image.items() if not is_valid(_sha(key)) for lb in ls)
    assert s["train_counts"] == {r[0]: train[r[0]] for r in labels}
    assert s["n_train_images"] + s["n_valid_images"] == s["n_labelled"] == 4
    # the split's share is a column of the version (its one owner), the stats were counted under it
    assert row.valid_pct == VALID_PCT == 0.2 and "valid_pct" not in s
    assert row.config["grouping"]["min_count"] == 2 and row.config["grouping"]["scrape_tags"] == ["recipe"]
    assert "WordNetLemmatizer" in row.config["tools"]["lemmatizer"]


def _sha(key):
    return hashlib.sha256(key.encode()).hexdigest()


def test_is_scrape_tag_flag_and_settings_scrape_tags_exclude_tags(settings, groups_file):
    add_posts(settings, [("a", ["pie", "dinner"]), ("b", ["pie", "dinner"]), ("c", ["pies", "cake"])],
              scrape_flag=("pie",))
    vid = unchecked_vocab(settings.replace(scrape_tags=("dinner",)), groups_file)
    labels, per_image, row = vocab_rows(settings, vid)
    assert [r[0] for r in labels] == []  # pie flagged at ingest, dinner from the settings, cake rare
    assert row.n_unlabelled == 3 and row.stats["scrape"] == {"dinner": 2, "pie": 2}
    assert row.stats["dropped_rare"] == {"cake": 1, "pie": 1}  # "pies" on c carried no flag


def test_min_count_override_and_identical_rebuilds(settings, groups_file):
    add_posts(settings, TAGGED_POSTS)
    first = build(settings, groups_file, check=False)
    again = build(settings, groups_file, check=False)
    assert again.reused and again.version_id == first.version_id and not first.reused
    one = build(settings, groups_file, min_count=1, check=False)
    assert not one.reused and one.version_id > first.version_id
    labels, _, row = vocab_rows(settings, one.version_id)
    assert {"cake", "chocolate", "tofu"} <= {r[0] for r in labels} and row.stats["dropped_rare"] == {}
    assert row.config_sha256 != vocab_rows(settings, first.version_id)[2].config_sha256
    add_posts(settings, [("p8", ["grill"])])
    grown = build(settings, groups_file, check=False)
    assert not grown.reused
    assert [r[:3] for r in vocab_rows(settings, grown.version_id)[0][:2]] == [("bbq", 0, 3), ("sweets_sum", 1, 3)]


def test_same_posts_in_another_order_give_the_same_vocabulary(sqlite_settings, tmp_path, groups_file):
    other = sqlite_settings.replace(database_url=f"sqlite:///{tmp_path / 'other.db'}")
    db.upgrade(other)
    add_posts(sqlite_settings, TAGGED_POSTS)
    add_posts(other, [(k, list(reversed(tags))) for k, tags in reversed(TAGGED_POSTS)])
    a_labels, a_images, a = vocab_rows(sqlite_settings, unchecked_vocab(sqlite_settings, groups_file))
    b_labels, b_images, b = vocab_rows(other, unchecked_vocab(other, groups_file))
    assert a_labels == b_labels and a_images == b_images and a.config_sha256 == b.config_sha256
    for key in ("raw_tags", "lemmas", "labels", "splits", "dropped_rare"):
        assert list(a.stats[key].items()) == list(b.stats[key].items())


def test_for_version_items_encode_decode(settings, groups_file):
    ids = add_posts(settings, TAGGED_POSTS)
    vid = unchecked_vocab(settings, groups_file)
    p = LabelPipeline.for_version(settings)
    assert p.version_id == vid and p.labels == ["sweets_sum", "apple", "bbq", "pie", "rib"]
    items = p.items(settings)
    assert [it.image_id for it in items] == sorted(ids[k] for k in ("p1", "p2", "p3", "p4"))
    p3 = next(it for it in items if it.image_id == ids["p3"])
    assert p3.labels == ("sweets_sum", "bbq", "rib")  # model-output order
    assert p3.sha256 == _sha("p3") and p3.resized_path.is_absolute()
    assert p3.resized_path == (settings.data_dir / f"store/resized/{_sha('p3')[:2]}/{_sha('p3')}.jpg").absolute()
    vec = p.encode(p3.labels)
    assert vec.dtype == np.float32 and vec.tolist() == [1, 0, 1, 0, 1]
    assert p.decode(2) == "bbq"
    assert p.counts == vocab_rows(settings, vid)[2].stats["train_counts"]
    assert p.valid_pct == VALID_PCT
    with db.get_engine(settings).connect() as conn:
        assert valid_pct_of(conn, vid) == VALID_PCT
        with pytest.raises(UserError, match="vocabulary version 99 does not exist"):
            valid_pct_of(conn, 99)
    with pytest.raises(ValueError, match="'tofu' is not a label of vocabulary version"):
        p.encode(["tofu"])
    # the stored pipeline maps new hashtags under the same config, keeping only its labels
    assert p.labels_for_tag("Grilling") == () and p.labels_for_tag("tofu") == ()
    assert p.labels_for_tag("grill") == ("bbq",)
    assert p.resolve("tofu")[0].why == "rare"
    assert p.labels_for_tag("applepies") == ("apple", "pie")


def test_no_version_and_unknown_version(sqlite_settings):
    with pytest.raises(UserError, match="run `instatag vocab build`"):
        LabelPipeline.for_version(sqlite_settings)
    with pytest.raises(UserError, match="vocabulary version 42 does not exist"):
        LabelPipeline.for_version(sqlite_settings, 42)


def test_empty_database_builds_an_empty_version(sqlite_settings):
    vid = unchecked_vocab(sqlite_settings)
    labels, _, row = vocab_rows(sqlite_settings, vid)
    assert labels == [] and (row.n_images, row.n_posts, row.n_labels) == (0, 0, 0)
    assert "0 raw tags -> 0 lemmas -> 0 labels" in describe(sqlite_settings, vid)


def test_missing_wordnet_stops_the_build(sqlite_settings, tmp_path, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(UserError, match="apt-get install wordnet-base wordnet-sense-index"):
        build_vocab(sqlite_settings)
    with db.get_engine(sqlite_settings).connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.vocab_versions)).scalar_one() == 0


def test_cli_build_show_list_explain(sqlite_settings, groups_file, tmp_path, capsys):
    add_posts(sqlite_settings, TAGGED_POSTS)
    base = ["--database-url", sqlite_settings.database_url, "--data-dir", str(sqlite_settings.data_dir)]
    assert main([*base, "vocab", "build", "--no-check", "--groups", str(groups_file)]) == 0
    out = capsys.readouterr().out
    assert "posts 8, images 7: 4 labelled" in out and "3 without a label" in out
    assert "raw tags -> " in out and "-> 5 labels" in out
    assert "#applepie -> apple pie" in out and "sweets_sum" in out
    assert main([*base, "vocab", "build", "--no-check", "--groups", str(groups_file)]) == 0
    assert "nothing changed since vocabulary version 1" in capsys.readouterr().out
    assert main([*base, "vocab", "show", "1", "--top", "2"]) == 0
    assert "3 more" in capsys.readouterr().out
    assert main([*base, "vocab", "show", "--json"]) == 0
    assert '"splits"' in capsys.readouterr().out
    assert main([*base, "vocab", "list"]) == 0
    assert "5 labels" in capsys.readouterr().out
    assert main([*base, "vocab", "trace", "#Recipes", "ApplePies", "foodie", "--groups", str(groups_file)]) == 0
    out = capsys.readouterr().out
    assert "lemma 'recipe' -> no label (scrape tag)" in out and "label 'pie'" in out and "(split: apple pie)" in out
    assert "#ApplePies [key applepies] (split: apple pie)" in out
    assert main([*base, "vocab", "trace", "tofu", "grill", "--version", "1"]) == 0
    assert "not in this vocabulary version" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups: {a: [x], b: [x]}\n")
    assert main([*base, "vocab", "build", "--groups", str(bad)]) == 2
    assert "'x' is in two groups" in capsys.readouterr().err
    assert main([*base, "vocab", "build", "--min-count", "0"]) == 2




def test_hashtag_rules_from_caption_to_label(sqlite_settings, tmp_path, capsys):
    """Issue 19.3/19.4 end to end: captions as users write them -> ingest (tags as typed) ->
    vocab build under the packaged grouping (labels by match key) -> vocab trace."""
    drop = tmp_path / "drop"
    write_post(drop, "2026-11-04_10-00-00", "Lasagna night! Card: https://www.example-food-blog.com/lasagna/"
               "#wprm-recipe-container-812 and https://youtu.be/xyz?si=a#t=1m22s #lasagna #recipe", (10, 20, 30))
    write_post(drop, "2026-11-04_10-00-02", "Friday #🍕 night #🍰 #pizza #️⃣", (40, 50, 60))
    write_post(drop, "2026-11-04_11-00-00", "Sundae time #ice_cream #food_porn #home_made #insta_food "
               "#dessert_recipe #recipes2026 #recipe", (70, 80, 90))
    write_post(drop, "2026-11-04_11-00-01", "#IceCream #FoodPorn #recipe", (100, 110, 120))
    base = ["--database-url", sqlite_settings.database_url, "--data-dir", str(sqlite_settings.data_dir)]
    assert main([*base, "ingest", str(drop)]) == 0
    with db.get_engine(sqlite_settings).connect() as conn:
        tags = collections.defaultdict(list)
        for post, tag, scrape in conn.execute(
                select(t.posts.c.post, t.post_hashtags.c.tag, t.post_hashtags.c.is_scrape_tag)
                .join(t.posts, t.posts.c.id == t.post_hashtags.c.post_id).order_by(t.post_hashtags.c.position)):
            tags[post].append(tag + ("*" if scrape else ""))
    assert tags == {  # as typed (case-folded), * = flagged as a scrape tag
        "2026-11-04_10-00-00_UTC": ["lasagna", "recipe*"],
        "2026-11-04_10-00-02_UTC": ["🍕", "🍰", "pizza"],
        "2026-11-04_11-00-00_UTC": ["ice_cream", "food_porn", "home_made", "insta_food", "dessert_recipe",
                                    "recipes2026*", "recipe*"],
        "2026-11-04_11-00-01_UTC": ["icecream", "foodporn", "recipe*"],
    }
    capsys.readouterr()
    assert main([*base, "vocab", "build", "--min-count", "1", "--no-check"]) == 0
    labels, per_image, row = vocab_rows(sqlite_settings, 1)
    assert per_image == {
        "2026-11-04_10-00-00_UTC": {"lasagna"},
        "2026-11-04_10-00-02_UTC": {"pizza", "shortcake"},
        "2026-11-04_11-00-00_UTC": {"icecream", "sweets_sum"},
        "2026-11-04_11-00-01_UTC": {"icecream"},
    }
    assert row.stats["raw_tags"]["food_porn"] == 1 and row.stats["dropped"]["foodporn"] == 2
    assert "wprm" not in row.stats["raw_tags"] and "t" not in row.stats["raw_tags"]
    assert main([*base, "vocab", "trace", "#🍕", "food_porn", "recipes2026", "--version", "1"]) == 0
    out = capsys.readouterr().out
    assert "#🍕 [key pizza]: lemma 'pizza' -> label 'pizza'" in out
    assert "#food_porn [key foodporn]: lemma 'foodporn' -> no label (dropped by the grouping file)" in out
    assert "#recipes2026 [key recipes]: lemma 'recipe' -> no label (scrape tag)" in out


# --------------------------------------------------------------------------- min_count as a share; trainability
def scaled_posts(n: int, prefix: str = "s"):
    """``n`` images tagged apple (every 2nd), grill -> bbq (every 5th), cake (every 12th) and pie (every 50th),
    and ``n // 4`` more with nothing but the scrape tag and a dropped tag (no candidate label)."""
    posts = [(f"{prefix}{i}", ["recipe"] + [tag for tag, every in (("apple", 2), ("grill", 5), ("cake", 12),
                                                                     ("pie", 50)) if i % every == 0])
             for i in range(n)]
    return posts + [(f"{prefix}u{i}", ["recipe", "foodie"]) for i in range(n // 4)]


@pytest.mark.parametrize("n, candidates, images", [(100, 60, 3), (400, 240, 12)])
def test_a_min_count_share_scales_with_the_images_with_a_candidate_label(sqlite_settings, groups_file, n,
                                                                          candidates, images):
    # 5% of the images with a candidate label: the same three labels at both sizes, pie (3.3%) dropped
    add_posts(sqlite_settings, scaled_posts(n))
    labels, _, row = vocab_rows(sqlite_settings, unchecked_vocab(sqlite_settings, groups_file, min_count="5%"))
    assert [r[0] for r in labels] == ["apple", "bbq", "cake"] and list(row.stats["dropped_rare"]) == ["pie"]
    assert (row.stats["n_candidates"], row.stats["min_count_images"]) == (candidates, images)
    assert row.n_images == n + n // 4  # the images without a candidate label do not move the cut
    assert row.config["grouping"]["min_count"] == "5%"
    assert f"min_count 5% = {images} of the {candidates} images with a candidate label" in \
        describe(sqlite_settings, row.id)
    # an absolute min_count does not scale: 20 keeps bbq at 100 images only because it is on exactly 20
    labels, _, row = vocab_rows(sqlite_settings, unchecked_vocab(sqlite_settings, groups_file, min_count=20))
    assert [r[0] for r in labels] == (["apple", "bbq"] if n == 100 else ["apple", "bbq", "cake"])
    assert row.stats["min_count_images"] == 20 and row.config["grouping"]["min_count"] == 20


def test_check_trainable_states_its_numbers():
    ok = {"labels": {"a": 20, "b": 7}, "train_counts": {"a": 16, "b": MIN_TRAIN_IMAGES},
          "valid_counts": {"a": 4, "b": MIN_VALID_IMAGES}, "dropped_rare": {"c": 1}, "n_candidates": 25,
          "min_count_images": 2}
    assert (MIN_LABELS, MIN_TRAIN_IMAGES, MIN_VALID_IMAGES) == (2, 5, 2)
    check_trainable(ok, 2)  # exactly at the minimums: passes
    for key, label in (("train_counts", "b"), ("valid_counts", "b")):
        short = {**ok, key: {**ok[key], label: ok[key][label] - 1}}
        with pytest.raises(UserError, match=r"1 of its 2 labels has fewer than 5 training or 2 validation images "
                           r"\(each label needs both; the validation split is 20% of the labelled images, by content "
                           r"hash\)\. Training/validation images: b \d/\d\. min_count 2 keeps the labels on at least 2 "
                           r"images: raising min_count past them would leave 1 label; or group those tags"):
            check_trainable(short, 2)
    one = {**ok, "labels": {"a": 20}}
    with pytest.raises(UserError, match=r"cannot train a model: only a \(on 20 images\), and a model needs at least 2 "
                       r"labels\. min_count 2 keeps the labels on at least 2 images; the most frequent labels below "
                       r"that: c \(1\)\. Lower min_count"):
        check_trainable(one, 2)


def test_a_vocabulary_that_cannot_train_a_model_is_refused_and_not_stored(sqlite_settings, groups_file):
    def versions():
        with db.get_engine(sqlite_settings).connect() as conn:
            return conn.execute(select(func.count()).select_from(t.vocab_versions)).scalar_one()

    with pytest.raises(UserError, match=r"no label; no image has a hashtag that gives a label \(a model needs at "
                       r"least 2 labels\)\. Ingest posts with content hashtags"):
        build_vocab(sqlite_settings)  # an empty database
    add_posts(sqlite_settings, scaled_posts(400))
    # the case: an absolute min_count set for a bigger scrape leaves one label
    with pytest.raises(UserError) as err:
        build_vocab(sqlite_settings, groups_file, min_count=95)
    assert str(err.value) == (
        "this vocabulary cannot train a model: only apple (on 200 images), and a model needs at least 2 labels. "
        "min_count 95 keeps the labels on at least 95 images; the most frequent labels below that: bbq (80), "
        "cake (34), pie (8). Lower min_count (--min-count, or the grouping file), group related tags into one "
        "label in the grouping file, or ingest more posts.")
    assert versions() == 0
    vid = build_vocab(sqlite_settings, groups_file, min_count="5%")  # fits: stored
    assert versions() == 1 and vocab_rows(sqlite_settings, vid)[2].n_labels == 3


def test_too_few_images_per_label_is_refused_with_what_to_change(sqlite_settings, groups_file):
    add_posts(sqlite_settings, scaled_posts(100))  # cake: 9 images, none of them in the validation split
    with pytest.raises(UserError) as err:
        build(sqlite_settings, groups_file, min_count="5%")
    assert str(err.value) == (
        "this vocabulary cannot train and validate a model: 1 of its 3 labels has fewer than 5 training or 2 "
        "validation images (each label needs both; the validation split is 20% of the labelled images, by content "
        "hash). Training/validation images: cake 9/0. min_count 5% (of the 60 images with a candidate label) keeps "
        "the labels on at least 3 images: raise min_count to 15.1% (10 images) to drop them (2 labels would "
        "remain); or group those tags with a related label in the grouping file, or ingest more posts.")
    vid = build_vocab(sqlite_settings, groups_file, min_count="15.1%")  # the suggestion works
    assert [r[0] for r in vocab_rows(sqlite_settings, vid)[0]] == ["apple", "bbq"]


def test_cli_min_count_forms_and_the_refusal(sqlite_settings, groups_file, capsys):
    add_posts(sqlite_settings, scaled_posts(400))
    base = ["--database-url", sqlite_settings.database_url, "--data-dir", str(sqlite_settings.data_dir),
            "vocab", "build", "--groups", str(groups_file)]
    assert main([*base, "--min-count", "95"]) == 2
    err = capsys.readouterr().err
    assert "only apple (on 200 images), and a model needs at least 2 labels" in err and "Lower min_count" in err
    assert main([*base, "--min-count", "0%"]) == 2
    assert "--min-count must be a whole number of images (95) or a share" in capsys.readouterr().err
    assert main([*base, "--min-count", "5%"]) == 0
    out = capsys.readouterr().out
    assert "min_count 5% = 12 of the 240 images with a candidate label" in out and "-> 3 labels" in out
    assert main([*base, "--min-count", "95", "--no-check"]) == 0  # stored anyway, to look at
    assert "-> 1 labels" in capsys.readouterr().out


def test_the_pipelines_vocabulary_step_stops_the_retrain(sqlite_settings, groups_file, monkeypatch):
    from instatag import pipeline

    monkeypatch.setenv("INSTATAG_DATABASE_URL", sqlite_settings.database_url)
    monkeypatch.setenv("INSTATAG_DATA_DIR", str(sqlite_settings.data_dir))
    add_posts(sqlite_settings, scaled_posts(400))
    with pytest.raises(UserError, match="only apple"):
        pipeline.build_vocabulary(str(groups_file), 95)
    with pytest.raises(UserError, match="only apple"):
        pipeline.build_vocabulary(str(groups_file), "95")  # as a DAG run's form may send it
    assert pipeline.build_vocabulary(str(groups_file), "5%") >= 1


DISH_LABELS = {
    "apple_pie": {"apple", "pie"}, "baby_back_ribs": {"ribs", "bbq"}, "baklava": {"baklava"},
    "beef_carpaccio": {"carpaccio"}, "beef_tartare": {"tartare"}, "beet_salad": {"beet", "salad"},
    "beignets": {"beignet"}, "bibimbap": {"bibimbap"}, "bread_pudding": {"bread", "pudding"},
    "breakfast_burrito": {"burrito", "breakfast"},
}


@pytest.mark.food10
@pytest.mark.slow
def test_food10_labels_reflect_the_dishes(sqlite_settings, food10):
    from pathlib import Path

    from instatag.ingest import ingest

    ingest(sqlite_settings, sorted(food10.glob("drop-*")))
    vid = build_vocab(sqlite_settings)
    labels, _, row = vocab_rows(sqlite_settings, vid)
    names = [r[0] for r in labels]
    assert len(names) == 26, names  # docs/grouping.md; as min_count 95 gave before min_count was a share
    assert (row.stats["min_count_images"], row.stats["n_candidates"]) == (98, 1949)  # 5% of 1,949 rounded up
    assert not {"recipe", "recipes", "food", "foodie", "instafood", "yummy", "foodporn", "delicious"} & set(names)
    assert row.stats["splits"]["applepie"] == ["apple", "pie"]
    assert row.stats["scrape"]["recipe"] == row.n_images  # every post carries the scrape tag
    assert 0.2 * row.n_images < row.n_unlabelled < 0.5 * row.n_images  # a third carry no usable tag

    classes = {(r["drop"], r["post"]): r["food101_class"] for r in csv.DictReader(open(food10 / "classes.csv"))}
    with db.get_engine(sqlite_settings).connect() as conn:
        dish_of = {i: classes.get((Path(src).parent.name, post)) for i, post, src in
                   conn.execute(select(t.images.c.id, t.images.c.post, t.images.c.source_path))}
    by_dish = collections.defaultdict(collections.Counter)
    for item in LabelPipeline.for_version(sqlite_settings, vid).items(sqlite_settings):
        by_dish[dish_of[item.image_id]].update(item.labels)
    for dish, expected in DISH_LABELS.items():
        top3 = [label for label, _ in by_dish[dish].most_common(3)]
        assert expected & set(top3), (dish, top3)


@pytest.mark.food10
@pytest.mark.slow
def test_food10_one_drop_gives_a_trainable_vocabulary(sqlite_settings, food10):
    """One daily drop of 1,000 posts: the packaged 5% keeps at least 20 labels (25 today) where the old
    absolute min_count 95 kept one (sweets_sum), which is refused."""
    from instatag.ingest import ingest

    ingest(sqlite_settings, [food10 / "drop-2026-11-01"])
    with pytest.raises(UserError, match=r"only sweets_sum \(on \d+ images\), and a model needs at least 2 labels"):
        build_vocab(sqlite_settings, min_count=95)
    labels, _, row = vocab_rows(sqlite_settings, build_vocab(sqlite_settings))
    assert len(labels) >= 20, labels
    assert row.stats["min_count_images"] < 40 and min(row.stats["valid_counts"].values()) >= MIN_VALID_IMAGES
