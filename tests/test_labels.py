"""The label pipeline on single hashtags: lemmas, splitting, grouping, the split and WordNet."""

from __future__ import annotations

import hashlib

import pytest

from instatag.errors import UserError
from instatag.grouping import Grouping, grouping_from_dict, load_grouping
from instatag.labels import Item, LabelPipeline, is_valid, split


@pytest.fixture(scope="module")
def plain():
    """No grouping at all: every lemma is its own label."""
    return LabelPipeline(Grouping())


@pytest.fixture(scope="module")
def default():
    return LabelPipeline(load_grouping().with_scrape_tags(["recipe"]))


@pytest.mark.parametrize("tag, lemma", [
    ("cakes", "cake"), ("desserts", "dessert"), ("berries", "berry"), ("tomatoes", "tomato"),
    ("dishes", "dish"), ("loaves", "loaf"), ("knives", "knife"), ("leaves", "leaf"),
    ("geese", "goose"), ("mice", "mouse"), ("children", "child"), ("feet", "foot"),
    ("cookies", "cooky"), ("pastries", "pastry"), ("ribs", "rib"), ("beignets", "beignet"),
    ("cake", "cake"), ("carpaccio", "carpaccio"), ("yummy", "yummy"),
])
def test_plurals_and_irregulars(plain, tag, lemma):
    assert plain.lemmas(tag) == (lemma,)
    assert plain.lemma(tag) == lemma


def test_wordnet_quirks_are_grouped_in_the_default(default):
    assert default.labels_for_tag("cookies") == ("cookie",) == default.labels_for_tag("cookie")
    assert default.labels_for_tag("desserts") == ("sweets_sum",) == default.labels_for_tag("sweets")


def test_camelcase_and_unicode_tags(plain, default):
    assert plain.lemmas("#ChocolateCake") == ("chocolate", "cake")
    assert plain.labels_for_tag("TomatoSoups") == ("soup", "tomato")
    assert plain.lemmas("Cafés") == ("cafés",)  # not in WordNet: passes through unchanged
    assert plain.lemmas("디저트") == ("디저트",) and plain.labels_for_tag("디저트") == ("디저트",)
    assert plain.lemmas("торты") == ("торты",)
    assert default.labels_for_tag("디저트") == ("sweets_sum",)  # a Unicode member of a group
    assert plain.resolve("°°") == () and plain.labels_for_tag("!!!") == ()


def test_separator_and_number_variants_resolve_like_their_plain_form(default):
    """Field case underscore-variants: one match key for drop, scrape tags, groups and the splitter."""
    for variant, plain_form in [("food_porn", "foodporn"), ("home_made", "homemade"), ("insta_food", "instafood"),
                                ("Dessert_Recipe", "dessertrecipe"), ("recipes2026", "recipes"),
                                ("ice_cream", "icecream"), ("ice-cream", "icecream"), ("foodlover2026", "foodlover"),
                                ("apple_pies", "applepies"), ("bbq_2026", "bbq"), ("gluten_free", "glutenfree")]:
        assert default.resolve(variant) == default.resolve(plain_form), variant
    assert default.resolve("food_porn")[0].why == "drop" and default.resolve("home_made")[0].why == "drop"
    assert default.resolve("insta_food")[0].why == "drop" and default.resolve("recipes2026")[0].why == "scrape"
    assert default.labels_for_tag("dessert_recipe") == ("sweets_sum",)
    assert default.labels_for_tag("apple_pies_2026") == ("apple", "pie")
    assert default.labels_for_tag("gluten_free") == ("gluten_free",)
    assert default.splits["dessertrecipe"] == ["dessert", "recipe"]  # the splitter sees the key


def test_emoji_tags_resolve_through_their_cldr_name(plain, default):
    """Field case emoji-hashtags: #🍕 is pizza; an emoji tag resolves like its name typed as a tag."""
    assert plain.lemmas("🍕") == ("pizza",) and plain.labels_for_tag("🍕") == ("pizza",)
    assert plain.labels_for_tag("🍰") == ("shortcake",) and plain.labels_for_tag("🥧") == ("pie",)
    assert plain.lemmas("🍪") == plain.lemmas("cookie") and default.labels_for_tag("🍪") == ("cookie",)
    assert default.labels_for_tag("🍩") == ("doughnut",)
    assert default.labels_for_tag("🧀") == default.labels_for_tag("cheese_wedge") == ("cheese", "wedge")
    assert plain.labels_for_tag("🍎") == plain.labels_for_tag("red_apple") == ("apple", "red")
    assert plain.lemmas("🍕🍕") == ("pizza",)
    assert plain.labels_for_tag("👍🏽") == plain.labels_for_tag("👍")
    p = LabelPipeline(grouping_from_dict({"drop": ["😋", "❤️"], "groups": {"pizza": ["🍕", "pizza_slice"]}}))
    assert [p.resolve(t)[0].why for t in ("😋", "face_savoring_food", "❤", "red_heart")] == ["drop"] * 4
    assert p.labels_for_tag("🍕") == ("pizza",) and p.labels_for_tag("pizzaslice") == ("pizza",)


