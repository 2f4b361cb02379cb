import subprocess
import sys
import unicodedata

import pytest

from instatag.hashtags import MAX_TAG_LENGTH, match_key, parse_hashtags, scrape_tag_set, stored_tag, tags_from_list

ZWJ, ZWNJ, VS16, KEYCAP = "\u200d", "\u200c", "\ufe0f", "\u20e3"


def test_unicode_tags_in_any_script():
    assert parse_hashtags("So good #café #디저트 #торт #ñam #हिंदी #ラーメン") == [
        "café", "디저트", "торт", "ñam", "हिंदी", "ラーメン"]


def test_composed_and_decomposed_accents_are_one_tag():
    decomposed = unicodedata.normalize("NFD", "#Café")
    assert decomposed != "#Café"
    assert parse_hashtags(f"{decomposed} #café #CAFÉ") == ["café"]


def test_case_folded():
    assert parse_hashtags("#TomatoSoup #Straße #ΣΟΥΒΛΑΚΙ") == ["tomatosoup", "strasse", "σουβλακι"]


def test_glued_tags_and_trailing_punctuation():
    assert parse_hashtags("#a#b (#soup), #cake! #pie. #yum😋 #mom's #x_y…") == [
        "a", "b", "soup", "cake", "pie", "yum", "mom", "x_y"]


def test_duplicates_within_a_post_removed_in_order():
    assert parse_hashtags("#Dessert #pie #dessert #DESSERT #Pie") == ["dessert", "pie"]


def test_numbers_and_junk():
    assert parse_hashtags("#1 #2026 #foodlover2026 # #! ## #° text#inword") == ["foodlover2026", "°", "inword"]
    assert parse_hashtags("#" + "a" * (MAX_TAG_LENGTH + 1) + " #ok") == ["ok"]
    assert parse_hashtags(None) == [] and parse_hashtags("") == [] and parse_hashtags("no tags here") == []


def test_full_width_hash_sign():
    assert parse_hashtags("＃ラーメン＃Ramen") == ["ラーメン", "ramen"]


def test_tag_lists_follow_the_same_rules():
    assert tags_from_list(["#Cake", "pie", " ", "PIE", "café!", 2026, "ok"]) == ["cake", "pie", "café", "ok"]
    assert stored_tag("#TomatoSoup") == "tomatosoup"


def test_scrape_tags_with_plurals():
    tags = scrape_tag_set(["Recipe", "#dish", "lunch"])
    assert {"recipe", "recipes", "dish", "dishes", "lunch", "lunches"} <= tags.keys
    assert all(t in tags for t in ("recipe", "recipes", "dishes", "lunch"))
    assert "recipees" not in tags and "dishs" not in tags and "cake" not in tags
    assert len(scrape_tag_set([])) == 0 and "recipe" not in scrape_tag_set([])


def test_scrape_tags_match_by_key():
    """Ingest flags ``is_scrape_tag`` under the same key as the vocabulary: separators and a
    trailing number folded (field case underscore-variants: ``#recipes2026``)."""
    tags = scrape_tag_set(["recipe"])
    for tag in parse_hashtags("#recipes2026 #Recipe_ #re_cipes #recipe_2026 #ｒｅｃｉｐｅ"):
        assert tag in tags, tag
    for tag in ("recipebox", "2026recipes", "myrecipes", "🍕"):
        assert tag not in tags, tag
    assert scrape_tag_set(["Recipes_2026"]).keys == {"recipes", "recipeses"}


# --------------------------------------------------------------------------- Instagram's rules (issue 19.3)
def test_a_hash_inside_a_url_starts_no_tag():
    """Field case url-fragment: a recipe card's anchor and a video's time stamp are no tags."""
    caption = ("Lasagna night! Printable card: https://www.example-food-blog.com/lasagna/#wprm-recipe-container-812 "
               "and the video https://youtu.be/xyz?si=a#t=1m22s #lasagna #recipe")
    assert parse_hashtags(caption) == ["lasagna", "recipe"]
    assert parse_hashtags("see example.com/pie#crust or www.example.com#top, then #pie") == ["pie"]
    assert parse_hashtags("(http://x.org/a#b)\n#soup, #a/#b #food.#pie 1.5/#cake") == ["soup", "a", "b", "food", "pie",
                                                                                        "cake"]


