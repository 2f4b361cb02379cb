"""Drops: ingest runs, stored probabilities, fresh-label grading and drift of generated drops, the
retrain decision, ``instatag drops``, the view ``drop_quality`` and the Drops page.

The grading tests use an *oracle* champion: a registered model whose stored probabilities follow
each photo's own hashtags with seeded noise (what a good model does), so the figures are exact and
no network is trained. ``test_a_trained_champion_grades_new_drops`` walks the real road with a tiny
trained model (slow)."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime

import numpy as np
import pytest
from builders import make_champion
from sqlalchemy import func, insert, select, text, update

from instatag import cli, db, drops, evaluate, metrics, sample, score, vocab, webapp
from instatag import schema as t
from instatag.errors import UserError
from instatag.ingest import ingest
from instatag.labels import LabelPipeline
from instatag.settings import load_settings

START = datetime(2026, 11, 1, 6, tzinfo=UTC)


# --------------------------------------------------------------------------- ingest runs
@pytest.mark.pg_drivers
def test_each_ingest_is_a_run_whose_new_posts_carry_its_id(settings, tmp_path):
    drop = tmp_path / "drop"
    sample.make_scrape(drop, n_posts=12, seed=1)
    first = ingest(settings, [drop], workers=1)
    again = ingest(settings, [drop], workers=1)
    repost = tmp_path / "later"
    repost.mkdir()
    shutil.copyfile(next(iter(sorted(drop.glob("*.jpg")))), repost / "2027-01-01_00-00-00_UTC.jpg")
    third = ingest(settings, [repost], workers=1)
    assert (first.ingest_run_id, again.ingest_run_id, third.ingest_run_id) == (1, 2, 3)
    assert first.as_dict()["ingest_run_id"] == 1
    with db.get_engine(settings).connect() as conn:
        runs = conn.execute(select(t.ingest_runs).order_by(t.ingest_runs.c.id)).mappings().all()
        per_run = dict(conn.execute(select(t.posts.c.ingest_run_id, func.count())
                                    .group_by(t.posts.c.ingest_run_id)).tuples().all())
        assert [r["status"] for r in runs] == ["succeeded"] * 3
        assert [(r["n_posts"], r["n_images"]) for r in runs] == [(12, 12), (0, 0), (1, 0)]
        assert runs[0]["sources"] == [str(drop)] and runs[0]["started_by"] == "cli"
        assert runs[0]["report"]["accepted"] == 12 and runs[0]["finished_at"] >= runs[0]["started_at"]
        assert per_run == {1: 12, 3: 1}
        assert len(drops.new_photos(conn, 1)) == 12
        assert drops.new_photos(conn, 3) == []  # a re-post brings no new photo


def test_a_failed_ingest_run_is_recorded_as_failed(sqlite_settings, tmp_path, monkeypatch):
    from instatag import ingest as ingest_mod

    def boom(*args, **kwargs):
        raise RuntimeError("disk gone")

    monkeypatch.setattr(ingest_mod, "_ingest", boom)
    sample.make_scrape(tmp_path / "drop", n_posts=2, seed=1)
    with pytest.raises(RuntimeError, match="disk gone"):
        ingest(sqlite_settings, [tmp_path / "drop"])
    with db.get_engine(sqlite_settings).connect() as conn:
        assert conn.execute(select(t.ingest_runs.c.status)).scalar() == "failed"


# --------------------------------------------------------------------------- probabilities
@pytest.mark.pg_drivers
def test_probabilities_round_trip_and_are_replaced(settings):
    with db.get_engine(settings).begin() as conn:
        conn.execute(insert(t.images), [{"sha256": f"{i:064x}", "post": f"p{i}", "source_path": f"/d/{i}.jpg",
                                         "format": "JPEG", "width": 8, "height": 8, "original_path": "o",
                                         "resized_path": "r"} for i in range(3)])
        vid = conn.execute(insert(t.vocab_versions).values(
            config={"grouping": {}}, config_sha256="c" * 64, n_posts=3, n_images=3, n_unlabelled=0, n_raw_tags=0,
            n_lemmas=0, n_labels=2, stats={}, valid_pct=0.2)).inserted_primary_key[0]
        mid = conn.execute(insert(t.model_versions).values(vocab_version_id=vid, arch="x", params={},
                                                           artifact_path="m", sha256="0" * 64)).inserted_primary_key[0]
    probs = np.array([[0.1, 0.9], [0.5, 0.25], [1e-7, 0.999999]], dtype=np.float32)
    assert drops.store_probabilities(settings, mid, [1, 2, 3], probs) == 3
    assert drops.store_probabilities(settings, mid, [2], [[0.75, 0.5]]) == 1  # replaced, not added
    with db.get_engine(settings).connect() as conn:
        got = drops.load_probabilities(conn, mid, [1, 2, 3, 4])
        assert conn.execute(select(func.count()).select_from(t.image_probabilities)).scalar() == 3
    assert sorted(got) == [1, 2, 3]
    np.testing.assert_array_equal(got[1], probs[0])
    np.testing.assert_array_equal(got[3], probs[2])
    np.testing.assert_array_equal(got[2], np.array([0.75, 0.5], dtype=np.float32))
    with pytest.raises(ValueError, match="2 probability rows for 1 images"):
        drops.store_probabilities(settings, mid, [1], probs[:2])


@pytest.mark.pg_drivers
def test_scoring_stores_every_probability_the_model_gave(settings, tiny_model_dir):
    from instatag.inference import Predictor

    mid, images = make_champion(settings, tiny_model_dir, n=12)
    report = score.score(settings)
    paths = []
    with db.get_engine(settings).connect() as conn:
        rel = dict(conn.execute(select(t.images.c.id, t.images.c.resized_path)).all())
        stored = drops.load_probabilities(conn, mid, rel)
    assert report.n_images == len(stored) == 12
    ids = sorted(stored)
    paths = [settings.data_dir / rel[i] for i in ids]
    expected = Predictor.for_version(settings, mid).predict_paths(paths)
    np.testing.assert_allclose(np.vstack([stored[i] for i in ids]), expected, rtol=1e-5, atol=1e-6)
    score.score(settings, new=False)  # a rescore replaces them
    with db.get_engine(settings).connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.image_probabilities)).scalar() == 12


# --------------------------------------------------------------------------- an oracle champion and four drops
def oracle_probs(labels: list[str], image_labels: set[str], sha256: str) -> np.ndarray:
    """What a good model says: its own labels high, the others low, with noise seeded by the image's
    content (not its id: ingest's worker processes may number the same photos in another order)."""
    rng = np.random.default_rng(int(sha256[:16], 16))
    p = 0.08 + np.abs(rng.normal(0, 0.05, len(labels)))
    for label in image_labels:
        p[labels.index(label)] = np.clip(0.7 + rng.normal(0, 0.15), 0.05, 0.99)
    return p.astype(np.float32)


def oracle_champion(s, vocab_id: int) -> int:
    """A champion of ``vocab_id`` whose probabilities (all current images) follow the photos' labels;
    its validation figures computed from them as ``instatag evaluate`` would."""
    pipeline = LabelPipeline.for_version(s, vocab_id)
    labels = list(pipeline.labels)
    with db.get_engine(s).begin() as conn:
        run = conn.execute(insert(t.training_runs).values(vocab_version_id=vocab_id, params={},
                                                          status="succeeded")).inserted_primary_key[0]
        mid = conn.execute(insert(t.model_versions).values(
            training_run_id=run, vocab_version_id=vocab_id, arch="oracle", params={},
            artifact_path="", sha256="0" * 64, status="champion")).inserted_primary_key[0]
        conn.execute(update(t.model_versions).where(t.model_versions.c.id == mid)
                     .values(artifact_path=f"models/{mid}/model.safetensors"))
        all_images = conn.execute(select(t.images.c.id, t.images.c.sha256)).all()
    folder = s.data_dir / "models" / str(mid)
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"labels": labels, "ranking": "probability"}))
    by_image = {it.image_id: set(it.labels) for it in pipeline.items(s)}
    drops.store_probabilities(s, mid, [i for i, _ in all_images],
                              [oracle_probs(labels, by_image.get(i, set()), sha) for i, sha in all_images])
    _, _, counts, items, y_true = evaluate.validation_set(s, mid)
    probs = np.vstack([oracle_probs(labels, set(it.labels), it.sha256) for it in items])
    res = metrics.evaluate_predictions(y_true, probs, labels, counts, 0.5)  # its thresholds: the global 0.5
    with db.get_engine(s).begin() as conn:
        conn.execute(update(t.model_versions).where(t.model_versions.c.id == mid).values(
            metrics={"model": res["model"], "baseline": res["baseline"], "n_images": len(items),
                     "global_threshold": 0.5}))
    return mid