def test_splitting(plain):
    assert plain.lemmas("chocolatecake") == ("chocolate", "cake")
    assert plain.lemmas("applepie") == ("apple", "pie")
    assert plain.lemmas("applepies") == ("apple", "pie")  # split through the singular
    assert plain.lemmas("breakfastburritos") == ("breakfast", "burrito")
    assert plain.splits["applepies"] == ["apple", "pie"]
    # a WordNet word, an unknown word, and parts that are not all known words of 3+ letters stay whole
    for tag in ("cheesecake", "homemade", "bibimbap", "gochujang", "nofilter", "instagood"):
        assert plain.lemmas(tag) == (tag,), tag
        assert tag not in plain.splits
    # the splitter sees the key, without its trailing number
    assert plain.lemmas("foodlover2026") == plain.lemmas("foodlover") == ("food", "lover")


def test_splitting_can_be_switched_off():
    off = LabelPipeline(Grouping(split_hashtags=False))
    assert off.lemmas("chocolatecake") == ("chocolatecake",)
    assert off.splits == {}


def test_grouping_entries_steer_the_splitter():
    p = LabelPipeline(grouping_from_dict({
        "drop": ["foodporn"],
        "groups": {"ribs": ["rib", "babybackribs"], "tartare": ["tartare"], "comfort_food": ["comfortfood"]},
    }))
    assert p.lemmas("foodporn") == ("foodporn",) and p.labels_for_tag("foodporn") == ()  # dropped whole
    assert p.labels_for_tag("babybackribs") == ("ribs",) and p.labels_for_tag("ribs") == ("ribs",)
    assert p.labels_for_tag("comfortfood") == ("comfort_food",)
    # "tartare" is no WordNet word; as a grouping entry it becomes a known word for splitting
    assert p.lemmas("beeftartare") == ("beef", "tartare")
    assert p.labels_for_tag("beeftartare") == ("beef", "tartare")


def test_scrape_tags_drop_and_groups():
    p = LabelPipeline(grouping_from_dict({
        "scrape_tags": ["recipe"], "drop": ["foodie", "instafood"],
        "groups": {"sweets_sum": ["dessert", "sweet"]},
    }).with_scrape_tags(["dinner"]))
    assert [p.labels_for_tag(t) for t in ("recipe", "Recipes", "recipe.", "dinners")] == [()] * 4
    assert p.resolve("recipes")[0].why == "scrape"
    assert p.resolve("foodies") == p.resolve("foodie")  # an entry matches through the tag's lemma
    assert p.resolve("foodies")[0].why == "drop"
    assert p.labels_for_tag("desserts") == ("sweets_sum",) and p.labels_for_tag("sweets") == ("sweets_sum",)
    assert p.labels_for_tag("cakes") == ("cake",)
    assert p.labels_for_tags(["recipe", "desserts", "sweet", "foodie", "pies", "applepie"]) == {
        "sweets_sum", "pie", "apple"}
    # a split tag's parts go through drop and scrape tags too
    assert p.labels_for_tag("dessertrecipe") == ("sweets_sum",)


def test_entries_match_through_their_own_lemma():
    p = LabelPipeline(grouping_from_dict({"drop": ["foodies"], "groups": {"cookie": ["cookies"]}}))
    assert p.labels_for_tag("foodie") == ()
    assert p.labels_for_tag("cookies") == ("cookie",) and p.labels_for_tag("cooky") == ("cookie",)


def test_two_entries_with_one_lemma_in_different_roles_is_an_error():
    p = LabelPipeline(grouping_from_dict({"groups": {"a": ["cookies"], "b": ["cookys"]}}, source="g.yaml"))
    with pytest.raises(UserError, match="grouping file g.yaml: 'cookies' and 'cookys' have the same WordNet lemma"):
        p.labels_for_tag("cake")


def test_missing_wordnet_says_how_to_install(tmp_path, monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(UserError) as err:
        LabelPipeline(Grouping()).lemmas("cakes")
    msg = str(err.value)
    assert "WordNet for NLTK is not installed" in msg
    assert "apt-get install wordnet-base wordnet-sense-index" in msg
    assert "python -m instatag.wordnet provision" in msg
    assert "nltk.downloader" in msg and str(tmp_path) in msg


def test_validation_split_depends_on_the_hash_only():
    assert is_valid("00000000" + "f" * 56) and not is_valid("ffffffff" + "0" * 56)
    assert is_valid("33333332" + "0" * 56) and not is_valid("33333334" + "0" * 56)  # 0.2 * 2**32 = 0x33333333.3
    items = [Item(i, hashlib.sha256(str(i).encode()).hexdigest(), f"/x/{i}.jpg", ("a",)) for i in range(2000)]
    train, valid = split(items)
    assert len(train) + len(valid) == 2000 and 330 < len(valid) < 470
    assert all(is_valid(it.sha256) for it in valid) and not any(is_valid(it.sha256) for it in train)
    assert split(items, 0.5)[1] != valid and split(items)[1] == valid


def test_a_pipeline_without_a_version_cannot_encode(plain):
    with pytest.raises(ValueError, match="for_version"):
        plain.encode(["cake"])
