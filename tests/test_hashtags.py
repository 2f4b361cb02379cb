import unicodedata

from instatag.hashtags import MAX_TAG_LENGTH, normalise, parse_hashtags, scrape_tag_set, tags_from_list


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
    assert parse_hashtags("#1 #2026 #foodlover2026 # #! ## #😋 text#inword") == ["foodlover2026", "inword"]
    assert parse_hashtags("#" + "a" * (MAX_TAG_LENGTH + 1) + " #ok") == ["ok"]
    assert parse_hashtags(None) == [] and parse_hashtags("") == [] and parse_hashtags("no tags here") == []


def test_full_width_hash_sign():
    assert parse_hashtags("＃ラーメン＃Ramen") == ["ラーメン", "ramen"]


def test_tag_lists_follow_the_same_rules():
    assert tags_from_list(["#Cake", "pie", " ", "PIE", "café!", 2026, "ok"]) == ["cake", "pie", "café", "ok"]
    assert normalise("#TomatoSoup") == "tomatosoup"


def test_scrape_tags_with_plurals():
    tags = scrape_tag_set(["Recipe", "#dish", "lunch"])
    assert {"recipe", "recipes", "dish", "dishes", "lunch", "lunches"} <= tags
    assert "recipees" not in tags and "dishs" not in tags
    assert scrape_tag_set([]) == frozenset()