def oracle_score(s, mid: int, vocab_id: int, run: int) -> None:
    """Store the oracle's probabilities of a drop's new photos (what scoring does)."""
    pipeline = LabelPipeline.for_version(s, vocab_id)
    with db.get_engine(s).connect() as conn:
        photos = [(p["id"], p["sha256"]) for p in drops.new_photos(conn, run)]
        labels_of = drops.fresh_labels(pipeline, drops.drop_hashtags(conn, run))
    drops.store_probabilities(s, mid, [i for i, _ in photos],
                              [oracle_probs(pipeline.labels, labels_of.get(i, set()), sha) for i, sha in photos])


#: the generated drops after the training drop: (name, make_scrape arguments)
DROPS = {
    "same mix": {"n_posts": 120, "seed": 6},
    "one dish": {"n_posts": 120, "seed": 7, "dishes": ("chocolate_cake",)},
    "trending tag": {"n_posts": 120, "seed": 8, "trend": ("#airfryer", 0.5)},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """SQLite: a 240-post training drop, a vocabulary, an oracle champion, then three drops (same mix,
    one dish only, a new hashtag on half the posts) scored and graded; what was seen on the way."""
    tmp = tmp_path_factory.mktemp("drops")
    s = load_settings(env={}, data_dir=tmp / "var")
    db.upgrade(s)
    sample.make_scrape(tmp / "train", n_posts=240, seed=5, start=START)
    ingest(s, [tmp / "train"])
    vocab_id = vocab.build_vocab(s, min_count="10%")
    mid = oracle_champion(s, vocab_id)
    seen = {"before": drops.retrain_check(s.replace(retrain_when="changed"))}
    runs = {}
    for day, (name, kwargs) in enumerate(DROPS.items(), 2):
        sample.make_scrape(tmp / name.replace(" ", "_"), start=START.replace(day=day), **kwargs)
        runs[name] = ingest(s, [tmp / name.replace(" ", "_")]).ingest_run_id
    seen["unscored"] = drops.pending(s, mid)
    for run in runs.values():
        oracle_score(s, mid, vocab_id, run)
    seen["graded"] = {g["ingest_run_id"]: g for g in drops.grade_pending(s)}
    seen["again"] = drops.grade_pending(s)
    with db.get_engine(s).connect() as conn:
        rows = {r["id"]: r for r in drops.drop_rows(conn)}
    return {"settings": s, "model": mid, "vocab": vocab_id, "runs": runs, "rows": rows, **seen}


def _figures(world, name: str) -> dict:
    return world["rows"][world["runs"][name]]["figures"]


def test_drops_wait_until_the_champion_scored_them_and_are_graded_once(world):
    ready, waiting = world["unscored"]
    assert ready == [] and sorted(waiting) == sorted(world["runs"].values())
    assert all(re.match(r"120 of its 120 new photos are not scored by model version \d+ yet", w)
               for w in waiting.values())
    assert sorted(world["graded"]) == sorted(world["runs"].values())
    assert world["again"] == []  # graded once
    training_drop = world["rows"][1]
    assert training_drop["model_version_id"] is None
    assert training_drop["note"].startswith(f"in model version {world['model']}'s training data: ingested before "
                                            "its vocabulary version was built, so it is never graded by it")


def test_fresh_labels_come_from_the_champions_vocabulary(world):
    s, run = world["settings"], world["runs"]["same mix"]
    pipeline = LabelPipeline.for_version(s, world["vocab"])
    with db.get_engine(s).connect() as conn:
        tags = drops.drop_hashtags(conn, run)
    labels = drops.fresh_labels(pipeline, tags)
    assert set().union(*labels.values()) <= set(pipeline.labels)
    assert all("recipe" not in ts and "recipes" not in ts for ts in tags.values())  # scrape tags never count
    cakes = [i for i, ts in tags.items() if "cakes" in ts]
    assert cakes and all("cake" in labels[i] for i in cakes)  # '#cakes' -> its lemma's label
    row = world["rows"][run]
    assert row["n_labelled"] == sum(1 for ls in labels.values() if ls)


def test_a_drop_from_the_same_mix_is_graded_and_not_flagged(world):
    row = world["rows"][world["runs"]["same mix"]]
    assert (row["n_posts"], row["n_images"]) == (120, 120) and 60 <= row["n_labelled"] <= 110
    assert not row["flagged"] and row["reasons"] is None and row["flags"] == []
    # the oracle predicts fresh labels as well as validation ones: within the quality margin
    assert abs(row["dominant_recall_2"] - row["valid_dominant_recall_2"]) < 0.1
    assert row["dominant_recall_2"] > row["baseline_dominant_recall_2"] + 0.3
    m = row["metrics"]
    assert set(m["model"]) >= {"dominant_recall@1", "dominant_recall@2", "map", "precision@1", "recall@2"}
    assert m["model"]["dominant_recall@2"] == row["dominant_recall_2"] and m["n_images"] == row["n_labelled"]
    assert m["validation"]["model"]["dominant_recall@2"] == row["valid_dominant_recall_2"]
    figs = _figures(world, "same mix")
    assert list(figs) == ["quality", "tag_mix", "new_tags", "top1_labels", "max_probability", "no_label",
                          "image_size", "brightness"]
    assert figs["tag_mix"]["value"] < 0.1 and figs["tag_mix"]["p_value"] > 0.01
    assert figs["top1_labels"]["p_value"] > 0.01  # ~48 validation photos: PSI itself is noisy at this size
    assert figs["image_size"]["value"] == 0.0  # every generated photo is 96 px
    assert figs["new_tags"]["value"] < 0.1
    assert not any(f["flagged"] for f in figs.values())


def test_a_drop_of_one_dish_is_flagged(world):
    row = world["rows"][world["runs"]["one dish"]]
    figs = _figures(world, "one dish")
    assert row["flagged"] and {"tag mix", "top-1 labels"} <= set(row["flags"])
    assert figs["tag_mix"]["value"] > 1.0 and figs["tag_mix"]["p_value"] < 1e-10
    assert figs["tag_mix"]["most_changed"][0]["category"] == "cake"
    assert figs["top1_labels"]["flagged"] and figs["top1_labels"]["most_changed"][0]["category"] == "cake"
    assert "tag mix against the training data: PSI" in row["reasons"]
    assert not figs["new_tags"]["flagged"]


def test_a_drop_with_a_new_trending_hashtag_is_flagged(world):
    row = world["rows"][world["runs"]["trending tag"]]
    figs = _figures(world, "trending tag")
    assert row["flags"] == ["new tags"] and row["n_new_tags"] == 1
    lead = figs["new_tags"]["tags"][0]
    assert lead["tag"] == "airfryer" and lead["ref_share"] == 0 and 0.4 < lead["drop_share"] < 0.65
    assert lead["flagged"] and not any(t["flagged"] for t in figs["new_tags"]["tags"][1:])
    assert not figs["tag_mix"]["flagged"]  # the dishes did not change
    assert re.search(r"#airfryer 0% -> \d\d%", row["reasons"])


def test_flags_are_logged_as_warnings(world, caplog):
    s = world["settings"]
    with caplog.at_level("WARNING", logger="instatag.drops"):
        drops.grade(s, world["runs"]["trending tag"], world["model"])  # grading again replaces the row
    assert any("rose (hashtags the vocabulary does not know): #airfryer" in r.getMessage()
               and r.levelname == "WARNING" for r in caplog.records)
    with db.get_engine(s).connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.drop_evaluations)).scalar() == 3
    with pytest.raises(UserError, match="no ingest run 99"):
        drops.grade(s, 99, world["model"])


