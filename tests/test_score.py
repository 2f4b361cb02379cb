"""Batch scoring on SQLite and PostgreSQL: rows, idempotent re-runs, atomic shards, shard coverage,
hash check, on generated images, a vocabulary and a tiny untrained resnet18 registered by hand (tests/builders.py)."""

from __future__ import annotations

import io
import random

import pytest
from builders import LABELS, add_images, add_model, add_vocab, make_champion, prediction_rows
from sqlalchemy import func, select, text

from instatag import cli, db, evaluate, modelfile, registry, score
from instatag import schema as t
from instatag.errors import UserError
from instatag.imagestore import resized_path
from instatag.sample import DISHES, draw


# --------------------------------------------------------------------------- tests
@pytest.mark.pg_drivers
def test_score_writes_ranked_tags_over_threshold_and_at_least_n(settings, tiny_model_dir):
    mid, images = make_champion(settings, tiny_model_dir)
    extra = add_images(settings, 4, seed=1, labelled=False)  # unlabelled images are scored too
    report = score.score(settings, request_number=2)
    assert (report.model_version_id, report.n_images, report.mode) == (mid, 28, "new")
    rows = prediction_rows(settings, mid)
    assert report.n_rows == len(rows)
    with db.get_engine(settings).connect() as conn:
        thresholds = registry.thresholds(conn, mid).per_label  # as the evaluation stored them
    assert set(thresholds) == set(LABELS)
    assert "thresholds" not in modelfile.read_meta(settings.data_dir / "models" / str(mid))
    by_image: dict[int, list] = {}
    for r in rows:
        by_image.setdefault(r.image_id, []).append(r)
    assert set(by_image) == {i for i, _, _ in images + extra}
    for tags in by_image.values():
        assert [r.rank for r in tags] == list(range(1, len(tags) + 1))
        assert [r.probability for r in tags] == sorted((r.probability for r in tags), reverse=True)
        assert len(tags) >= 2  # at least two labels; beyond the top two only labels over their threshold
        assert all(r.probability >= thresholds[r.label] for r in tags[2:])
    with db.get_engine(settings).connect() as conn:
        view = conn.execute(text("SELECT count(*) FROM predicted_tags")).scalar()
    assert view == len(rows)


def test_rank_1_is_the_most_probable_tag_unless_the_model_ranks_dominant_first(sqlite_settings, tiny_model_dir):
    """What train writes by default (ranking probability): rank 1 in predictions and predicted_tags is
    the most probable tag. A model trained with ranking dominant_first keeps that order."""
    from instatag import metrics, ranking

    s = sqlite_settings
    mid, images = make_champion(s, tiny_model_dir)
    folder = s.data_dir / "models" / str(mid)
    counts = {label: sum(label in lab for _, _, lab in images) for label in LABELS}
    order = [LABELS[j] for j in metrics.frequency_order(LABELS, [counts[lab] for lab in LABELS])]
    modelfile.update_meta(folder, ranking="probability", frequency_order=order)
    score.score(s)
    with db.get_engine(s).connect() as conn:
        first = dict(conn.execute(text("SELECT image_id, label FROM predicted_tags WHERE rank = 1")).all())
        best = dict(conn.execute(text(
            "SELECT image_id, label FROM predicted_tags t WHERE probability = "
            "(SELECT max(probability) FROM predicted_tags u WHERE u.image_id = t.image_id)")).all())
    assert len(first) == len(images) and first == best

    modelfile.update_meta(folder, ranking="dominant_first")
    score.score(s, new=False)
    from instatag.inference import Predictor

    predictor = Predictor.for_version(s, mid)
    probs = predictor.predict_paths([s.data_dir / resized_path(sha) for _, sha, _ in images])
    dominant = ranking.dominant_probs(probs, [LABELS.index(lab) for lab in order]).argmax(axis=1)
    with db.get_engine(s).connect() as conn:
        first = dict(conn.execute(text("SELECT image_id, label FROM predicted_tags WHERE rank = 1")).all())
    assert first == {image_id: LABELS[j] for (image_id, _, _), j in zip(images, dominant, strict=True)}
    assert first != best  # the two orders differ on these images


