"""The schema: migrations, views, round trips on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from builders import image_row, model_row, post_row, vocab_row
from sqlalchemy import func, insert, inspect, select, text

from instatag import db
from instatag import schema as t


def _image(conn, sha="a" * 64, post="2026-11-01_06-01-38_UTC"):
    """An image and its first post, as ingest writes them."""
    return image_row(conn, sha, post, width=10, height=8, taken_at=datetime(2026, 11, 1, tzinfo=UTC), caption="#cake")


@pytest.mark.pg_drivers
def test_upgrade_creates_every_table_and_view(settings):
    engine = db.get_engine(settings)
    insp = inspect(engine)
    assert set(t.metadata.tables) <= set(insp.get_table_names())
    assert {"predicted_tags", "uploader_labels", "label_verdicts"} <= set(insp.get_view_names())


def test_migrations_match_schema_py(settings):
    """schema.py is the source of truth: a change to it without a migration fails here."""
    with db.get_engine(settings).connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), t.metadata)
    assert diffs == []


def test_upgrade_twice_changes_nothing(settings):
    engine = db.get_engine(settings)
    before = db.current_revision(engine)
    with engine.begin() as conn:
        image_id = _image(conn)
    assert db.upgrade(settings) == before
    with engine.connect() as conn:
        assert conn.execute(select(t.images.c.id)).scalars().all() == [image_id]
        assert set(inspect(conn).get_view_names()) >= {"predicted_tags"}


def test_round_trip_and_predicted_tags_shows_only_the_champion(settings):
    engine = db.get_engine(settings)
    with engine.begin() as conn:
        img = _image(conn)
        vocab = vocab_row(conn, config={"min_count": 1})
        champion = model_row(conn, vocab, "champion")
        retired = model_row(conn, vocab, "retired")
        conn.execute(insert(t.predictions), [
            {"model_version_id": champion, "image_id": img, "label": "cake", "probability": 0.9, "rank": 1},
            {"model_version_id": champion, "image_id": img, "label": "pie", "probability": 0.4, "rank": 2},
            {"model_version_id": retired, "image_id": img, "label": "soup", "probability": 0.8, "rank": 1},
        ])
    with engine.connect() as conn:
        rows = conn.execute(text(
            "select image_id, post, label, probability, rank, model_version from predicted_tags order by rank"
        )).all()
        stored = conn.execute(select(t.images.c.taken_at, t.images.c.caption)).one()
    assert [tuple(r) for r in rows] == [
        (img, "2026-11-01_06-01-38_UTC", "cake", 0.9, 1, champion),
        (img, "2026-11-01_06-01-38_UTC", "pie", 0.4, 2, champion),
    ]
    assert stored.caption == "#cake" and stored.taken_at.replace(tzinfo=UTC).year == 2026


def test_a_repost_finds_its_predicted_tags_by_its_own_name(settings):
    """predicted_tags has one row per post and label: a re-post's name finds the image's tags, the
    same drop ingested from two folders (two posts of one name) gives no duplicate rows, and the
    example queries still count images."""
    engine = db.get_engine(settings)
    with engine.begin() as conn:
        img = _image(conn)  # first posted as 2026-11-01_06-01-38_UTC
        post_row(conn, img, "2026-11-20_09-00-00_UTC", "/drop-2/2026-11-20_09-00-00_UTC.jpg",
              datetime(2026, 11, 20, 9, tzinfo=UTC))
        post_row(conn, img, "2026-11-20_09-00-00_UTC", "/drop-copy/2026-11-20_09-00-00_UTC.jpg")
        other = _image(conn, sha="b" * 64, post="2026-11-02_07-00-00_UTC")
        champion = model_row(conn, vocab_row(conn, config={"min_count": 1}), "champion")
        conn.execute(insert(t.predictions), [
            {"model_version_id": champion, "image_id": img, "label": "cake", "probability": 0.9, "rank": 1},
            {"model_version_id": champion, "image_id": img, "label": "pie", "probability": 0.4, "rank": 2},
            {"model_version_id": champion, "image_id": other, "label": "cake", "probability": 0.7, "rank": 1},
        ])
    with engine.connect() as conn:
        by_name = conn.execute(text("select image_id, label, rank, posted_at from predicted_tags "
                                    "where post = :post order by rank"), {"post": "2026-11-20_09-00-00_UTC"}).all()
        first = conn.execute(text("select label from predicted_tags where post = '2026-11-01_06-01-38_UTC' "
                                  "order by rank")).scalars().all()
        rows = conn.execute(text("select count(*) from predicted_tags")).scalar()
        images = conn.execute(text("select count(distinct image_id) from predicted_tags")).scalar()
        from instatag.db import SQL_DIR

        query = (SQL_DIR / "examples" / "tag_cooccurrence.sql").read_text()
        pairs = conn.execute(text(query)).all()
        query = (SQL_DIR / "examples" / "top_tags_since.sql").read_text()
        top = {r.label: (r.images, r.posts) for r in conn.execute(text(query), {"since": "2000-01-01"})}
        query = (SQL_DIR / "examples" / "tags_of_post.sql").read_text()
        of_post = conn.execute(text(query), {"post": "2026-11-20_09-00-00_UTC"}).all()
    assert [(r.image_id, r.label, r.rank) for r in by_name] == [(img, "cake", 1), (img, "pie", 2)]
    assert str(by_name[0].posted_at).startswith("2026-11-20 09:00")
    assert first == ["cake", "pie"]
    assert rows == 5 and images == 2  # 2 posts of the re-posted image x 2 tags, 1 x 1
    assert [tuple(r) for r in pairs] == [("cake", "pie", 1)]
    assert top == {"cake": (2, 3), "pie": (1, 2)}
    assert [(r.rank, r.label) for r in of_post] == [(1, "cake"), (2, "pie")]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_query_by_post_name_reads_the_post_index(backend, request):
    """``WHERE post = ...`` on predicted_tags starts from ix_posts_post, not from every prediction."""
    s = request.getfixturevalue("sqlite_settings" if backend == "sqlite" else "pg_settings")
    engine = db.get_engine(s)
    with engine.begin() as conn:
        champion = model_row(conn, vocab_row(conn, config={"min_count": 1}), "champion")
        n = 3000
        conn.execute(insert(t.images), [
            {"sha256": f"{i:064x}", "post": f"post-{i}", "source_path": f"/d/{i}.jpg", "format": "JPEG", "width": 1,
             "height": 1, "original_path": "o", "resized_path": "r"} for i in range(n)])
        ids = conn.execute(select(t.images.c.id).order_by(t.images.c.id)).scalars().all()
        conn.execute(insert(t.posts), [{"image_id": i, "post": f"post-{k}", "source_path": f"/d/{k}.jpg"}
                                       for k, i in enumerate(ids)])
        conn.execute(insert(t.predictions), [
            {"model_version_id": champion, "image_id": i, "label": label, "probability": 0.5, "rank": r}
            for i in ids for r, label in enumerate(("cake", "pie"), 1)])
        if backend == "postgres":
            conn.execute(text("ANALYZE"))
    explain = "EXPLAIN QUERY PLAN " if backend == "sqlite" else "EXPLAIN "
    with engine.connect() as conn:
        plan = " ".join(str(r[-1]) for r in conn.execute(
            text(explain + "select label from predicted_tags where post = 'post-7'")))
    assert "ix_posts_post" in plan, plan


def test_unique_content_hash_is_enforced(settings):
    from sqlalchemy.exc import IntegrityError

    engine = db.get_engine(settings)
    with engine.begin() as conn:
        _image(conn)
    with pytest.raises(IntegrityError), engine.begin() as conn:
        _image(conn, post="other")


def test_example_queries_run(settings):
    """Each query of sql/examples on one image of the champion, tagged cake (0.9) and pie (0.6)."""
    from instatag.db import SQL_DIR

    post = "2026-11-01_06-01-38_UTC"
    with db.get_engine(settings).begin() as conn:
        img = _image(conn, post=post)
        champion = model_row(conn, vocab_row(conn, ["cake", "pie"]), "champion")
        scored = [("cake", 0.9), ("pie", 0.6)]
        conn.execute(insert(t.predictions), [
            {"model_version_id": champion, "image_id": img, "label": label, "probability": p, "rank": r,
             "scored_at": datetime(2026, 11, 2, tzinfo=UTC)} for r, (label, p) in enumerate(scored, 1)])
    params = {"since": "2000-01-01", "tag": "cake", "min_probability": 0.5, "post": post}
    got = {}
    with db.get_engine(settings).connect() as conn:
        for path in sorted((SQL_DIR / "examples").glob("*.sql")):
            sql = path.read_text()
            got[path.stem] = [tuple(r) for r in conn.execute(text(sql), {k: v for k, v in params.items()
                                                                         if f":{k}" in sql})]
    assert got["images_with_tag"] == [(img, post, pytest.approx(0.9), 1)]
    assert got["tag_cooccurrence"] == [("cake", "pie", 1)]
    assert [(r[0], r[1], r[2], r[3]) for r in got["tags_of_post"]] == [(post, img, 1, "cake"), (post, img, 2, "pie")]
    assert [(label, n_images, n_posts) for label, n_images, n_posts, _ in got["top_tags_since"]] == [
        ("cake", 1, 1), ("pie", 1, 1)]


@pytest.mark.pg_drivers
def test_copy_rows_round_trips_nulls_empty_text_and_escapes(settings):
    """COPY (PostgreSQL) and executemany (SQLite) store the same values: NULL stays NULL, the
    empty string stays empty, tabs, newlines, backslashes and a literal \\N survive."""
    engine = db.get_engine(settings)
    captions = [None, "", "tab\there", "line\nbreak\r\n", "back\\slash", "\\N", "#café #디저트"]
    with engine.begin() as conn:
        rows = [(f"{i:064x}", f"p{i}", f"/drop/p{i}.jpg", "JPEG", 10, 8, datetime(2026, 11, 1, tzinfo=UTC), caption,
                 f"store/originals/{i}.jpg", f"store/resized/{i}.jpg") for i, caption in enumerate(captions)]
        columns = ("sha256", "post", "source_path", "format", "width", "height", "taken_at", "caption",
                   "original_path", "resized_path")
        assert db.copy_rows(conn, t.images, rows, columns) == len(rows)
        assert db.copy_rows(conn, t.images, [], columns) == 0
    with engine.connect() as conn:
        got = conn.execute(select(t.images.c.caption, t.images.c.taken_at).order_by(t.images.c.sha256)).all()
    assert [c for c, _ in got] == captions
    assert all(when.replace(tzinfo=UTC) == datetime(2026, 11, 1, tzinfo=UTC) for _, when in got)


def test_upgrading_an_old_sqlite_database_keeps_its_hashtags(tmp_path):
    """The migration that adds posts.ingest_run_id rebuilds posts on SQLite; with foreign keys on,
    dropping the old table deleted every post_hashtags row (ON DELETE CASCADE), and the views that
    read posts blocked the rebuild."""
    import sqlite3

    from instatag import db
    from instatag.settings import load_settings

    s = load_settings(env={}, data_dir=tmp_path)
    db.upgrade(s, "37ad776cf0f9")
    with sqlite3.connect(tmp_path / "instatag.db") as c:
        c.execute("insert into images (id, sha256, post, source_path, format, width, height, original_path, "
                  "resized_path) values (1, 'a', 'p', '/x', 'JPEG', 1, 1, 'o', 'r')")
        c.execute("insert into posts (id, image_id, post, source_path) values (1, 1, 'p', '/x')")
        c.execute("insert into post_hashtags (post_id, tag, position, is_scrape_tag) values (1, 'cake', 0, 0)")
    db.upgrade(s)
    with sqlite3.connect(tmp_path / "instatag.db") as c:
        assert c.execute("select post_id, tag from post_hashtags").fetchall() == [(1, "cake")]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_valid_pct_migration_backfills_from_the_models_and_keeps_labels_and_thresholds(backend, request,
                                                                                           tmp_path):
    """Revision b7d3c9a1e042 adds vocab_versions.valid_pct without rebuilding the table (a rebuild would
    cascade-delete vocab_labels and image_labels on SQLite): a version gets the share its models were
    trained with (the newest model's when they differ), else 0.2; a model evaluated before keeps the
    thresholds its evaluation stored, now read by the registry."""
    import sqlalchemy as sa

    from instatag import registry
    from instatag.settings import load_settings

    url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    s = load_settings(env={}, data_dir=tmp_path, **({"database_url": url} if url else {}))
    db.upgrade(s, "f1ea2748b424")
    # the tables as they were at f1ea2748b424 (schema.py's vocab_versions has valid_pct now)
    vocab = sa.table("vocab_versions", *(sa.column(c) for c in (
        "id", "config_sha256", "n_posts", "n_images", "n_unlabelled", "n_raw_tags", "n_lemmas", "n_labels")),
        sa.column("config", sa.JSON), sa.column("stats", sa.JSON))
    models = sa.table("model_versions", *(sa.column(c) for c in ("id", "vocab_version_id", "arch", "artifact_path",
                                                                  "sha256", "status")),
                      sa.column("params", sa.JSON), sa.column("metrics", sa.JSON))
    engine = db.get_engine(s)
    with engine.begin() as conn:
        conn.execute(sa.insert(vocab), [{"id": v, "config": {}, "config_sha256": "c", "n_posts": 1, "n_images": 1,
                                         "n_unlabelled": 0, "n_raw_tags": 1, "n_lemmas": 1, "n_labels": 1,
                                         "stats": {}} for v in (1, 2, 3, 4)])
        conn.execute(insert(t.images).values(id=1, sha256="a", post="p", source_path="/x", format="JPEG", width=1,
                                             height=1, original_path="o", resized_path="r"))
        conn.execute(insert(t.vocab_labels).values(vocab_version_id=1, label="cake", idx=0, count=1,
                                                   members=["cake"]))
        conn.execute(insert(t.image_labels).values(vocab_version_id=1, image_id=1, label="cake"))
        conn.execute(sa.insert(models), [
            {"id": mid, "vocab_version_id": v, "arch": "resnet18", "artifact_path": "m", "sha256": "0",
             "status": "candidate", "params": params, "metrics": m}
            for mid, v, params, m in ((1, 1, {"valid_pct": 0.3}, {"global_threshold": 0.4, "model": {}}),
                                      (2, 1, {"valid_pct": 0.3}, None), (3, 3, {"valid_pct": 0.2}, None),
                                      (4, 3, {"valid_pct": 0.4}, None),
                                      (5, 4, {}, None))])  # 5: from before valid_pct was recorded
        conn.execute(insert(t.label_metrics).values(model_version_id=1, label="cake", support=1, threshold=0.25))
    db.upgrade(s)
    with engine.connect() as conn:
        shares = dict(conn.execute(select(t.vocab_versions.c.id, t.vocab_versions.c.valid_pct)).all())
        assert shares == {1: 0.3, 2: 0.2, 3: 0.4, 4: 0.2}
        assert conn.execute(select(func.count()).select_from(t.image_labels)).scalar() == 1
        assert conn.execute(select(func.count()).select_from(t.vocab_labels)).scalar() == 1
        assert registry.thresholds(conn, 1) == registry.Thresholds({"cake": 0.25}, 0.4)
        assert registry.thresholds(conn, 2) is None
    if backend == "postgres":  # the default only filled the old rows: a new one must state its share
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(sa.insert(vocab).values(id=9, config={}, config_sha256="c", n_posts=1, n_images=1,
                                                 n_unlabelled=0, n_raw_tags=1, n_lemmas=1, n_labels=1, stats={}))