def test_the_view_and_the_time_series(world):
    with db.get_engine(world["settings"]).connect() as conn:
        view = conn.execute(text("select * from drop_quality order by drop_id")).mappings().all()
    assert [r["drop_id"] for r in view] == [1, *world["runs"].values()]
    assert view[0]["model_version"] is None and view[0]["posts"] == 240
    by_id = {r["drop_id"]: r for r in view}
    for name, run in world["runs"].items():
        assert by_id[run]["model_version"] == world["model"]
        assert bool(by_id[run]["flagged"]) == (name != "same mix")
        assert by_id[run]["dominant_recall_2"] == pytest.approx(world["rows"][run]["dominant_recall_2"])
        assert by_id[run]["valid_dominant_recall_2"] == pytest.approx(world["rows"][run]["valid_dominant_recall_2"])


def test_retrain_check_runs_only_when_something_changed(world):
    s = world["settings"]
    run, why = world["before"]
    assert not run and "nothing changed since model version" in why and "0 new labelled photos" in why
    changed = s.replace(retrain_when="changed")
    run, why = drops.retrain_check(changed)
    assert run and re.match(r"drops \d+, \d+ were flagged since model version", why)
    assert drops.retrain_check(changed, scheduled=False) == (True, "a manual run always runs")
    assert drops.retrain_check(changed, reason="drift in drop 3")[1] == "started because: drift in drop 3"
    assert drops.retrain_check(s) == (True, "INSTATAG_RETRAIN_WHEN is always")