def test_a_reposts_own_name_finds_its_predicted_tags(settings, tiny_model_dir, tmp_path):
    """The road a user takes: ingest a drop where one photo was posted twice, score, and ask
    predicted_tags for the re-post by its name."""
    from instatag import ingest, promote

    drop = tmp_path / "drop"
    drop.mkdir()
    buf = io.BytesIO()
    draw(next(d for d in DISHES if d.name == "tomato_soup"), random.Random(5), size=48).save(buf, "JPEG")
    first, repost = "2026-11-01_06-00-00_UTC", "2026-11-20_09-30-00_UTC"
    for stamp in (first, repost):
        (drop / f"{stamp}.jpg").write_bytes(buf.getvalue())
        (drop / f"{stamp}.txt").write_text("#soup #tomato")
    report = ingest.ingest(settings, [drop], workers=1)
    assert (report.accepted, report.reposts) == (1, 1)
    with db.get_engine(settings).connect() as conn:
        image_id, sha = conn.execute(select(t.images.c.id, t.images.c.sha256)).one()
    mid = add_model(settings, add_vocab(settings, [(image_id, sha, ("soup", "tomato"))], valid_pct=0.999999),
                    tiny_model_dir)
    evaluate.evaluate(settings, mid)
    promote.promote(settings, mid, reason="test")
    score.score(settings)
    with db.get_engine(settings).connect() as conn:
        tags = {post: conn.execute(text("SELECT image_id, label, rank FROM predicted_tags WHERE post = :post "
                                        "ORDER BY rank"), {"post": post}).all() for post in (first, repost)}
    assert len(tags[repost]) >= 2 and tags[repost] == tags[first]
    assert {r.image_id for r in tags[repost]} == {image_id}


def test_rerun_new_is_a_no_op_and_all_replaces_without_duplicates(settings, tiny_model_dir):
    mid, images = make_champion(settings, tiny_model_dir)
    first = score.score(settings)
    before = prediction_rows(settings)
    again = score.score(settings)
    assert again.n_images == 0 and again.n_rows == 0
    assert prediction_rows(settings) == before
    again = score.score(settings, new=False, request_number=3)
    assert again.n_images == first.n_images
    after = prediction_rows(settings)
    assert len({(r.model_version_id, r.image_id, r.label) for r in after}) == len(after)
    assert all(sum(r.image_id == i for r in after) >= 3 for i, _, _ in images)  # replaced with 3 tags each
    # a new image is picked up by --new
    add_images(settings, 1, seed=7, labelled=False)
    assert score.score(settings).n_images == 1


def test_shards_partition_the_images(settings, tiny_model_dir):
    mid, images = make_champion(settings, tiny_model_dir, n=20)
    ids = [i for i, _, _ in images]
    shards = [{i for i, _ in score.shard_images(settings, mid, (k, 3), new=True)} for k in range(3)]
    assert sorted(i for s in shards for i in s) == sorted(ids)  # every image exactly once
    assert all(i % 3 == k for k, s in enumerate(shards) for i in s)
    assert sum(score.score(settings, shard=(k, 3)).n_images for k in range(3)) == len(ids)
    assert {r.image_id for r in prediction_rows(settings)} == set(ids)
    assert all(not score.shard_images(settings, mid, (k, 3), new=True) for k in range(3))


def test_shards_load_the_model_once_and_log_progress(sqlite_settings, tiny_model_dir, caplog, monkeypatch):
    """Shards in one process share the model loaded (and verified) once; the log shows each shard's
    images scored so far at most every progress.EVERY_S seconds (here 0: after every batch)."""
    import logging

    from instatag import progress
    from instatag.inference import Predictor

    s = sqlite_settings
    mid, images = make_champion(s, tiny_model_dir)  # evaluate loads the model; its thresholds go to the database
    loads = []
    real_load = modelfile.load
    monkeypatch.setattr(modelfile, "load", lambda *a: loads.append(a) or real_load(*a))
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    caplog.set_level(logging.INFO, "instatag")
    reports = [score.score(s, shard=(k, 2), batch_size=4) for k in range(2)]
    assert len(loads) == 0  # the files are as evaluate loaded them: reused, not read and hashed again
    assert Predictor.for_version(s, mid) is Predictor.for_version(s, mid) and len(loads) == 0
    for k, report in enumerate(reports):
        n = report.n_images
        assert n == sum(i % 2 == k for i, _, _ in images) == 12
        lines = [m for m in caplog.messages if m.startswith(f"scoring shard {k}/2: ")]
        assert [m.split(",")[0] for m in lines] == [f"scoring shard {k}/2: {j}/{n} images" for j in (4, 8, 12)] + [
            f"scoring shard {k}/2: done"]
        assert f"shard {k}/2: {n} images to score with model version {mid} (loaded in " in caplog.text


