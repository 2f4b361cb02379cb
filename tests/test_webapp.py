"""The plugin's FastAPI app through its test client: pages, browser queries, files, authentication."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from builders import SECRET, client_for, model_row, plain_images, vocab_row
from fastapi.testclient import TestClient
from sqlalchemy import insert, text

from instatag import db, webapp
from instatag import schema as t

LABELS = ("cake", "pie", "salad", "soup")








def predict_all(conn, model_id: int, image_ids, seed: int = 0, labels=LABELS, per_image: int = 2) -> None:
    rng = random.Random(seed)
    rows = []
    for image_id in image_ids:
        chosen = rng.sample(labels, per_image)
        probs = sorted((round(rng.random(), 4) for _ in chosen), reverse=True)
        rows += [{"model_version_id": model_id, "image_id": image_id, "label": label, "probability": p, "rank": r,
                  "scored_at": datetime(2026, 11, 2, tzinfo=UTC)}
                 for r, (label, p) in enumerate(zip(chosen, probs, strict=True), 1)]
    conn.execute(insert(t.predictions), rows)


@pytest.fixture
def filled(settings):
    """A champion (2) and a retired model (1) with predictions on 30 images; a report for the champion."""
    with db.get_engine(settings).begin() as conn:
        vid = vocab_row(conn, LABELS)
        old = model_row(conn, vid, "retired")
        metrics = {"model": {"dominant_recall@1": 0.61, "dominant_recall@2": 0.7, "map": 0.55},
                   "baseline": {"dominant_recall@1": 0.3, "dominant_recall@2": 0.4, "map": 0.2}}
        champ = model_row(conn, vid, "champion", metrics)
        ids = plain_images(settings, conn, 30)
        predict_all(conn, champ, ids, seed=1)
        predict_all(conn, old, ids[:5], seed=2)
    report_dir = settings.reports_dir / str(champ)
    report_dir.mkdir(parents=True)
    (report_dir / "report.html").write_text("<html><body><h1>report of the champion</h1></body></html>")
    (report_dir / "fig4_conv1_filters.png").write_bytes(b"\x89PNG fake")
    return settings, champ, old, ids






def test_models_page_lists_versions_with_metrics_and_champion(filled):
    settings, champ, old, _ = filled
    r = client_for(settings).get("/")
    assert r.status_code == 200
    html = r.text
    assert "★ champion" in html and "retired" in html
    assert "70.0%" in html and "vs 40.0%" in html  # dominant_recall@2 against the baseline
    assert f'href="/models/{champ}/report"' in html
    assert html.count("not evaluated") == 3  # the retired model has no metrics
    assert f'href="/browse?model={old}"' in html


def test_models_page_shows_each_models_label_count_and_training_set_size(sqlite_settings):
    import re

    with db.get_engine(sqlite_settings).begin() as conn:
        small = model_row(conn, vocab_row(conn, ("sweets_sum",)), "retired")  # registered without sizes
        big = model_row(conn, vocab_row(conn, LABELS), "champion")
        conn.execute(t.model_versions.update().where(t.model_versions.c.id == big)
                     .values(params={"n_train": 1525, "n_valid": 360}))
    html = client_for(sqlite_settings).get("/").text
    assert re.search(r"<th[^>]*>labels</th>", html) and re.search(r"<th[^>]*>images</th>", html)
    rows = {int(m[1]): m[2] for m in re.finditer(r'<tr class="\w+">\s*<td class="num">(\d+)</td>(.*?)</tr>', html,
                                                 re.S)}
    assert re.search(r'<td class="num labels">4</td>', rows[big])
    assert re.search(r'<td class="num images">1525 train\s+/ 360 valid</td>', rows[big])
    assert re.search(r'<td class="num labels">1</td>', rows[small])
    assert re.search(r'<td class="num images"><span class="muted">–</span></td>', rows[small])


def test_models_page_without_models_says_what_to_do(sqlite_settings):
    r = client_for(sqlite_settings).get("/")
    assert r.status_code == 200 and "No model yet" in r.text


def test_report_page_and_files(filled):
    settings, champ, old, _ = filled
    client = client_for(settings)
    r = client.get(f"/models/{champ}/report")
    assert r.status_code == 200 and "report of the champion" in r.text
    assert "default-src 'none'" in r.headers["content-security-policy"]
    r = client.get(f"/reports/{champ}/fig4_conv1_filters.png")
    assert r.status_code == 200 and r.content == b"\x89PNG fake"
    assert client.get(f"/models/{old}/report").status_code == 404
    assert client.get(f"/reports/{champ}/missing.png").status_code == 404


def test_browse_newest_first_with_all_predicted_tags(filled):
    settings, champ, _, ids = filled
    r = client_for(settings).get("/browse")
    assert r.status_code == 200
    html = r.text
    assert f"model version {champ}" in html
    assert html.count('class="card"') == 30
    first = html.index(f'src="/thumb/{ids[-1]}"')
    assert first < html.index(f'src="/thumb/{ids[0]}"')  # newest first
    assert html.count('<span class="chip') == 60  # two tags per image
    assert 'id="next"' not in html


def test_browse_chips_are_most_probable_first_and_say_the_rank_rule(settings):
    """A model ranked dominant_first stored rank 1 on a less probable tag: the browser still shows the
    most probable tag first, and says how predicted_tags ranks."""
    with db.get_engine(settings).begin() as conn:
        mid = model_row(conn, vocab_row(conn, LABELS), "champion")
        conn.execute(t.model_versions.update().where(t.model_versions.c.id == mid)
                     .values(params={"ranking": "dominant_first"}))
        (image,) = plain_images(settings, conn, 1)
        conn.execute(insert(t.predictions), [
            {"model_version_id": mid, "image_id": image, "label": "cake", "probability": 0.34, "rank": 1},
            {"model_version_id": mid, "image_id": image, "label": "pie", "probability": 0.99, "rank": 2},
            {"model_version_id": mid, "image_id": image, "label": "soup", "probability": 0.51, "rank": 3}])
    html = client_for(settings).get("/browse").text
    assert html.index("pie 99%") < html.index("soup 51%") < html.index("cake 34%")
    assert "most probable first" in html and "dominant_first" in html
    with db.get_engine(settings).begin() as conn:
        conn.execute(t.model_versions.update().values(params={"ranking": "probability"}))
    assert "dominant_first" not in client_for(settings).get("/browse").text


def test_browse_newest_means_post_time(settings):
    """Unfiltered, the newest post comes first (images.taken_at, the image's first post), not the
    newest ingested; images without a post time come last."""
    with db.get_engine(settings).begin() as conn:
        mid = model_row(conn, vocab_row(conn, LABELS), "champion")
        ids = plain_images(settings, conn, 4)
        posted = {ids[0]: datetime(2026, 11, 20, tzinfo=UTC), ids[1]: None,
                  ids[2]: datetime(2026, 11, 1, tzinfo=UTC), ids[3]: datetime(2026, 11, 10, tzinfo=UTC)}
        for image_id, when in posted.items():
            conn.execute(t.images.update().where(t.images.c.id == image_id).values(taken_at=when))
        predict_all(conn, mid, ids)
    html = client_for(settings).get("/browse").text
    shown = [int(part.split('"')[0]) for part in html.split('src="/thumb/')[1:]]
    assert shown == [ids[0], ids[3], ids[2], ids[1]]
    assert "newest post first" in html and "posted 2026-11-20 00:00" in html


def test_browse_label_counts_say_what_they_count(filled):
    settings, champ, _, _ = filled
    html = client_for(settings).get("/browse").text
    assert "images whose uploaders gave it, vocabulary version" in html
    assert '<option value="cake" >cake (10 images tagged by uploaders)</option>' in html


def test_a_missing_model_version_is_a_404_page(filled):
    settings, champ, old, _ = filled
    client = client_for(settings)
    for path in ("/models/999/report", "/browse?model=999"):
        r = client.get(path)
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html"), path
        assert "There is no model version 999." in r.text and "no report yet" not in r.text
        assert 'href="/"' in r.text  # back to the model versions
    r = client.get(f"/models/{old}/report")  # exists, without a report
    assert r.status_code == 404 and f"Model version {old} has no report yet" in r.text
    assert f"instatag report {old}" in r.text


def test_browse_filters_by_tag_and_probability(filled):
    settings, champ, _, _ = filled
    with db.get_engine(settings).connect() as conn:
        expected = conn.execute(text(
            "select image_id, probability from predictions where model_version_id = :m and label = 'soup' "
            "and probability >= 0.5 order by probability desc, image_id desc"), {"m": champ}).all()
    assert expected
    html = client_for(settings).get("/browse", params={"tag": "soup", "min_p": 0.5}).text
    assert f"{len(expected)} image{'s' * (len(expected) != 1)} predicted with “soup”" in html
    shown = [int(part.split('"')[0]) for part in html.split('src="/thumb/')[1:]]
    assert shown == [image_id for image_id, _ in expected]
    assert html.count("chip hit") == len(expected)
    assert '<option value="soup" selected>' in html


def test_browse_paginates(filled, monkeypatch):
    settings, champ, _, ids = filled
    monkeypatch.setattr(webapp, "PER_PAGE", 7)
    client = client_for(settings)
    seen = []
    for page in range(1, 6):
        with db.get_engine(settings).connect() as conn:
            result = webapp.browse(conn, champ, page=page, per_page=7)
        seen += [c.image_id for c in result.cards]
        assert result.has_next == (page < 5)
    assert seen == sorted(ids, reverse=True)
    html = client.get("/browse", params={"page": 2, "tag": "cake"}).text
    assert "Page 2" in html and "previous" in html


def test_browse_other_model_and_unknown_tag(filled):
    settings, champ, old, _ = filled
    client = client_for(settings)
    html = client.get("/browse", params={"model": old}).text
    assert html.count('class="card"') == 5
    html = client.get("/browse", params={"tag": "pizza"}).text
    assert "is not a label of model version" in html and 'class="card"' not in html
    assert client.get("/browse", params={"min_p": 2}).status_code == 422
    assert client.get("/browse", params={"page": 0}).status_code == 200  # clamped to page 1


def test_browse_without_predictions(sqlite_settings):
    html = client_for(sqlite_settings).get("/browse").text
    assert "No predictions yet" in html


def test_thumbnail_served_from_the_resized_store(filled):
    settings, _, _, ids = filled
    client = client_for(settings)
    r = client.get(f"/thumb/{ids[0]}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    assert client.get("/thumb/999999").status_code == 404
    assert client.get("/thumb/abc").status_code == 422


def test_thumbnail_refuses_paths_outside_the_store(settings, tmp_path):
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"\xff\xd8secret")
    (settings.resized_dir / "ab").mkdir(parents=True)
    (settings.resized_dir / "ab" / "link.jpg").symlink_to(outside)
    (settings.data_dir / "models").mkdir(parents=True)
    (settings.data_dir / "models" / "x.jpg").write_bytes(b"\xff\xd8model")
    bad = [str(outside), "store/resized/../../../secret.jpg", "store/resized/ab/link.jpg", "models/x.jpg"]
    with db.get_engine(settings).begin() as conn:
        conn.execute(insert(t.images), [
            {"sha256": f"{i:064x}", "post": "p", "source_path": f"/d/{i}", "format": "JPEG", "width": 1,
             "height": 1, "original_path": "o", "resized_path": rel} for i, rel in enumerate(bad)])
        ids = [r[0] for r in conn.execute(text("select id from images order by id"))]
    client = client_for(settings)
    for image_id in ids:
        r = client.get(f"/thumb/{image_id}")
        assert r.status_code == 404 and b"secret" not in r.content and b"model" not in r.content


@pytest.mark.parametrize("path", [
    "/reports/1/../../etc/passwd",
    "/reports/1/..%2f..%2f..%2fetc%2fpasswd",
    "/reports/1/%2e%2e%2f%2e%2e%2fsecret.txt",
    "/reports/1/%2e%2e",
    "/reports/1/.hidden",
    "/reports/1/%2fetc%2fpasswd",
    "/reports/1/..%5c..%5csecret.txt",
    "/reports/..%2f..%2f/secret.txt",
    "/reports/1/link.txt",
    "/reports/1/loop.txt",
    "/models/..%2f..%2fsecret.txt/report",
])
def test_report_files_refuse_traversal(sqlite_settings, tmp_path, path):
    settings = sqlite_settings
    (tmp_path / "secret.txt").write_text("secret")
    (settings.data_dir / "secret.txt").write_text("secret")
    folder = settings.reports_dir / "1"
    folder.mkdir(parents=True)
    (folder / "link.txt").symlink_to(tmp_path / "secret.txt")
    (folder / "loop.txt").symlink_to(folder / "loop.txt")
    (folder / ".hidden").write_text("secret")
    r = client_for(settings).get(path)
    assert r.status_code in (400, 404, 422) and "secret" not in r.text


def test_raw_traversal_paths_reach_the_app_unnormalised(sqlite_settings, tmp_path):
    """The client normalises ``..``; send the raw path through ASGI to be sure the app refuses it."""
    import asyncio

    (sqlite_settings.data_dir / "secret.txt").write_text("secret")
    app = webapp.create_app(sqlite_settings)
    app.dependency_overrides[webapp.airflow_auth()] = lambda: "tester"
    for raw in ("/reports/1/../../secret.txt", "/reports/1/..", "/reports/1/../1/../../secret.txt"):
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message, sent=sent):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": raw, "raw_path": raw.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"test")], "server": ("test", 80), "client": ("test", 1)}
        asyncio.run(app(scope, receive, send))
        status = next(m["status"] for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        assert status in (400, 404) and b"secret" not in body, raw


def test_report_file_helper_refuses_absolute_and_dotted_names(sqlite_settings):
    s = sqlite_settings
    (s.reports_dir / "1").mkdir(parents=True)
    (s.reports_dir / "1" / "ok.png").write_bytes(b"x")
    assert webapp.report_file(s, 1, "ok.png") is not None
    for name in ("/etc/passwd", "../1/ok.png", "..", ".", "", "a/b", "ok.png\x00", "ok.png/"):
        assert webapp.report_file(s, 1, name) is None, name


def test_every_route_requires_an_airflow_user(filled):
    """Without the override, Airflow's own dependency refuses a request without a token."""
    settings, champ, _, ids = filled
    client = TestClient(webapp.create_app(settings))
    for path in ("/", "/browse", f"/thumb/{ids[0]}", f"/models/{champ}/report",
                 f"/reports/{champ}/fig4_conv1_filters.png", "/suggestions", "/suggestions/grouping.yaml"):
        r = client.get(path)
        assert r.status_code == 401, path
        assert "champion" not in r.text
    r = client.post("/correct", data={"image_id": ids[0], "model": champ, "action": "confirmed:soup"})
    assert r.status_code == 401  # corrections too
    app = webapp.create_app(settings)
    for route in app.routes:
        if getattr(route, "methods", None) and route.path != "/correct":
            assert route.methods <= {"GET", "HEAD"}, route.path  # read-only but for corrections


@pytest.mark.slow
def test_only_the_index_serves_filtered_pages(sqlite_settings):
    """100,000 prediction rows: the filtered page and its count read the (model, label, probability) index."""
    s = sqlite_settings
    engine = db.get_engine(s)
    with engine.begin() as conn:
        vid = vocab_row(conn, tuple(f"label{i:02d}" for i in range(40)))
        mid = model_row(conn, vid, "champion")
        ids = plain_images(s, conn, 50_000, files=False)
        predict_all(conn, mid, ids, labels=tuple(f"label{i:02d}" for i in range(40)))
        assert conn.execute(text("select count(*) from predictions")).scalar() == 100_000
    with engine.connect() as conn:
        statements = webapp.browse_statement(mid, "label07", 0.3, 49, 480), webapp.count_statement(mid, "label07", 0.3)
        for stmt in statements:
            compiled = stmt.compile(engine, compile_kwargs={"literal_binds": True})
            plan = " ".join(str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
            assert "USING INDEX ix_predictions_label_probability" in plan or \
                "USING COVERING INDEX ix_predictions_label_probability" in plan, plan
            assert "SCAN predictions" not in plan, plan
        page = webapp.browse(conn, mid, "label07", 0.3, page=3, per_page=48)
        assert len(page.cards) == 48 and page.total and page.total > 48 * 3
        probs = [dict(c.tags)["label07"] for c in page.cards]
        assert probs == sorted(probs, reverse=True) and min(probs) >= 0.3
        newest = webapp.browse(conn, mid, "", 0.0, page=1, per_page=48)
        assert [c.image_id for c in newest.cards] == ids[::-1][:48]
        # unfiltered: SQLite walks the images newest post first on their index, no sort of every image
        compiled = webapp.browse_statement(mid, "", 0.0, 49, 480).compile(engine,
                                                                          compile_kwargs={"literal_binds": True})
        plan = " ".join(str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
        assert "ix_images_taken_at" in plan and "TEMP B-TREE" not in plan, plan


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_plan_uses_the_index(pg_settings):
    s = pg_settings
    engine = db.get_engine(s)
    labels = tuple(f"label{i:02d}" for i in range(40))
    with engine.begin() as conn:
        mid = model_row(conn, vocab_row(conn, labels), "champion")
        predict_all(conn, mid, plain_images(s, conn, 20_000, files=False), labels=labels)
        conn.execute(text("ANALYZE"))
    with engine.connect() as conn:
        compiled = webapp.browse_statement(mid, "label07", 0.3, 49, 48).compile(
            engine, compile_kwargs={"literal_binds": True})
        plan = "\n".join(r[0] for r in conn.execute(text(f"EXPLAIN {compiled}")))
    assert "ix_predictions_label_probability" in plan, plan


def test_plugin_declares_the_app_and_a_nav_entry():
    import importlib.util
    from pathlib import Path

    from airflow.api_fastapi.app import RESERVED_URL_PREFIXES
    from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse, FastAPIAppResponse
    from airflow.plugins_manager import AirflowPlugin
    from fastapi import FastAPI

    path = Path(__file__).resolve().parents[1] / "plugins" / "instatag_plugin.py"
    spec = importlib.util.spec_from_file_location("instatag_plugin_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plugin = module.InstatagPlugin
    assert issubclass(plugin, AirflowPlugin) and plugin.name == "instatag"
    (entry,) = plugin.fastapi_apps
    assert isinstance(entry["app"], FastAPI)
    assert not any(entry["url_prefix"].startswith(p) for p in RESERVED_URL_PREFIXES)
    FastAPIAppResponse(**{**entry, "app": "x"})
    (view,) = plugin.external_views
    ExternalViewResponse(**view)
    assert view["name"] == "instatag" and view["destination"] == "nav" and view["href"] == entry["url_prefix"] + "/"


# --------------------------------------------------------------------------- corrections
def correction(client, image_id, model, action, csrf=None, label="", headers=None, user="tester"):
    data = {"image_id": image_id, "model": model, "action": action, "label": label,
            "csrf": webapp.csrf_token(SECRET, user) if csrf is None else csrf, "back": "order=review&evil=1"}
    return client.post("/correct", data=data, headers=headers or {}, follow_redirects=False)


def corrections_rows(settings):
    with db.get_engine(settings).connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            'select image_id, label, verdict, "user", model_version_id from label_corrections order by id'))]


def test_an_editor_confirms_rejects_and_adds_labels_and_sees_them(filled):
    settings, champ, _, ids = filled
    client = client_for(settings, editor=True)
    html = client.get("/browse").text
    assert html.count('<form class="correct"') == 30 and webapp.csrf_token(SECRET, "tester") in html
    r = correction(client, ids[0], champ, "confirmed:soup")
    assert r.status_code == 303
    assert r.headers["location"] == f"/browse?order=review&saved={ids[0]}#image-{ids[0]}"  # evil=1 dropped
    assert correction(client, ids[0], champ, "rejected:cake").status_code == 303
    assert correction(client, ids[1], champ, "confirmed:", label="pie").status_code == 303  # add a missing one
    assert correction(client, ids[0], champ, "rejected:soup").status_code == 303  # a change of mind
    assert corrections_rows(settings) == [(ids[0], "soup", "confirmed", "tester", champ),
                                          (ids[0], "cake", "rejected", "tester", champ),
                                          (ids[1], "pie", "confirmed", "tester", champ),
                                          (ids[0], "soup", "rejected", "tester", champ)]  # append-only history
    html = client.get(f"/browse?saved={ids[0]}").text
    assert f"Correction of image #{ids[0]} stored" in html
    card = html[html.index(f'id="image-{ids[0]}"'):html.index(f'id="image-{ids[1]}"')] if ids[1] < ids[0] else \
        html[html.index(f'id="image-{ids[0]}"'):]
    assert 'class="verdict rejected" data-label="soup"' in card and 'class="verdict rejected" data-label="cake"' in card


def test_a_correction_outside_the_vocabulary_or_malformed_is_refused_with_a_message(filled):
    settings, champ, _, ids = filled
    client = client_for(settings, editor=True)
    r = correction(client, ids[0], champ, "confirmed:tofu")
    assert r.status_code == 400 and "Correction refused: &#39;tofu&#39; is not a label of the vocabulary" in r.text
    r = correction(client, ids[0], champ, "maybe:soup")
    assert r.status_code == 400 and "verdict &#39;maybe&#39; is not one of confirmed, rejected" in r.text
    r = correction(client, ids[0], champ, "confirmed:")  # "add" with no label chosen: the page says so
    assert r.status_code == 303 and r.headers["location"] == f"/browse?order=review&nolabel={ids[0]}#image-{ids[0]}"
    assert f"Nothing stored for image #{ids[0]}: choose a label" in client.get(r.headers["location"]).text
    assert correction(client, 99999, champ, "confirmed:soup").status_code == 400
    assert correction(client, ids[0], 999, "confirmed:soup").status_code == 400
    assert corrections_rows(settings) == []


def test_a_read_only_user_sees_no_controls_and_cannot_write(filled):
    settings, champ, _, ids = filled
    with db.get_engine(settings).begin() as conn:
        from instatag import feedback

        feedback.record(conn, ids[0], "soup", "confirmed", "ann", champ)
    client = client_for(settings, editor=False)
    html = client.get("/browse").text
    assert '<form class="correct"' not in html and 'name="csrf"' not in html
    assert 'class="verdict confirmed" data-label="soup"' in html  # verdicts are shown to everyone
    r = correction(client, ids[0], champ, "rejected:soup")
    assert r.status_code == 403 and "edit rights on the instatag DAGs" in r.text
    assert len(corrections_rows(settings)) == 1


def test_a_forged_cross_site_post_is_refused(filled):
    settings, champ, _, ids = filled
    client = client_for(settings, editor=True)
    assert correction(client, ids[0], champ, "confirmed:soup", csrf="").status_code == 403
    assert correction(client, ids[0], champ, "confirmed:soup", csrf=webapp.csrf_token(SECRET, "mallory")
                      ).status_code == 403  # another user's token
    assert correction(client, ids[0], champ, "confirmed:soup", csrf=webapp.csrf_token(b"other key", "tester")
                      ).status_code == 403
    r = correction(client, ids[0], champ, "confirmed:soup", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "evil.example" in r.text
    assert correction(client, ids[0], champ, "confirmed:soup", headers={"Sec-Fetch-Site": "cross-site"}
                      ).status_code == 403
    assert corrections_rows(settings) == []
    ok = correction(client, ids[0], champ, "confirmed:soup",
                    headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"})
    assert ok.status_code == 303 and len(corrections_rows(settings)) == 1


@pytest.mark.parametrize(("role", "may"), [("viewer", False), ("user", True), ("op", True), ("admin", True)])
def test_edit_rights_come_from_the_auth_manager(monkeypatch, role, may):
    """The real dependency with Airflow's SimpleAuthManager: viewers may not edit DAGs, users may."""
    import airflow.api_fastapi.app as airflow_app
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False")
    monkeypatch.setattr(airflow_app, "get_auth_manager", lambda: SimpleAuthManager())
    assert webapp.edit_rights()(user=SimpleAuthManagerUser(username="u", role=role)) is may


def test_review_queue_puts_the_largest_disagreement_first(settings):
    """Uploader labels against predictions: a probable tag the uploader did not give, an uploader's label the
    model finds improbable or did not predict; corrected images last."""
    with db.get_engine(settings).begin() as conn:
        vid = vocab_row(conn, LABELS)
        champ = model_row(conn, vid, "champion")
        a, b, c, d = plain_images(settings, conn, 4, files=False)
        rows = [(a, "soup", 0.9, 1), (a, "cake", 0.05, 2),  # uploader gave cake only: soup 0.9 missed -> 0.95
                (b, "pie", 0.6, 1),  # uploader gave pie: agree; soup not predicted -> 1 - 0 = 1.0
                (c, "salad", 0.7, 1),  # uploader gave salad: 0.3
                (d, "cake", 0.99, 1)]  # uploader gave nothing, but d is corrected: last
        conn.execute(insert(t.predictions), [{"model_version_id": champ, "image_id": i, "label": lb,
                                              "probability": p, "rank": r} for i, lb, p, r in rows])
        conn.execute(insert(t.image_labels), [{"vocab_version_id": vid, "image_id": i, "label": lb}
                                              for i, lb in ((a, "cake"), (b, "pie"), (b, "soup"), (c, "salad"))])
        from instatag import feedback

        feedback.record(conn, d, "cake", "confirmed", "ann", champ)
    with db.get_engine(settings).connect() as conn:
        page = webapp.browse(conn, champ, order="review")
    assert [c.image_id for c in page.cards] == [b, a, c, d]
    assert [round(c.disagreement, 2) for c in page.cards] == [1.0, 0.95, 0.3, 0.99]
    assert page.cards[0].uploader == ("pie", "soup")
    html = client_for(settings).get("/browse?order=review").text
    assert "Needs review" in html and html.index(f'id="image-{b}"') < html.index(f'id="image-{a}"')
    with db.get_engine(settings).connect() as conn:  # with a tag: only images predicted with it
        assert [c.image_id for c in webapp.browse(conn, champ, tag="soup", order="review").cards] == [a]


def test_review_queue_reads_every_labels_stored_probability(settings):
    """The stored predictions keep only the tags over threshold and the top 2: an uploader's label missing
    there is not probability 0 when scoring stored its probability (``image_probabilities``), so the queue
    does not saturate at 1.00; equal disagreements go newest post first."""
    from instatag import drops

    with db.get_engine(settings).begin() as conn:
        vid = vocab_row(conn, LABELS)
        champ = model_row(conn, vid, "champion")
        a, b, c, d, e = plain_images(settings, conn, 5, files=False)
        for i, day in ((a, 1), (b, 2), (c, 3), (d, 4), (e, 5)):
            conn.execute(t.images.update().where(t.images.c.id == i).values(taken_at=datetime(2026, 11, day,
                                                                                               tzinfo=UTC)))
        # every image: the uploader gave cake; the stored predictions hold soup and pie only
        conn.execute(insert(t.predictions), [{"model_version_id": champ, "image_id": i, "label": lb,
                                              "probability": p, "rank": r}
                                             for i in (a, b, c, d, e)
                                             for lb, p, r in (("soup", 0.3, 1), ("pie", 0.2, 2))])
        conn.execute(insert(t.image_labels), [{"vocab_version_id": vid, "image_id": i, "label": "cake"}
                                              for i in (a, b, c, d, e)])
    # LABELS: cake, pie, salad, soup; e has no stored probabilities: cake counts as 0 there
    drops.store_probabilities(settings, champ, [a, b, c, d], [[0.05, 0.2, 0.01, 0.3],   # 1 - 0.05 = 0.95
                                                              [0.6, 0.2, 0.01, 0.3],    # 1 - 0.6 = 0.4
                                                              [0.3, 0.2, 0.01, 0.25],   # 0.7
                                                              [0.3, 0.2, 0.01, 0.25]])  # 0.7, newer than c
    with db.get_engine(settings).connect() as conn:
        page = webapp.browse(conn, champ, order="review")
    assert [(c_.image_id, round(c_.disagreement, 2)) for c_ in page.cards] == [(e, 1.0), (a, 0.95), (d, 0.7),
                                                                              (c, 0.7), (b, 0.4)]


def test_after_a_correction_in_the_review_queue_the_corrected_image_is_on_the_page(sqlite_settings):
    """A corrected image goes to the end of the queue (here page 2); the page the redirect lands on shows it
    at the top with its new verdict, once, and says what happened."""
    s = sqlite_settings
    with db.get_engine(s).begin() as conn:
        champ = model_row(conn, vocab_row(conn, LABELS), "champion")
        ids = plain_images(s, conn, 60, files=False)
        predict_all(conn, champ, ids, seed=3)
    client = client_for(s, editor=True)
    with db.get_engine(s).connect() as conn:
        first = webapp.browse(conn, champ, order="review").cards[0]
    label = first.tags[0][0]
    r = correction(client, first.image_id, champ, f"rejected:{label}")
    assert r.status_code == 303
    with db.get_engine(s).connect() as conn:  # the queue moved it off page 1
        assert first.image_id not in {c.image_id for c in webapp.browse(conn, champ, order="review").cards}
    html = client.get(r.headers["location"]).text
    banner = html[html.index('id="saved"'):html.index('id="results"')]
    assert f"Correction of image #{first.image_id} stored; its verdicts" in banner and f"✗ {label}" in banner
    assert "end of the queue" in banner
    card = banner[banner.index(f'id="image-{first.image_id}"'):]
    assert f'class="verdict rejected" data-label="{label}"' in card and '<form class="correct"' in card
    assert html.count(f'id="image-{first.image_id}"') == 1


def test_browse_page_numbers_are_clamped_and_the_order_says_what_it_sorts_by(filled):
    settings, champ, _, ids = filled
    client = client_for(settings)
    for page in (0, -3):
        r = client.get("/browse", params={"page": page})
        assert r.status_code == 200 and "Page 1." in r.text and f'id="image-{ids[-1]}"' in r.text
    assert "Page 100000." in client.get("/browse", params={"page": 10**9}).text
    html = client.get("/browse", params={"tag": "cake"}).text
    assert "most probably “cake” first</option>" in html and "newest post first</option>" not in html
    assert "newest post first</option>" in client.get("/browse").text