def test_instatag_drops_prints_the_table_and_one_drop(world, capsys, tmp_path):
    s = world["settings"]
    base = ["--database-url", s.database_url, "--data-dir", str(s.data_dir), "drops"]
    assert cli.main(base) == 0  # grades nothing new, prints the table
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["drop", "ingested", "posts", "new"]
    assert "not graded: in model version" in lines[1]
    same, dish, trend = (next(ln for ln in lines if ln.split()[0] == str(world["runs"][k])) for k in DROPS)
    assert same.endswith("none") and "tag mix" in dish and trend.endswith("new tags")
    row = world["rows"][world["runs"]["same mix"]]
    assert f"{100 * row['dominant_recall_2']:.1f}" in same and f"{100 * row['valid_dominant_recall_2']:.1f}" in same

    assert cli.main([*base, str(world["runs"]["trending tag"]), "--no-grade"]) == 0
    detail = capsys.readouterr().out
    assert "dominant_recall@2" in detail
    assert "FLAG new tags rose (hashtags the vocabulary does not know): #airfryer" in detail

    assert cli.main([*base, "--no-grade", "--json", "--plots", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    rows = json.loads(out[:out.rindex("]") + 1])
    assert [r["id"] for r in rows] == [1, *world["runs"].values()]
    for name in ("drops_quality.png", "drops_drift.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    assert cli.main([*base, "42"]) == 2  # no such drop


def test_the_drops_page(world):
    app = webapp.create_app(world["settings"])
    app.dependency_overrides[webapp.airflow_auth()] = lambda: "tester"
    from fastapi.testclient import TestClient

    html = TestClient(app).get("/drops").text
    assert '<a href="/drops" class="current">Drops</a>' in html
    rows = re.findall(r'<tr class="(\w*)">\s*<td class="num">(\d+)</td>(.*?)</tr>', html, re.S)
    assert [int(r[1]) for r in rows] == [*reversed(world["runs"].values()), 1]  # newest first
    by_id = {int(r[1]): (r[0], r[2]) for r in rows}
    same = by_id[world["runs"]["same mix"]]
    assert same[0] == "" and '<span class="muted">none</span>' in same[1]
    valid = world["rows"][world["runs"]["same mix"]]["valid_dominant_recall_2"]
    assert f"vs {100 * valid:.1f}% validation" in same[1]
    dish = by_id[world["runs"]["one dish"]]
    assert dish[0] == "flagged"
    assert re.search(r'<span class="flag" title="tag mix against[^"]*">tag mix</span>', dish[1])
    assert "not graded: in model version" in by_id[1][1]
    assert html.count('src="data:image/png;base64,') == 2


def test_the_tag_browser_labels_photos_newer_than_the_champions_vocabulary(world):
    """The drops' photos came after the champion's vocabulary version (no ``image_labels`` row): the browser
    maps their own hashtags through that vocabulary as grading does, in the cards, the tag counts and the
    review queue."""
    from fastapi.testclient import TestClient

    s, mid, run = world["settings"], world["model"], world["runs"]["same mix"]
    pipeline = LabelPipeline.for_version(s, world["vocab"])
    with db.get_engine(s).connect() as conn:
        labels = drops.labels_since(conn, pipeline, drops.champion_vocab_created(conn, mid))
        mine = drops.fresh_labels(pipeline, drops.drop_hashtags(conn, run))
        counts = dict(webapp.model_labels(conn, mid))
    cake = min(i for i, ls in mine.items() if ls == {"cake"})
    assert labels[cake] == {"cake"} and len(labels) == 360  # every new photo of the three drops
    with db.get_engine(s).begin() as conn:  # the champion's tags of this photo (what scoring writes)
        conn.execute(insert(t.predictions), [{"model_version_id": mid, "image_id": cake, "label": lb,
                                              "probability": p, "rank": r}
                                             for r, (lb, p) in enumerate((("cake", 0.6), ("pie", 0.2)), 1)])
    app = webapp.create_app(s)
    app.dependency_overrides[webapp.airflow_auth()] = lambda: "tester"
    app.dependency_overrides[webapp.edit_rights()] = lambda: False
    client = TestClient(app)
    for order in ("newest", "review"):
        html = client.get(f"/browse?order={order}").text
        card = html[html.index(f'id="image-{cake}"'):html.index('class="pager"')]
        assert '<div class="muted uploader">uploader: cake</div>' in card
    n_cake = sum(1 for ls in labels.values() if "cake" in ls)
    assert f'cake ({counts["cake"] + n_cake} images tagged by uploaders)' in html
    with db.get_engine(s).connect() as conn:
        later = webapp.later_uploader_labels(s, conn, world["vocab"])
        (card,) = webapp.browse(conn, mid, order="review", later=later).cards
    assert card.uploader == ("cake",) and card.disagreement < 0.99  # the uploader's cake is not a disagreement of 1


def test_the_drops_page_without_drops(sqlite_settings):
    app = webapp.create_app(sqlite_settings)
    app.dependency_overrides[webapp.airflow_auth()] = lambda: "tester"
    from fastapi.testclient import TestClient

    assert "No drop yet" in TestClient(app).get("/drops").text


# --------------------------------------------------------------------------- the real road
@pytest.mark.slow
def test_a_trained_champion_grades_new_drops(tmp_path, monkeypatch):
    """ingest -> vocabulary -> train (tiny) -> evaluate -> promote -> score, then two drops -> score ->
    grade: the figures exist, the same-mix drop is within the quality margin and not flagged on its
    tag mix, the one-dish drop is flagged."""
    import torch

    from instatag import pipeline

    torch.set_num_threads(1)
    for name in ("INSTATAG_CONFIG", "INSTATAG_DATABASE_URL", "AIRFLOW_CTX_DAG_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("INSTATAG_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("INSTATAG_DEVICE", "cpu")
    db.upgrade(load_settings())
    sample.make_scrape(tmp_path / "d1", n_posts=240, seed=5, start=START)
    pipeline.ingest_drops([str(tmp_path / "d1")])
    vocab_id = pipeline.build_vocabulary(min_count="10%")
    model = pipeline.train_model(vocab_id, preset="default", arch="efficientnet_lite0", size=32, epochs=2,
                                 freeze_epochs=1, lr="0.01", bs=8)
    pipeline.evaluate_model(model)
    assert pipeline.promote_model(model)["promoted"]
    pipeline.score_shard(0, 1)
    for name, kwargs in (("same", DROPS["same mix"]), ("dish", DROPS["one dish"])):
        sample.make_scrape(tmp_path / name, start=START.replace(day=3), **kwargs)
        pipeline.ingest_drops([str(tmp_path / name)])
    assert pipeline.grade_drops() == []  # not scored yet
    pipeline.score_shard(0, 1)
    graded = pipeline.grade_drops()
    assert [g["ingest_run_id"] for g in graded] == [2, 3]
    same, dish = graded
    assert same["n_images"] == 120 and same["dominant_recall@2"] is not None
    assert abs(same["dominant_recall@2"] - same["valid_dominant_recall@2"]) < 0.15
    assert not any("tag mix" in r for r in same["reasons"])
    assert dish["flagged"] and any(r.startswith("tag mix against the training data") for r in dish["reasons"])
    assert pipeline.drift_reasons(graded)[0].startswith("drop 3 (model version 1): ")
    assert pipeline.retrain_request(graded) is None  # INSTATAG_RETRAIN_ON_DRIFT is off
    monkeypatch.setenv("INSTATAG_RETRAIN_ON_DRIFT", "true")
    assert pipeline.retrain_request(graded)["reason"].startswith("drop 3 (model version 1): tag mix")


# --------------------------------------------------------------------------- (last: they add drops to the world)
def test_new_tags_are_one_figure_in_the_table_the_detail_and_the_page(world, capsys):
    s = world["settings"]
    base = ["--database-url", s.database_url, "--data-dir", str(s.data_dir), "drops", "--no-grade"]
    for name, run in world["runs"].items():
        row = world["rows"][run]
        fig = row["figures"]["new_tags"]
        assert row["n_new_tags"] == fig["count"] and all(t["rise"] > 0 for t in fig["tags"]), name
        assert len(fig["tags"]) == min(fig["count"], drops.TOP_TAGS)
        assert cli.main([*base, str(run)]) == 0
        detail = capsys.readouterr().out
        assert re.search(rf"\b{row['n_new_tags']} new tags?\b", detail)
        listed = re.search(r"new tags \(hashtags the vocabulary does not know whose share rose\), .*", detail)
        assert (listed is not None) == bool(fig["tags"])
        if listed:
            assert listed.group(0).count("#") == len(fig["tags"])
    assert world["rows"][world["runs"]["same mix"]]["n_new_tags"] == 0  # rare hashtags' chance rises are not new


def test_a_drop_too_small_to_test_says_so_and_a_training_drop_why_it_is_never_graded(world, tmp_path, capsys):
    s, mid = world["settings"], world["model"]
    sample.make_scrape(tmp_path / "tiny", n_posts=3, seed=9, start=START.replace(day=9), dishes=("chocolate_cake",))
    run = ingest(s, [tmp_path / "tiny"]).ingest_run_id
    oracle_score(s, mid, world["vocab"], run)
    drops.grade(s, run, mid)
    with db.get_engine(s).connect() as conn:
        row = next(r for r in drops.drop_rows(conn) if r["id"] == run)
    assert row["n_images"] == 3 and row["flags"] == []
    assert row["too_few"] == "too few photos to test: 3 < 30"
    assert all(drops.untested(row, f) for f in row["figures"].values())
    base = ["--database-url", s.database_url, "--data-dir", str(s.data_dir), "drops", "--no-grade"]
    assert cli.main(base) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.split()[0] == str(run))
    assert line.endswith("too few photos to test: 3 < 30")
    assert cli.main([*base, str(run)]) == 0
    assert "too few photos to test: 3 < 30 (INSTATAG_DRIFT_MIN_IMAGES)" in capsys.readouterr().out
    assert cli.main([*base, "1"]) == 0  # the training drop
    assert capsys.readouterr().out.strip() == (
        f"drop 1: not graded: in model version {mid}'s training data: ingested before its vocabulary version was "
        "built, so it is never graded by it (a model grades only later drops)")
    app = webapp.create_app(s)
    app.dependency_overrides[webapp.airflow_auth()] = lambda: "tester"
    from fastapi.testclient import TestClient

    html = TestClient(app).get("/drops").text
    tiny = re.search(rf'<td class="num">{run}</td>(.*?)</tr>', html, re.S).group(1)
    assert "too few photos to test: 3 &lt; 30" in tiny and ">none<" not in tiny
