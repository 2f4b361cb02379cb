"""`instatag vocab suggest`: the probe, the relations, the suggestions on a generated scrape where one tag is
pure noise and two tags are synonyms, the grouping file it writes (round trip), the CLI and the pipeline
function the retrain DAG's `suggest` task calls. The web page: tests/test_webapp.py; the DAG wiring:
tests/test_dags.py."""

from __future__ import annotations

import json
import random
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from instatag import cli, probe, suggest
from instatag.errors import UserError
from instatag.grouping import dump_grouping, grouping_from_dict, load_grouping
from instatag.sample import Dish, draw
from instatag.settings import load_settings

#: four dishes a probe tells apart by their pixels; the cake's photos carry #dessert or #sweet or both
DISHES = (
    Dish("cake", (90, 50, 20), "square", ()),
    Dish("salad", (60, 170, 60), "stripes", ("#salad", "#greens")),
    Dish("soup", (200, 40, 30), "circle", ("#soup", "#tomato")),
    Dish("rice", (235, 235, 225), "ring", ("#rice", "#bowl")),
)
NOISE = "#yolo"  # on 40 % of the posts, whatever the photo
SCRAPE_ONLY = "scrape_tags: [recipe]\nmin_count: 1\n"


def write_scrape(folder: Path, n_posts: int = 240, seed: int = 0) -> dict[str, str]:
    """Posts in instaloader's layout; returns post stem -> dish."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    t, out = datetime(2026, 11, 1, 6, 0, tzinfo=UTC), {}
    for i in range(n_posts):
        dish = DISHES[i % len(DISHES)]
        t += timedelta(seconds=rng.randint(30, 900))
        stem = t.strftime("%Y-%m-%d_%H-%M-%S_UTC")
        if dish.name == "cake":
            tags = rng.choice([["#dessert"], ["#sweet"], ["#dessert", "#sweet"]])
        else:
            tags = [dish.tags[0]] + ([dish.tags[1]] if rng.random() < 0.5 else [])
        tags += [NOISE] if rng.random() < 0.4 else []
        draw(dish, rng).save(folder / f"{stem}.jpg", quality=90)
        (folder / f"{stem}.txt").write_text("Dinner . . . " + " ".join(["#recipe", *tags]), encoding="utf-8")
        out[stem] = dish.name
    return out


@pytest.fixture(scope="module")
def scrape(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("suggest_scrape")
    write_scrape(folder)
    return folder


@pytest.fixture(scope="module")
def corpus_dir(scrape, tmp_path_factory) -> Path:
    """A data dir (SQLite) with the scrape ingested, once per module; tests change copies of it."""
    from instatag import db, ingest

    data = tmp_path_factory.mktemp("suggest_data") / "var"
    settings = load_settings(env={}, data_dir=data)
    db.upgrade(settings)
    ingest.ingest(settings, [scrape], workers=1)
    (data / "scrape_only.yaml").write_text(SCRAPE_ONLY)
    return data


@pytest.fixture
def ingested(corpus_dir, tmp_path):
    """(settings, scrape-tags-only grouping file) on a copy of the ingested data dir."""
    data = tmp_path / "var"
    shutil.copytree(corpus_dir, data)
    return load_settings(env={}, data_dir=data), data / "scrape_only.yaml"


def pixel_features(settings):
    """A stand-in for the backbone: each resized photo as a 6x6 colour thumbnail (108 numbers)."""
    from PIL import Image

    corpus = suggest.read_corpus(settings)

    def featurize(ids):
        out = []
        for i in ids:
            with Image.open(corpus.paths[i]) as im:
                out.append(np.asarray(im.convert("RGB").resize((6, 6)), dtype=np.float32).ravel() / 255)
        return np.stack(out)

    featurize.backbone = "pixels-6x6"
    return featurize


@pytest.fixture(scope="module")
def report(corpus_dir):
    """The suggestions for the scrape-tags-only grouping (measuring writes nothing to the data dir)."""
    settings = load_settings(env={}, data_dir=corpus_dir)
    return suggest.suggest(settings, corpus_dir / "scrape_only.yaml", featurize=pixel_features(settings))


# --------------------------------------------------------------------------- the probe
def test_the_probe_measures_visual_tags_against_chance_and_flat_cooccurrence():
    rng = np.random.default_rng(0)
    n = 400
    dish = rng.integers(0, 4, n)
    X = np.eye(4)[dish] + 0.3 * rng.standard_normal((n, 4))
    shas = [f"{rng.integers(0, 2**63):016x}" * 4 for _ in range(n)]
    folds = probe.folds_of(shas)
    Y = np.stack([dish == 0, dish == 1, dish == 2, rng.random(n) < 0.3], axis=1).astype(np.float32)
    scores = probe.out_of_fold_scores(X, Y, folds)
    visual, noise = probe.label_evidence(Y, scores)[0], probe.label_evidence(Y, scores)[3]
    assert visual.ap > 0.9 and visual.p_value < 0.01 and visual.lift > 3
    assert noise.p_value > 0.01 and noise.lift < 1.25
    assert abs(noise.chance - noise.prevalence) < 0.02
    # a tag that goes with dish 0 is specific; the noise tag is as flat as random photos
    Y2 = np.column_stack([Y, (dish == 0) & (rng.random(n) < 0.5)])
    ref = np.array([True, True, True, False, False])
    specific = probe.cooccurrence_specificity(Y2, 4, ref, ["a", "b", "c", "noise", "with_a"])
    flat = probe.cooccurrence_specificity(Y2, 3, ref, ["a", "b", "c", "noise", "with_a"])
    assert specific.top == "a" and specific.p_value < 0.01 and specific.ratio > 5
    assert flat.p_value > 0.01 and flat.ratio < 2
    # two heads of the same photos cannot be told apart; of different photos they can
    half = rng.random(n) < 0.5
    same_a, same_b = (dish == 0) & half, (dish == 0) & ~half
    Y3 = np.column_stack([same_a, same_b, dish == 1]).astype(np.float32)
    s3 = probe.out_of_fold_scores(X, Y3, folds)
    assert probe.pair_discrimination(s3[:, 0], s3[:, 1], Y3[:, 0], Y3[:, 1]) < 0.7
    assert probe.pair_discrimination(s3[:, 0], s3[:, 2], Y3[:, 0], Y3[:, 2]) > 0.95
    assert probe.pair_discrimination(s3[:, 0], s3[:, 2], Y3[:, 0], np.zeros(n)) is None  # nothing to compare


def test_cooccurrence_figures():
    a = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    b = np.array([1, 1, 0, 1, 0, 0, 0, 0])
    co = probe.cooccurrence(a, b)
    assert (co.both, co.only_a, co.only_b) == (2, 1, 1)
    assert co.jaccard == pytest.approx(0.5) and co.overlap == pytest.approx(2 / 3)
    assert co.npmi == pytest.approx(np.log((2 / 8) / (3 / 8 * 3 / 8)) / -np.log(2 / 8))
    assert probe.cooccurrence(a, 1 - a).npmi == -1.0


def test_wordnet_and_compound_relations():
    from instatag.labels import LabelPipeline
    from instatag.relations import Relations

    rel = Relations(LabelPipeline(grouping_from_dict({})))
    assert rel.between("dessert", "sweet").kind == "synonym"
    assert rel.between("donut", "doughnut").kind == "synonym"
    vegan = rel.between("vegan", "vegetarian")
    assert (vegan.kind, vegan.broader) == ("kind_of", "vegetarian")
    assert rel.between("breakfast", "brunch").kind == "sibling"
    ribs = rel.between("babybackribs", "rib")
    assert (ribs.kind, ribs.broader) == ("compound", "rib")
    # rarer senses and longer paths relate nearly anything: not counted
    assert rel.between("burrito", "breakfast") is None
    assert rel.between("dinner", "smoker") is None
    assert rel.between("salad", "appetizer") is None
    assert rel.between("bibimbap", "rice") is None  # not in WordNet


# --------------------------------------------------------------------------- the suggestions
def test_the_noise_tag_is_dropped_and_the_synonyms_grouped(report):
    by_kind = {k: [s for s in report.suggestions if s.kind == k] for k in suggest.KIND_ORDER}
    assert [s.title for s in by_kind["drop"]] == ["drop yolo"]
    drop = by_kind["drop"][0]
    assert drop.id == "D1" and drop.change == {"drop": ["yolo"], "remove_groups": []}
    assert drop.evidence["flat"] and drop.evidence["no_signal"]  # both measures agree
    assert "no better" in drop.reason and "flat" in drop.reason
    assert len(drop.examples["yolo"]) == suggest.EXAMPLES
    assert [s.title for s in by_kind["group"]] == ["group dessert: dessert, sweet"]
    group = by_kind["group"][0]
    pair = group.evidence["pairs"][0]
    assert pair["relation"] == "synonym" and pair["auc"] < suggest.SAME_PHOTO_AUC and pair["same_photos"]
    assert group.change == {"group": "dessert", "members": ["dessert", "sweet"], "remove_groups": []}
    assert "WordNet synonyms" in group.reason and "cannot tell them apart" in group.reason
    # every dish's own tags stay labels; min_count is proposed on the result
    labels = set(report.labels)
    assert {"salad", "soup", "rice", "dessert", "sweet", "yolo"} <= labels
    assert all(report.labels[x]["visual"] for x in ("salad", "soup", "rice", "dessert", "sweet"))
    assert not report.labels["yolo"]["visual"]
    assert [s.id for s in by_kind["min_count"]] == ["M1"]
    assert report.suggested["drop"] == ["yolo"] and report.suggested["groups"] == {"dessert": ["dessert", "sweet"]}
    assert report.counts["labels_now"] == 9 and report.suggested_labels <= 7
    assert not by_kind["whole"]


def test_a_split_tag_whose_part_is_never_a_tag_is_kept_whole(ingested, tmp_path):
    from instatag import ingest

    settings, groups = ingested
    folder = tmp_path / "more"
    folder.mkdir()
    rng = random.Random(1)
    for i in range(24):  # #finedining -> fine + dining, neither a tag of its own
        stem = f"2026-12-01_06-00-{i:02d}_UTC"
        draw(DISHES[1], rng).save(folder / f"{stem}.jpg")
        (folder / f"{stem}.txt").write_text("#recipe #salad #finedining")
    ingest.ingest(settings, [folder], workers=1)
    report = suggest.suggest(settings, groups, featurize=pixel_features(settings))
    whole = [s for s in report.suggestions if s.kind == "whole"]
    assert [(s.id, s.title) for s in whole] == [("W1", "keep #finedining whole")]
    assert whole[0].evidence["fragments"] == ["fine", "dining"] and whole[0].change == {"whole": "finedining"}
    assert "finedining" in report.labels and "fine" not in report.labels  # measured with the tag whole


def test_a_group_is_named_by_its_broader_member_or_its_most_frequent():
    base = grouping_from_dict({"groups": {"doughnut": ["donut", "doughnut"], "sweets_sum": ["dessert", "sweet"]}})

    def pair(a, b, kind, broader=None):
        return {(a, b): {"relation": kind, "broader": broader}}

    counts = {"beignet": 155, "doughnut": 73, "sweets_sum": 445, "pastry": 89, "baklava": 137, "cake": 20}
    assert suggest._group_name(["beignet", "doughnut"], pair("beignet", "doughnut", "sibling"), counts, base) \
        == "beignet"  # an existing group's label only when it is the most frequent
    assert suggest._group_name(["sweets_sum", "cake"], pair("sweets_sum", "cake", "kind_of", "cake"), counts,
                               base) == "sweets_sum"
    assert suggest._group_name(["baklava", "pastry"], pair("baklava", "pastry", "kind_of", "pastry"), counts,
                               base) == "pastry"  # the WordNet hypernym
    assert suggest._group_name(["baklava", "pastry"], pair("baklava", "pastry", "sibling"), counts, base) == "baklava"


# --------------------------------------------------------------------------- the grouping file
def test_the_written_grouping_file_loads_back_with_a_comment_per_change(report, tmp_path):
    text = suggest.grouping_text(report, ["all"])
    path = tmp_path / "suggested.yaml"
    path.write_text(text)
    loaded = load_grouping(path)
    assert loaded.as_dict() == report.suggested
    assert loaded == suggest.apply_changes(grouping_from_dict(report.base), report.suggestions)[0]
    lines = text.splitlines()
    assert lines[0].startswith("# Grouping written by `instatag vocab suggest`")
    assert any(line.strip().startswith("- yolo  # D1: yolo (") for line in lines)
    assert any(line.startswith("  dessert: [dessert, sweet]  # G1: dessert, sweet (") for line in lines)
    assert any(line.startswith(f"min_count: {report.suggested['min_count']}  # M1: keeps the") for line in lines)
    # a subset: only the group
    only = tmp_path / "only.yaml"
    only.write_text(suggest.grouping_text(report, ["g1"]))
    assert load_grouping(only).drop == () and load_grouping(only).groups == {"dessert": ("dessert", "sweet")}
    with pytest.raises(UserError, match="no suggestion X9 in this report; its suggestions are D1, G1, M1"):
        suggest.grouping_text(report, ["X9"])


@pytest.mark.parametrize("source", [None, "edge"])
def test_dump_grouping_round_trips(tmp_path, source):
    grouping = load_grouping(None) if source is None else grouping_from_dict({
        "scrape_tags": ["recipe", "yes"], "drop": ["no", "null", "1e3", "디저트", "a:b", "[x]", "#tag"],
        "min_count": 7, "split_hashtags": False, "groups": {"true": ["on", "off"], "xy": ["'q", "y:z"]}})
    path = tmp_path / "g.yaml"
    path.write_text(dump_grouping(grouping, {"drop": {"no": "why: # not\na comment"}, "min_count": "M1: so"}, "top"))
    assert load_grouping(path) == grouping


def test_applying_changes_to_existing_groups_and_whole_tags():
    base = grouping_from_dict({"scrape_tags": ["recipe"], "drop": ["foodie"],
                               "groups": {"chatter": ["yolo", "lol"], "sweets_sum": ["dessert", "sweet"]}})

    def s(id_, kind, change):
        return suggest.Suggestion(id_, kind, id_, f"why {id_}", {}, change)

    changes = [
        s("W1", "whole", {"whole": "applepie"}),
        s("W2", "whole", {"whole": "finedining"}),
        s("D1", "drop", {"drop": ["yolo", "lol"], "remove_groups": ["chatter"]}),
        s("D2", "drop", {"drop": ["finedining"], "remove_groups": []}),  # kept whole, then dropped: dropped
        s("G1", "group", {"group": "sweets_sum", "members": ["cake", "dessert", "sweet"],
                          "remove_groups": ["sweets_sum"]}),
        s("G2", "group", {"group": "pie", "members": ["applepie", "pie"], "remove_groups": []}),
        s("M1", "min_count", {"min_count": "3.5%"}),
    ]
    grouping, notes = suggest.apply_changes(base, changes)
    assert grouping.drop == ("finedining", "foodie", "lol", "yolo")
    assert grouping.groups == {"pie": ("applepie", "pie"), "sweets_sum": ("cake", "dessert", "sweet")}
    assert grouping.min_count == "3.5%"
    assert notes == {"drop": {"yolo": "D1: why D1", "lol": "D1: why D1", "finedining": "D2: why D2"},
                     "groups": {"sweets_sum": "G1: why G1", "pie": "G2: why G2"}, "min_count": "M1: why M1"}
    # any subset applies on its own
    for change in changes:
        suggest.apply_changes(base, [change])


# --------------------------------------------------------------------------- CLI, stored reports, the pipeline
def test_cli_suggest_then_accept_from_the_stored_report(ingested, tmp_path, capsys, monkeypatch):
    settings, groups = ingested
    monkeypatch.setattr(suggest, "_featurizer", lambda s, corpus, arch, size: (pixel_features(s), "pixels-6x6"))
    base = ["--data-dir", str(settings.data_dir), "--database-url", settings.database_url, "vocab", "suggest"]
    assert cli.main([*base, "--groups", str(groups)]) == 0
    out = capsys.readouterr().out
    assert "  D1  drop yolo" in out and "  G1  group dessert: dessert, sweet" in out and "  M1  min_count" in out
    assert f"report: {settings.data_dir / 'suggestions'}" in out
    [stored] = suggest.report_files(settings)
    assert suggest.load_report(stored).as_dict() == suggest.latest_report(settings).as_dict()

    written = tmp_path / "accepted.yaml"
    assert cli.main([*base, "--report", "latest", "--accept", "D1", "G1", "--write", str(written)]) == 0
    assert f"wrote {written} with 2 accepted suggestion(s) (D1, G1)" in capsys.readouterr().out
    assert load_grouping(written).drop == ("yolo",)
    assert len(suggest.report_files(settings)) == 1  # --report reuses it, measures nothing

    assert cli.main([*base, "--report", "latest", "--accept", "all", "--write", str(written)]) == 2
    assert "exists; choose another file or add --force" in capsys.readouterr().err
    assert cli.main([*base, "--report", "latest", "--accept", "all", "--write", str(written), "--force"]) == 0
    capsys.readouterr()
    assert cli.main([*base, "--report", "latest", "--write", str(tmp_path / "x.yaml")]) == 2
    assert "--write needs --accept" in capsys.readouterr().err
    assert cli.main([*base, "--report", "latest", "--accept", "Q7", "--write", str(tmp_path / "x.yaml")]) == 2
    assert "no suggestion Q7" in capsys.readouterr().err
    assert not (tmp_path / "x.yaml").exists()
    assert cli.main([*base, "--report", "latest", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["suggestions"][0]["id"] == "D1"

    # the written file builds a vocabulary: the suggestion used as is
    assert cli.main(["--data-dir", str(settings.data_dir), "--database-url", settings.database_url,
                     "vocab", "build", "--groups", str(written)]) == 0
    out = capsys.readouterr().out
    assert "yolo" not in out.split("dropped by the grouping file")[0]
    assert "dessert" in out and "sweet " not in out


@pytest.mark.postgres
def test_suggest_on_postgresql(pg_settings, scrape, tmp_path):
    from instatag import ingest

    ingest.ingest(pg_settings, [scrape], workers=1)
    groups = tmp_path / "g.yaml"
    groups.write_text(SCRAPE_ONLY)
    report = suggest.suggest(pg_settings, groups, featurize=pixel_features(pg_settings))
    assert [s.title for s in report.suggestions][:2] == ["drop yolo", "group dessert: dessert, sweet"]


def test_suggest_needs_posts(sqlite_settings):
    with pytest.raises(UserError, match="no posts ingested yet"):
        suggest.suggest(sqlite_settings, featurize=lambda ids: np.zeros((len(ids), 2)))


def test_a_damaged_report_is_named(tmp_path):
    bad = tmp_path / "suggest-x.json"
    bad.write_text("{}")
    with pytest.raises(UserError, match="not a suggestion report"):
        suggest.load_report(bad)


def test_the_retrain_dags_suggest_task_stores_a_report_and_applies_nothing(ingested, monkeypatch):
    from instatag import pipeline, vocab

    settings, groups = ingested
    monkeypatch.setattr(suggest, "_featurizer", lambda s, corpus, arch, size: (pixel_features(s), "pixels-6x6"))
    before = vocab.versions(settings)
    out = pipeline.suggest_vocabulary(str(groups), settings=settings)
    assert Path(out["report"]).is_file()
    assert out["suggestions"][:2] == ["D1 drop yolo", "G1 group dessert: dessert, sweet"]
    assert out["labels_now"] == 9
    assert vocab.versions(settings) == before  # nothing applied
    assert groups.read_text() == SCRAPE_ONLY


# --------------------------------------------------------------------------- the Airflow UI's page
def test_the_suggestions_page_lists_the_evidence_with_thumbnails_and_writes_the_accepted_file(ingested, tmp_path):
    import re

    from fastapi.testclient import TestClient

    from instatag import webapp

    settings, groups = ingested
    app = webapp.create_app(settings)
    app.dependency_overrides[webapp.airflow_auth()] = lambda: "tester"
    client = TestClient(app)
    html = client.get("/suggestions").text
    assert "No suggestions yet: run <code>instatag vocab suggest</code>" in html
    assert 'class="current">Suggestions</a>' in html

    report = suggest.suggest(settings, groups, featurize=pixel_features(settings))
    name = suggest.save_report(settings, report).name
    html = client.get("/suggestions").text
    assert f'name="report" value="{name}"' in html
    for s in report.suggestions:
        assert f'name="accept" value="{s.id}" checked' in html
    row = re.search(r'<tr class="drop" id="s-D1">(.*?)</tr>', html, re.S)[1]
    assert "drop yolo" in row and "no better" in row
    thumbs = re.findall(r'<img src="/thumb/(\d+)" alt="yolo: image', row)
    assert len(thumbs) == suggest.EXAMPLES and client.get(f"/thumb/{thumbs[0]}").status_code == 200
    assert re.search(r'<tr class="group" id="s-G1">.*?<img src="/thumb/\d+" alt="sweet: image', html, re.S)
    assert '<table id="curve">' in html and "expected AP" in html

    r = client.get("/suggestions/grouping.yaml", params={"report": name, "accept": ["D1", "G1"]})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/yaml")
    assert "attachment" in r.headers["content-disposition"]
    path = tmp_path / "from_ui.yaml"
    path.write_text(r.text)
    loaded = load_grouping(path)
    assert loaded.drop == ("yolo",) and loaded.groups == {"dessert": ("dessert", "sweet")}
    assert loaded.min_count == 1  # M1 not ticked: the file's own
    assert client.get("/suggestions/grouping.yaml", params={"accept": "Z1"}).status_code == 400
    assert client.get("/suggestions/grouping.yaml", params={"report": "../instatag.db"}).status_code == 404
    assert "No suggestions yet" in client.get("/suggestions", params={"report": "nope.json"}).text
    # an earlier report stays reachable
    suggest.save_report(settings, report)
    html = client.get("/suggestions").text
    assert f'<a href="/suggestions?report={name}">{name}</a>' in html


# --------------------------------------------------------------------------- through the real backbone
@pytest.mark.slow
def test_the_real_backbone_features_are_cached_per_image(sqlite_settings, tmp_path, caplog):
    import logging

    from instatag import features, ingest

    write_scrape(tmp_path / "scrape", n_posts=120, seed=3)
    ingest.ingest(sqlite_settings, [tmp_path / "scrape"], workers=1)
    groups = tmp_path / "g.yaml"
    groups.write_text(SCRAPE_ONLY)
    with caplog.at_level(logging.INFO, logger="instatag.features"):
        first = suggest.suggest(sqlite_settings, groups)
    assert "not cached" in caplog.text
    arch, size = features.default_backbone()
    cache = features.cache_path(sqlite_settings, features.backbone_id(sqlite_settings, arch, size))
    assert first.backbone == cache.stem and cache.is_file()
    cached = features.read_cache(cache)
    assert len(cached) == first.counts["probed_images"] and next(iter(cached.values())).shape == (1280,)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="instatag.features"):
        second = suggest.suggest(sqlite_settings, groups)
    assert "not cached" not in caplog.text
    assert [s.title for s in second.suggestions] == [s.title for s in first.suggestions]
    assert "drop yolo" in [s.title for s in first.suggestions]
