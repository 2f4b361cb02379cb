"""predict_tags / tags_for_scoring by hand, and ``instatag predict FILE...``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from builders import add_model, add_vocab, make_champion, prediction_rows
from sqlalchemy import func, select, update

from instatag import cli, db, predict
from instatag import schema as t
from instatag.errors import UserError

LABELS = ["a", "b", "c", "d"]
PROBS = np.array([
    [0.1, 0.7, 0.9, 0.3],
    [0.6, 0.6, 0.2, 0.05],  # a tie between a and b: output order
])


def test_predict_tags_top_n():
    assert predict.predict_tags(PROBS, LABELS) == [[("c", 0.9), ("b", 0.7)], [("a", 0.6), ("b", 0.6)]]
    assert predict.predict_tags(PROBS[0], LABELS, request_number=1) == [[("c", 0.9)]]
    assert len(predict.predict_tags(PROBS, LABELS, request_number=10)[0]) == 4


def test_predict_tags_with_thresholds_keeps_only_those_over():
    t = np.array([0.5, 0.8, 0.5, 0.1])
    assert predict.predict_tags(PROBS, LABELS, 2, t) == [[("c", 0.9)], [("a", 0.6)]]
    assert predict.predict_tags(PROBS, LABELS, 3, 0.6) == [[("c", 0.9), ("b", 0.7)], [("a", 0.6), ("b", 0.6)]]
    assert predict.predict_tags(PROBS, LABELS, 2, 0.95) == [[], []]
    with pytest.raises(UserError):
        predict.predict_tags(PROBS, LABELS, 0)


def test_tags_for_scoring_all_over_threshold_and_at_least_n():
    t = np.array([0.05, 0.5, 0.5, 0.25])
    # image 0: over = a (0.1 >= 0.05), b, c, d -> all four, ranked; image 1: over = a, b, d (0.05 < 0.25: no)
    assert predict.tags_for_scoring(PROBS, LABELS, t, 2) == [
        [("c", 0.9), ("b", 0.7), ("d", 0.3), ("a", 0.1)], [("a", 0.6), ("b", 0.6)]]
    # nothing over 0.95: the top n anyway
    assert predict.tags_for_scoring(PROBS, LABELS, 0.95, 3) == [
        [("c", 0.9), ("b", 0.7), ("d", 0.3)], [("a", 0.6), ("b", 0.6), ("c", 0.2)]]
    # a label far down the ranking but over its own low threshold is kept, the one above it is not
    assert predict.tags_for_scoring(PROBS[:1], LABELS, [0.05, 0.99, 0.99, 0.99], 1) == [[("c", 0.9), ("a", 0.1)]]


def test_load_image_applies_exif_orientation(tmp_path):
    from PIL import Image

    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    Image.new("L", (10, 10)).save(tmp_path / "grey.png")
    assert predict.load_image(tmp_path / "rot.jpg").size == (20, 40)
    assert predict.load_image(tmp_path / "grey.png").mode == "RGB"
    (tmp_path / "junk.jpg").write_text("<html>")
    with pytest.raises(UserError, match="not a usable image"):
        predict.load_image(tmp_path / "junk.jpg")
    with pytest.raises(UserError, match="no such file"):
        predict.load_image(tmp_path / "absent.jpg")


def test_predict_cli_prints_tags_and_writes_nothing(sqlite_settings, tiny_model_dir, tmp_path, capsys):
    s = sqlite_settings
    base = ["--database-url", s.database_url, "--data-dir", str(s.data_dir)]
    assert cli.main(base + ["predict", str(tmp_path / "x.jpg")]) == 2
    assert "no champion model yet" in capsys.readouterr().err

    mid, _ = make_champion(s, tiny_model_dir, n=12)
    files = sorted((s.data_dir / "store" / "resized").rglob("*.jpg"))[:3]
    capsys.readouterr()
    assert cli.main(base + ["predict", *map(str, files), "--no-thresholds"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for f, line in zip(files, lines, strict=True):
        name, tags = line.split("\t")
        assert name == str(f) and tags.count("#") == 2

    assert cli.main(base + ["predict", str(files[0]), "--json", "--request-number", "3", "--model", str(mid)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["model_version"] == mid and out[0]["file"] == str(files[0])
    assert len(out[0]["tags"]) >= 3  # at least N, more when more pass their thresholds (as score writes)
    probs = [tag["probability"] for tag in out[0]["tags"]]
    assert probs == sorted(probs, reverse=True)

    with db.get_engine(s).connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.predictions)).scalar() == 0
    assert cli.main(base + ["predict", str(tmp_path / "absent.jpg")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_predict_shows_the_tags_score_writes_and_goes_on_past_a_bad_file(
        sqlite_settings, tiny_model_dir, tmp_path, capsys):
    """Every label over its threshold, not only the first two: the tags predicted_tags gets."""

    from instatag import modelfile, score

    s = sqlite_settings
    mid, _ = make_champion(s, tiny_model_dir, n=12)
    folder = s.data_dir / "models" / str(mid)
    labels = modelfile.read_meta(folder)["labels"]
    assert len(labels) > 2
    with db.get_engine(s).begin() as conn:  # every label passes (the thresholds the evaluation stored)
        conn.execute(update(t.label_metrics).where(t.label_metrics.c.model_version_id == mid).values(threshold=0.0))
    score.score(s)
    with db.get_engine(s).connect() as conn:
        path_of = dict(conn.execute(select(t.images.c.id, t.images.c.resized_path)).all())
    written: dict[str, set] = {}
    for _, image_id, label, _, _ in prediction_rows(s, mid):
        written.setdefault(str(s.data_dir / path_of[image_id]), set()).add(label)
    files = sorted(written)[:2]
    (tmp_path / "junk.jpg").write_text("<html>")
    base = ["--database-url", s.database_url, "--data-dir", str(s.data_dir), "predict"]
    assert cli.main([*base, files[0], str(tmp_path / "junk.jpg"), str(tmp_path / "absent.jpg"), files[1]]) == 2
    captured = capsys.readouterr()
    shown = {line.split("\t")[0]: {tag.split()[0].lstrip("#") for tag in line.split("\t")[1].split("  ")}
             for line in captured.out.splitlines()}
    assert shown == {f: written[f] for f in files} and all(len(v) == len(labels) for v in shown.values())
    assert "junk.jpg: not a usable image" in captured.err and "absent.jpg: no such file" in captured.err
    assert "2 of 4 files could not be used" in captured.err


def test_predict_lists_the_most_probable_tag_first_unless_the_model_ranks_dominant_first(
        sqlite_settings, tiny_model_dir):
    """model.json as train writes it by default (ranking probability): tags most probable first; a model
    trained with ranking dominant_first lists the likely dominant label first."""
    from instatag import modelfile, ranking
    from instatag.inference import Predictor

    s = sqlite_settings
    mid, _ = make_champion(s, tiny_model_dir, n=12)
    folder = s.data_dir / "models" / str(mid)
    labels = modelfile.read_meta(folder)["labels"]
    modelfile.update_meta(folder, ranking="probability", frequency_order=labels[::-1])
    files = sorted((s.data_dir / "store" / "resized").rglob("*.jpg"))
    _, tags = predict.predict_files(s, files, request_number=len(labels), use_thresholds=False)
    for row in tags:
        assert [p for _, p in row] == sorted((p for _, p in row), reverse=True)
    modelfile.update_meta(folder, ranking="dominant_first")
    _, ranked = predict.predict_files(s, files, request_number=len(labels), use_thresholds=False)
    probs = Predictor.for_version(s, mid).predict_images([predict.load_image(f) for f in files])
    dominant = ranking.dominant_probs(probs, [labels.index(lab) for lab in labels[::-1]]).argmax(axis=1)
    assert [row[0][0] for row in ranked] == [labels[j] for j in dominant]
    assert [row[0][0] for row in ranked] != [row[0][0] for row in tags]  # the orders differ here


def test_an_ad_hoc_file_gets_the_probabilities_of_its_ingested_copy(sqlite_settings, tiny_model_dir, tmp_path):
    from PIL import Image

    from instatag import ingest
    from instatag.inference import Predictor
    from instatag.sample import DISHES, draw

    s = sqlite_settings
    drop = tmp_path / "drop"
    drop.mkdir()
    photo = drop / "2026-11-01_06-00-00_UTC.jpg"
    img = draw(DISHES[0], __import__("random").Random(3), size=96).resize((400, 260))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(photo, quality=95, exif=exif)
    (drop / "2026-11-01_06-00-00_UTC.txt").write_text("Soup #recipe #soup")
    ingest.ingest(s, [drop])
    with db.get_engine(s).connect() as conn:
        resized = conn.execute(select(t.images.c.resized_path)).scalar_one()
    ad_hoc = predict.load_image(photo, s.resized_side, s.max_pixels)
    assert ad_hoc.size == Image.open(s.data_dir / resized).size == (104, 160)  # upright, longest side 160

    with db.get_engine(s).connect() as conn:
        image_id, sha = conn.execute(select(t.images.c.id, t.images.c.sha256)).one()
    mid = add_model(s, add_vocab(s, [(image_id, sha, ("soup",))], valid_pct=0.999999), tiny_model_dir)
    model_id, tags = predict.predict_files(s, [photo], model=mid, request_number=4, use_thresholds=False)
    predictor = Predictor.for_version(s, mid)
    probs = predictor.predict_paths([s.data_dir / resized])[0]
    top = np.argsort(-probs, kind="stable")[:4]
    assert model_id == mid
    assert [label for label, _ in tags[0]] == [predictor.labels[j] for j in top]
    np.testing.assert_allclose([p for _, p in tags[0]], probs[top], atol=1e-6)
