"""The grouping file: loading, canonical form and every validation error."""

from __future__ import annotations

import pytest

from instatag.errors import UserError
from instatag.grouping import (
    DEFAULT_FILE,
    KEYS,
    MIN_COUNT_PATTERN,
    Grouping,
    grouping_from_dict,
    load_grouping,
    min_count_images,
    parse_min_count,
)


def write(tmp_path, text: str):
    path = tmp_path / "groups.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_default_file_is_valid_and_sensible():
    g = load_grouping()
    assert g.source == str(DEFAULT_FILE)
    assert "recipe" in g.scrape_tags
    assert {"foodie", "instafood", "yummy", "foodporn", "delicious", "homemade"} <= set(g.drop)
    assert set(g.groups["sweets_sum"]) >= {"dessert", "sweet"}
    assert "cooky" in g.groups["cookie"]  # WordNet's lemma of "cookies"
    assert g.min_count == "5%" and g.split_hashtags is True  # a share: it scales with the scrape


def test_a_full_file_is_read_normalised_and_sorted(tmp_path):
    g = load_grouping(write(tmp_path, """
scrape_tags: ["#Recipe", recipe]
drop: [Foodie, instafood]
min_count: 3
split_hashtags: false
groups:
  Sweets_Sum: [sweet, "#Dessert"]
  bbq: [grill, barbecue]
"""))
    assert g == Grouping(("recipe",), ("foodie", "instafood"), 3,
                         {"bbq": ("barbecue", "grill"), "sweets_sum": ("dessert", "sweet")}, False)
    assert list(g.groups) == ["bbq", "sweets_sum"]


def test_every_key_is_optional(tmp_path):
    assert load_grouping(write(tmp_path, "")) == Grouping()
    assert load_grouping(write(tmp_path, "min_count: 2\n")).min_count == 2


def test_canonical_form_and_hash_ignore_order_case_and_source(tmp_path):
    a = load_grouping(write(tmp_path, "drop: [b, A]\ngroups: {x: [q, p], w: [z]}\n"))
    b = grouping_from_dict({"groups": {"w": ["Z"], "x": ["p", "q", "p"]}, "drop": ["a", "b"]}, source="elsewhere")
    assert a == b and a.sha256() == b.sha256()
    assert grouping_from_dict(a.as_dict()) == a
    assert a.with_min_count(7).sha256() != a.sha256()


def test_settings_scrape_tags_merge_in():
    g = grouping_from_dict({"scrape_tags": ["recipe"]}).with_scrape_tags(("Dinner", "recipe"))
    assert g.scrape_tags == ("dinner", "recipe")
    with pytest.raises(UserError, match="'sweet' is in scrape_tags and in group 'sweets_sum'"):
        grouping_from_dict({"groups": {"sweets_sum": ["sweet"]}}).with_scrape_tags(["sweet"])


def test_min_count_override_is_checked():
    assert Grouping().with_min_count(5).min_count == 5
    assert Grouping().with_min_count("5").min_count == 5  # as typed on a command line
    assert Grouping().with_min_count(" 2.50 %").min_count == "2.5%"
    with pytest.raises(UserError, match=r"--min-count must be a whole number of images \(95\) or a share"):
        Grouping().with_min_count(0)


@pytest.mark.parametrize("value, canonical", [
    (1, 1), (95, 95), ("95", 95), ("5%", "5%"), ("05.0%", "5%"), ("2.5 %", "2.5%"), ("0.1%", "0.1%"),
    ("100%", "100%"),
])
def test_min_count_forms(value, canonical):
    assert parse_min_count(value) == canonical
    assert grouping_from_dict({"min_count": value}).min_count == canonical
    assert grouping_from_dict(grouping_from_dict({"min_count": value}).as_dict()).min_count == canonical


@pytest.mark.parametrize("value", [0, -3, "0", "0%", "0.0%", "100.5%", "-5%", "%5", "5 percent", 0.05, 2.5, True,
                                   None, "", "1e2"])
def test_min_count_bad_forms(value):
    with pytest.raises(UserError, match=r"min_count must be a whole number of images \(95\) or a share of the "
                       r"images with a candidate label \(5%\), not "):
        parse_min_count(value)