def test_a_tag_never_starts_or_ends_with_an_invisible_mark():
    keycap = "#" + VS16 + KEYCAP  # the keycap number sign emoji #️⃣
    assert parse_hashtags(f"{keycap} {keycap}pizza #{KEYCAP} #{ZWJ}cake #{VS16}pie") == []
    assert parse_hashtags(f"#pizza{ZWJ} #cake{VS16} #pie{ZWNJ}{ZWJ} #tart1{VS16}{KEYCAP}") == ["pizza", "cake", "pie",
                                                                                            "tart1"]
    assert parse_hashtags(f"#می{ZWNJ}خواهم") == [f"می{ZWNJ}خواهم"]  # a joiner inside a Persian word stays


def test_emoji_hashtags_are_kept_as_typed():
    """Field case emoji-hashtags: Instagram links emoji hashtags; the vocabulary names them."""
    assert parse_hashtags("Friday #🍕 night #🍰 #pizza") == ["🍕", "🍰", "pizza"]
    chef = f"👨{ZWJ}🍳"
    assert parse_hashtags(f"#{chef} #👍🏽 #❤{VS16} #🇮🇹 #🍕🍕") == [chef, "👍🏽", "❤", "🇮🇹", "🍕🍕"]
    # a word tag ends at an emoji and an emoji tag at a letter: one kind per tag
    assert parse_hashtags("#yum😋 #🍕pizza #pizza🍕") == ["yum", "🍕", "pizza"]
    assert tags_from_list(["🍕", "#🍰"]) == ["🍕", "🍰"]


def test_parsing_imports_no_emoji_library():
    code = ("import sys; from instatag.hashtags import parse_hashtags, scrape_tag_set; "
            "assert parse_hashtags('#🍕 #ice_cream') == ['🍕', 'ice_cream']; "
            "assert 'recipes2026' in scrape_tag_set(['recipe']) and '🍕' not in scrape_tag_set(['recipe']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('emoji', 'regex', 'nltk', 'instatag')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['instatag', 'instatag.hashtags']"


# --------------------------------------------------------------------------- the match key (issue 19.4)
@pytest.mark.parametrize("tag, key", [
    # case, '#', NFKC, edges
    ("#ChocolateCake", "chocolatecake"), ("TomatoSoup!", "tomatosoup"), ("__pie__", "pie"), ("Café", "café"),
    ("ｃａｋｅ", "cake"), ("디저트", "디저트"), ("हिंदी", "हिंदी"), ("___", ""), ("!!!", ""),
    # separators: connector and dash punctuation
    ("food_porn", "foodporn"), ("home_made", "homemade"), ("insta_food", "instafood"), ("ice_cream", "icecream"),
    ("ice-cream", "icecream"), ("ice‿cream", "icecream"), ("Dessert_Recipe", "dessertrecipe"),
    # a trailing number after three or more characters
    ("recipes2026", "recipes"), ("recipes_2026", "recipes"), ("foodlover2026", "foodlover"), ("top10", "top"),
    ("디저트2026", "디저트"), ("b12", "b12"), ("co2", "co2"), ("7up", "7up"), ("2026", "2026"),
    ("top10recipes", "top10recipes"),
    # emoji: the CLDR short name, skin tones left out; emoji beside letters are decoration
    ("🍕", "pizza"), ("#🍰", "shortcake"), ("🍎", "redapple"), ("❤️", "redheart"), ("❤", "redheart"),
    ("👍🏽", "thumbsup"), ("🇮🇹", "italy"), ("🍕🍕", "pizzapizza"), ("yum😋", "yum"), ("😋yum", "yum"), ("°", ""),
])
def test_match_key(tag, key):
    assert match_key(tag) == key


def test_the_rules_in_the_docs_hold():
    """Every example of docs/ingest.md's hashtag rules table parses as the table says."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "ingest.md").read_text(encoding="utf-8")
    section = text[text.index("## Hashtags"):text.index("## Deduplication")]
    rows = [line.strip("|").split(" | ") for line in section.splitlines()
            if line.startswith("| ") and not line.startswith(("| rule", "|---"))]
    assert len(rows) >= 10
    for _, caption, tags in rows:
        example = " ".join(re.findall(r"`([^`]+)`", caption))
        expected = [] if tags.strip() == "none" else re.findall(r"`([^`]+)`", tags)
        assert parse_hashtags(example) == expected, example