@pytest.mark.parametrize("mode_all", [False, True], ids=["new", "all"])
def test_failure_inside_a_shard_leaves_no_partial_rows(settings, tiny_model_dir, monkeypatch, mode_all):
    mid, images = make_champion(settings, tiny_model_dir)
    if mode_all:
        score.score(settings, shard=(0, 2))
    before = prediction_rows(settings)
    real_rows_for = score.rows_for

    def failing_rows(*args):
        for n, row in enumerate(real_rows_for(*args)):
            if n == 7:
                raise RuntimeError("worker killed")
            yield row

    monkeypatch.setattr(score, "WRITE_CHUNK", 3)  # rows 0-5 are already written when it fails
    monkeypatch.setattr(score, "rows_for", failing_rows)
    with pytest.raises(RuntimeError, match="worker killed"):
        score.score(settings, new=not mode_all, shard=(0, 2), request_number=3)
    assert prediction_rows(settings) == before  # nothing of the failed shard, old rows intact
    monkeypatch.setattr(score, "rows_for", real_rows_for)
    score.score(settings, new=not mode_all, shard=(0, 2), request_number=3)
    rows = prediction_rows(settings)
    assert {r.image_id for r in rows} == {i for i, _, _ in images if i % 2 == 0}
    assert len({(r.image_id, r.label) for r in rows}) == len(rows)
    assert all(sum(r.image_id == i for r in rows) >= 3 for i in {r.image_id for r in rows})


def test_model_file_with_wrong_hash_is_refused(settings, tiny_model_dir):
    mid, _ = make_champion(settings, tiny_model_dir)
    weights = settings.data_dir / "models" / str(mid) / modelfile.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(modelfile.HashMismatch):
        score.score(settings)
    assert prediction_rows(settings) == []


def test_clear_errors(settings, tiny_model_dir):
    with pytest.raises(UserError, match="no champion"):
        score.score(settings)
    images = add_images(settings, 4)
    mid = add_model(settings, add_vocab(settings, images), tiny_model_dir)
    with pytest.raises(UserError, match="no tuned thresholds"):
        score.score(settings, model=mid)
    with pytest.raises(UserError, match="no model version 99"):
        score.score(settings, model=99)
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(UserError):
            score.parse_shard(bad)
    assert score.parse_shard("2/5") == (2, 5)


@pytest.mark.slow
def test_score_cli_and_only_champion_in_view(settings, tiny_model_dir, capsys):
    from instatag import promote

    champ, images = make_champion(settings, tiny_model_dir, n=12)
    other = add_model(settings, add_vocab(settings, images), tiny_model_dir)
    evaluate.evaluate(settings, other)
    base = ["--database-url", settings.database_url, "--data-dir", str(settings.data_dir)]
    assert cli.main(base + ["score", "--model", str(other), "--shard", "1/2", "--request-number", "1"]) == 0
    assert f"model version {other}, shard 1/2 (new): 6 images scored" in capsys.readouterr().out
    assert cli.main(base + ["score", "--all"]) == 0
    with db.get_engine(settings).connect() as conn:
        shown = set(conn.execute(text("SELECT DISTINCT model_version FROM predicted_tags")).scalars())
        total = conn.execute(select(func.count()).select_from(t.predictions)).scalar()
    assert shown == {champ} and total > len(prediction_rows(settings, champ))
    promote.promote(settings, other)
    with db.get_engine(settings).connect() as conn:
        assert set(conn.execute(text("SELECT DISTINCT model_version FROM predicted_tags")).scalars()) == {other}
    assert cli.main(base + ["score", "--shard", "2/2"]) == 2


def test_labels_with_tabs_survive_copy():
    rows = [(1, "a\tb\\c\nd", 0.5, 1)]
    assert db.copy_text(rows).getvalue() == "1\ta\\tb\\\\c\\nd\t0.5\t1\n"
    assert float(db.copy_text([(2, "x", 1 / 3, 2)]).getvalue().split("\t")[2]) == 1 / 3  # floats round-trip