def test_min_count_pattern_matches_exactly_the_string_forms():
    import re

    for ok in ("95", "5%", "2.5%", " 5 % "):
        assert re.search(MIN_COUNT_PATTERN, ok), ok
    for bad in ("many", "5 percent", "%5", "-5%", "1e2", ""):
        assert not re.search(MIN_COUNT_PATTERN, bad), bad


@pytest.mark.parametrize("min_count, n, images", [
    (95, 0, 95), (95, 10_000, 95),            # a number of images is absolute
    ("5%", 1949, 98), ("5%", 645, 33),        # food10: all three drops, one drop (97.45 and 32.25 rounded up)
    ("5%", 1940, 97),                         # exactly 97: not rounded up to 98
    ("3%", 100, 3), ("0.1%", 1000, 1),        # exact arithmetic: 3% of 100 is 3, not 3.0000000000000004 -> 4
    ("5%", 10, 1), ("5%", 0, 1),              # at least 1
    ("100%", 7, 7),
])
def test_min_count_images(min_count, n, images):
    assert min_count_images(min_count, n) == images


@pytest.mark.parametrize("text, message", [
    ("min_cout: 3\n", r"unknown key\(s\) min_cout; the keys are " + ", ".join(KEYS)),
    ("groups: {a: [x, y], b: [y]}\n", r"'y' is in two groups, 'a' and 'b'"),
    ("groups: {a: [x], b: []}\n", r"group 'b' is empty"),
    ("groups:\n  a:\n", r"group 'a' is empty"),
    ("groups: [a, b]\n", r"groups must map a group label to a list of lemmas, not list"),
    ("groups: {a: x}\n", r"group 'a' must be a list of hashtags, not str"),
    ("groups: {a: [1]}\n", r"group 'a' holds 1; each entry must be one hashtag"),
    ("groups: {a: [apple pie]}\n", r"holds 'apple pie'; each entry must be one hashtag"),
    ("groups: {a b: [x]}\n", r"group label 'a b' must be one word"),
    ("groups: {a: [b], b: [c]}\n", r"group label 'b' is also a member of group 'a'"),
    ("groups: {a: [x]}\ngroups: {b: [y]}\n", r"duplicate key 'groups'"),
    ("groups: {a: [x], a: [y]}\n", r"duplicate key 'a'"),
    ("groups: {A: [x], a: [y]}\n", r"group 'a' is defined twice"),
    ("drop: foodie\n", r"drop must be a list of hashtags, not str"),
    ("drop: [foodie, {x: 1}]\n", r"drop holds \{'x': 1\}"),
    ("drop: [x]\ngroups: {g: [x]}\n", r"'x' is in drop and in group 'g'"),
    ("drop: [g]\ngroups: {g: [x]}\n", r"'g' is in drop and in group 'g'"),
    ("drop: [recipe]\nscrape_tags: [recipe]\n", r"'recipe' is in both scrape_tags and drop"),
    ("scrape_tags: recipe\n", r"scrape_tags must be a list of hashtags, not str"),
    ("min_count: three\n", r"min_count must be a whole number of images \(95\) or a share .*, not 'three'"),
    ("min_count: 0\n", r"min_count must be a whole number of images .*, not 0"),
    ("min_count: 2.5\n", r"min_count must be a whole number of images .*, not 2.5"),
    ("min_count: true\n", r"min_count must be a whole number of images .*, not True"),
    ("min_count: 0%\n", r"min_count must be a whole number of images .*, not '0%'"),
    ("min_count: 150%\n", r"min_count must be a whole number of images .*, not '150%'"),
    ("split_hashtags: maybe\n", r"split_hashtags must be true or false, not 'maybe'"),
    ("- a\n- b\n", r"must be a mapping with the keys .*, not list"),
    ("groups: {a: [x]\n", r"not valid YAML"),
])
def test_validation_errors_name_the_file_and_the_problem(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError, match=message) as err:
        load_grouping(path)
    assert str(err.value).startswith(f"grouping file {path}: ")


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_grouping(tmp_path / "nope.yaml")
