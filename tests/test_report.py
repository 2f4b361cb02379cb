"""The model report: every figure of a tiny trained model, the self-contained HTML, missing parts,
the CLI, and the report served by the web app."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from builders import LABELS, add_images, add_model, add_vocab
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select, update

from instatag import cli, db, plots, report, webapp
from instatag import metrics as m
from instatag import schema as t
from instatag.errors import UserError
from instatag.settings import load_settings

SECTIONS = ("metrics", "labels", "augmentation", "first-layer", "training", "per-label", "examples", "heatmaps")


def assert_real_png(data: bytes, min_colours: int = 16) -> Image.Image:
    """A valid PNG with some content: many colours, and not one colour almost everywhere."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    Image.open(io.BytesIO(data)).verify()
    img = Image.open(io.BytesIO(data)).convert("RGB")
    assert img.width >= 300 and img.height >= 200, img.size
    colours = img.getcolors(maxcolors=1 << 20)
    assert len(colours) >= min_colours, len(colours)
    assert max(n for n, _ in colours) < 0.97 * img.width * img.height  # not a blank canvas
    return img


def curves_of(html: str) -> dict:
    match = re.search(r'<script type="application/json" id="curves">(.*?)</script>', html, re.S)
    assert match
    return json.loads(match.group(1))


def assert_self_contained(html: str) -> None:
    assert "<link" not in html and "@import" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|/)""", html), "the report refers to another file"
    for src in re.findall(r'<img[^>]* src="([^"]+)"', html):
        assert src.startswith("data:image/"), src[:40]


# --------------------------------------------------------------------------- a tiny trained model
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The whole pipeline on 36 generated posts: ingest, vocabulary, a resnet18 trained from scratch at
    size 32 for 1+1 epochs with lr_find, evaluation, promotion; then the report."""
    import torch

    from instatag import evaluate, ingest, promote, sample, train, vocab

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("report")
    settings = load_settings(env={}, data_dir=root / "var")
    db.upgrade(settings)
    sample.make_scrape(root / "drop", n_posts=36, seed=3)
    ingest.ingest(settings, [root / "drop"], workers=1)
    # 36 posts cannot train and validate a real model (vocab.check_trainable); a report of a tiny one will do
    vocab.build(settings, min_count=2, check=False)
    config = train.config_from("default", arch="resnet18", size=32, pretrained=False, epochs=1, freeze_epochs=1,
                               bs=8, lr="auto", lr_find_iters=10)
    mid = train.train(settings, config)
    evaluate.evaluate(settings, mid)
    promote.promote(settings, mid, reason="test")
    path = report.build_report(settings)  # the champion
    return settings, mid, path


@pytest.mark.slow
def test_report_writes_every_figure_as_a_real_png(trained):
    settings, mid, path = trained
    assert path == settings.reports_dir / str(mid) / "report.html"
    for key, name in report.FIGURES.items():
        img = assert_real_png((path.parent / name).read_bytes())
        if key in ("fig3", "fig5"):  # photos and activation maps: many colours
            assert len(img.getcolors(maxcolors=1 << 20)) > 500


@pytest.mark.slow
def test_report_html_is_self_contained_with_every_section(trained):
    settings, mid, path = trained
    html = path.read_text()
    assert_self_contained(html)
    for section in SECTIONS:
        assert f'id="{section}"' in html, section
    for key, name in report.FIGURES.items():
        assert f'<figure id="{key}"><img src="data:image/png;base64,' in html, key
        embedded = re.search(rf'<figure id="{key}"><img src="data:image/png;base64,([^"]+)"', html).group(1)
        import base64

        assert base64.b64decode(embedded) == (path.parent / name).read_bytes()
    assert "Not evaluated" not in html and "did not use lr_find" not in html
    assert 'id="threshold"' in html and 'id="label-table"' in html and 'id="example-grid"' in html
    assert 'id="heatmap-grid"' in html and 'alt="heatmap of ' in html
    assert "★ champion" in html and "valley suggestion" in html


@pytest.mark.slow
def test_report_table_and_slider_data_agree_with_the_evaluation(trained):
    settings, mid, path = trained
    html = path.read_text()
    with db.get_engine(settings).connect() as conn:
        rows = conn.execute(select(t.label_metrics).where(t.label_metrics.c.model_version_id == mid)).mappings().all()
        metrics = conn.execute(select(t.model_versions.c.metrics).where(t.model_versions.c.id == mid)).scalar()
    assert rows
    curves = curves_of(html)
    assert curves["thresholds"] == list(report.THRESHOLDS)
    assert set(curves["labels"]) == {r["label"] for r in rows}
    for r in rows:
        c = curves["labels"][r["label"]]
        assert f'<tr data-label="{r["label"]}">' in html
        row = html[html.index(f'<tr data-label="{r["label"]}">'):]
        verdict = m.learned(r["ap"], (r["baseline"] or {}).get("ap")) or "–"
        assert f"<td>{verdict}</td>" in row[:row.index("</tr>")]  # which tags the model can learn
        for i in range(len(report.THRESHOLDS)):
            assert c["tp"][i] + c["fn"][i] == r["support"]  # the same validation images as the evaluation
        assert c["tp"] == sorted(c["tp"], reverse=True) and c["fp"] == sorted(c["fp"], reverse=True)
    assert f"On {metrics['n_images']} validation images" in html
    # the examples show the uploader's hashtags, never the scrape's search tag
    grid = html[html.index('id="example-grid"'):]
    assert "#recipe " not in grid and grid.count('class="example"') == min(report.N_EXAMPLES, metrics["n_images"])


@pytest.mark.slow
def test_report_shows_epochs_both_rankings_and_tags_most_probable_first(trained):
    """The default preset ranks by probability: the examples list tags most probable first; the page
    has both rankings' top-k metrics and the per-epoch tables of the run (Figures 7-8)."""
    settings, mid, path = trained
    html = path.read_text()
    with db.get_engine(settings).connect() as conn:
        metrics = conn.execute(select(t.model_versions.c.metrics).where(t.model_versions.c.id == mid)).scalar()
        phases = conn.execute(select(t.training_epochs.c.phase)).scalars().all()
    assert metrics["ranking"] == "probability" and set(metrics["model_by_ranking"]) == {"probability", "dominant_first"}
    table = html[html.index('id="by-ranking"'):html.index("</table>", html.index('id="by-ranking"'))]
    assert "probability (this model)" in table
    for name, values in metrics["model_by_ranking"].items():
        assert f"{100 * values['dominant_recall@1']:.1f}%" in table, name
    for key, phase in (("fig7", "frozen"), ("fig8", "unfrozen")):
        part = html[html.index(f'id="{key}"'):html.index("</figure>", html.index(f'id="{key}"'))]
        assert part.count("<tr><td") == phases.count(phase) >= 1
    grid = html[html.index('id="example-grid"'):]
    for chips in re.findall(r'<div class="chips">(.*?)</div>', grid):
        probs = [float(p) for p in re.findall(r"probability ([0-9.]+), threshold", chips)]
        assert probs == sorted(probs, reverse=True)
        for cls, p, th in re.findall(r'class="chip [a-z]+( under)?" title="[^:]+: probability ([0-9.]+), '
                                     r'threshold ([0-9.]+)', chips):
            assert (cls == " under") == (float(p) < float(th)) or abs(float(p) - float(th)) < 0.006


@pytest.mark.slow
def test_report_is_served_by_the_web_app(trained):
    settings, mid, path = trained
    app = webapp.create_app(settings)
    app.dependency_overrides[webapp.airflow_auth()] = lambda: "tester"
    client = TestClient(app)
    r = client.get(f"/models/{mid}/report")
    assert r.status_code == 200 and r.text == path.read_text()
    png = client.get(f"/reports/{mid}/{report.FIGURES['fig4']}")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert f'href="/models/{mid}/report"' in client.get("/").text


# --------------------------------------------------------------------------- missing parts
def _untrained(settings, tiny_model_dir, **params):
    images = add_images(settings, 24)
    mid = add_model(settings, add_vocab(settings, images), tiny_model_dir)
    with db.get_engine(settings).begin() as conn:
        conn.execute(update(t.model_versions).where(t.model_versions.c.id == mid)
                     .values(params={"size": 32, **params}))
    return mid


def test_report_of_a_model_without_lr_find_epochs_or_evaluation(settings, tiny_model_dir):
    mid = _untrained(settings, tiny_model_dir, lr=0.002)
    path = report.build_report(settings, mid)
    html = path.read_text()
    assert_self_contained(html)
    for section in SECTIONS:
        assert f'id="{section}"' in html
    assert "the learning rate was given explicitly (0.002)" in html
    assert "This run recorded no epochs" in html
    assert "Not evaluated yet" in html and "the table is computed here" in html
    assert "stores no hashtag frequency table" in html  # the hand-made vocabulary has no raw tags
    written = {p.name for p in path.parent.glob("*.png")}
    assert written == {report.FIGURES[k] for k in ("fig2", "fig3", "fig4", "fig5")}
    for name in written:
        assert_real_png((path.parent / name).read_bytes())
    curves = curves_of(html)
    assert set(curves["labels"]) == set(LABELS)  # the slider works from the report's own predictions
    assert html.count('<tr data-label="') == len(LABELS)


@pytest.mark.slow
def test_report_without_the_model_file_still_writes_the_rest(settings, tiny_model_dir):
    mid = _untrained(settings, tiny_model_dir)
    first = report.build_report(settings, mid)
    assert (first.parent / report.FIGURES["fig4"]).is_file()
    shutil.rmtree(settings.models_dir / str(mid))
    path = report.build_report(settings, mid)  # again, over the first report
    html = path.read_text()
    assert "The model file could not be loaded" in html
    assert (path.parent / report.FIGURES["fig3"]).is_file()  # needs an image, not the model
    assert not (path.parent / report.FIGURES["fig4"]).exists()  # stale figures are removed
    assert 'id="example-grid"' not in html


def test_report_picks_the_champion_else_the_newest(settings, tiny_model_dir):
    first = _untrained(settings, tiny_model_dir)
    second = _untrained(settings, tiny_model_dir)
    with db.get_engine(settings).connect() as conn:
        assert report.resolve_model(conn) == second
    with db.get_engine(settings).begin() as conn:
        conn.execute(update(t.model_versions).where(t.model_versions.c.id == first).values(status="champion"))
        assert report.resolve_model(conn) == first
        with pytest.raises(UserError, match="no model version 99"):
            report.resolve_model(conn, 99)


@pytest.mark.slow
def test_report_cli_prints_the_path(sqlite_settings, tiny_model_dir, capsys):
    s = sqlite_settings
    argv = ["--database-url", s.database_url, "--data-dir", str(s.data_dir), "report"]
    assert cli.main(argv) == 2
    assert "no model version yet" in capsys.readouterr().err
    mid = _untrained(s, tiny_model_dir)
    assert cli.main([*argv, str(mid)]) == 0
    out = capsys.readouterr().out.strip()
    assert Path(out) == s.reports_dir / str(mid) / "report.html" and Path(out).is_file()
    assert cli.main([*argv, "42"]) == 2
    assert "no model version 42" in capsys.readouterr().err


# --------------------------------------------------------------------------- plots alone
def test_plots_from_plain_data():
    rng = np.random.default_rng(0)
    raw = {f"tag{i}": 500 // (i + 1) + 1 for i in range(60)} | {"recipe": 900}
    assert_real_png(plots.raw_tag_distribution(raw, {"a": 5, "b": 3}, {"a": 5}, frozenset({"recipe"})))
    assert_real_png(plots.label_distribution({"a": 5, "b": 3}, {"a": 4, "b": 2}, {"a": 1, "b": 1}), min_colours=8)
    assert_real_png(plots.conv_filters(rng.normal(size=(32, 3, 3, 3))))
    assert_real_png(plots.lr_find(np.logspace(-6, 0, 40), np.linspace(1, 0.5, 40), 1e-3), min_colours=8)
    assert_real_png(plots.lr_find([1e-4, 1e-3], [0.5, 0.4], None), min_colours=8)  # no suggestion
    rows = [{"images_seen": 10 * (i + 1), "phase": "frozen" if i < 2 else "unfrozen", "train_loss": 1 / (i + 1),
             "valid_loss": None if i == 0 else 1.1 / (i + 1)} for i in range(4)]
    assert_real_png(plots.loss_curves(rows), min_colours=8)


# --------------------------------------------------------------------------- the page's parts, without a model
def test_examples_mark_the_tags_under_their_threshold(sqlite_settings, tmp_path):
    """The example chips are the tags scoring writes (every tag at or over its threshold, at least two,
    in the model's ranking); a chip is marked under its threshold exactly when its probability is."""
    photo = tmp_path / "a.jpg"
    Image.new("RGB", (8, 8), (200, 40, 40)).save(photo)
    labels = ["cake", "pie", "soup", "salad"]
    probs = np.array([[0.30, 0.95, 0.20, 0.60], [0.10, 0.20, 0.15, 0.05]])
    v = report.Validation(labels, [1, 2], [photo, photo], [("pie",), ("soup",)],
                          np.array([[0, 1, 0, 0], [0, 0, 1, 0]], dtype=bool), probs, n_total=2)
    thresholds = np.array([0.25, 0.5, 0.5, 0.7])
    with db.get_engine(sqlite_settings).connect() as conn:
        first, second = report.examples(conn, v, thresholds)
    assert [(t["label"], t["over"], t["given"]) for t in first["predicted"]] == [
        ("pie", True, True), ("salad", False, False), ("cake", True, False)]
    assert [(t["label"], t["over"]) for t in second["predicted"]] == [("pie", False), ("soup", False)]
    assert all(t["threshold"] == thresholds[labels.index(t["label"])] for t in first["predicted"])


def test_report_page_numbers_figures_and_shows_epochs_rankings_and_plurals(sqlite_settings, tmp_path):
    from datetime import UTC, datetime

    photo = tmp_path / "a.jpg"
    Image.new("RGB", (8, 8), (200, 40, 40)).save(photo)
    v = report.Validation(["cake", "pie"], [1], [photo], [("pie",)], np.array([[0, 1]], dtype=bool),
                          np.array([[0.4, 0.9]]), n_total=1)
    with db.get_engine(sqlite_settings).connect() as conn:
        shown = report.examples(conn, v, np.array([0.5, 0.5]))
    by = {"probability": {"dominant_recall@1": 0.84, "dominant_recall@2": 0.9},
          "dominant_first": {"dominant_recall@1": 0.78, "dominant_recall@2": 0.91}}
    metrics = {"model": {"dominant_recall@1": 0.78}, "baseline": {}, "n_images": 1, "ranking": "dominant_first",
               "model_by_ranking": by}
    model = {"id": 3, "status": "candidate", "arch": "resnet18", "vocab_version_id": 1, "params": {},
             "metrics": metrics, "created_at": datetime(2026, 11, 1, tzinfo=UTC), "promoted_at": None}
    epochs = [{"epoch": i, "phase": "frozen" if i < 2 else "unfrozen", "train_loss": 0.5 - i / 10,
               "valid_loss": 0.45 - i / 20, "metrics": {"accuracy_multi": 0.9}, "images_seen": 240 * (i + 1),
               "seconds": 65.0} for i in range(5)]
    ctx = report.Context(model=model, vocab={"n_labels": 1, "n_images": 1}, examples=shown,
                         figures={f.key: f for f in [report.Figure(k, k, note="none") for k in report.FIGURES]},
                         summary=report.summary_rows(metrics), by_ranking=report.ranking_rows(metrics),
                         ranking="dominant_first", epoch_tables=report.epoch_tables(epochs))
    html = report.write(sqlite_settings, 3, ctx, None).read_text()
    assert "1 label from 1 image<" in html and "On 1 validation image." in html
    assert "Figures 7 and 8 were fastai's per-epoch tables" in html
    fig7 = html[html.index('id="fig7"'):html.index("</figure>", html.index('id="fig7"'))]
    fig8 = html[html.index('id="fig8"'):html.index("</figure>", html.index('id="fig8"'))]
    assert "Figure 7. Epochs with the pretrained body frozen" in fig7 and fig7.count("<tr><td") == 2
    assert "Figure 8. Epochs with every layer training" in fig8 and fig8.count("<tr><td") == 3
    assert "0.3000" in fig8 and "720" in fig8 and "1:05" in fig8 and "accuracy_multi" in fig8
    table = html[html.index('id="by-ranking"'):html.index("</table>", html.index('id="by-ranking"'))]
    assert "dominant_first (this model)" in table and "84.0%" in table and "78.0%" in table
    assert '<span class="chip hit"' in html and '<span class="chip miss under"' in html  # pie over, cake under
    assert "threshold 0.50 (under it)" in html
    assert report.epoch_tables([])[0].note == "This run recorded no epochs."
    assert report.epoch_tables(epochs[:2])[1].note == "This run had no unfrozen epoch."


def test_label_figures_say_label_in_the_singular(tmp_path):
    vocab = {"n_raw_tags": 1, "n_lemmas": 1, "n_labels": 1,
             "stats": {"raw_tags": {"cake": 3}, "lemmas": {"cake": 3}, "labels": {"cake": 3}}}
    f1, f2 = report.label_figures(vocab, [("cake", 3)])
    assert f1.note.startswith("1 distinct hashtag became 1 lemma (WordNet) and 1 label ")
    assert f2.note == "1 label."


def test_heatmaps_show_each_labels_best_and_most_confident_wrong_image(tiny_model_dir, tmp_path):
    """Per label (most given first): best = the most probable image given the label, worst = the most
    probable one not given it; the probability shown is the one the model scored for that image."""
    from instatag.inference import Predictor

    predictor = Predictor.from_files(tiny_model_dir, device="cpu")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(paths[-1])
    y = np.zeros((6, len(LABELS)), dtype=bool)
    y[:4, 1] = True  # label 1: given to 4 images
    y[:2, 0] = True  # label 0: given to 2
    probs = predictor.predict_paths(paths)
    v = report.Validation(list(LABELS), list(range(10, 16)), paths, [()] * 6, y, probs, n_total=6)
    shown = report.heatmaps(predictor, v, n_labels=3)
    assert [h["label"] for h in shown] == [LABELS[1], LABELS[0]]  # labels nobody was given are left out
    for h in shown:
        j = LABELS.index(h["label"])
        assert h["support"] == int(y[:, j].sum())
        best, worst = h["cases"]
        assert (best["kind"], worst["kind"]) == ("best", "worst")
        pos, neg = np.flatnonzero(y[:, j]), np.flatnonzero(~y[:, j])
        assert best["image_id"] == 10 + pos[np.argmax(probs[pos, j])]
        assert worst["image_id"] == 10 + neg[np.argmax(probs[neg, j])]
        assert best["p"] == pytest.approx(probs[best["image_id"] - 10, j], abs=1e-5)
        assert best["heatmap"].startswith("data:image/png;base64,") and best["crop"].startswith("data:image/png")


@pytest.mark.parametrize("verified", [
    {"n_images": 42, "min_images": 30, "model": {"dominant_recall@1": 0.66, "map": 0.5},
     "baseline": {"dominant_recall@1": 0.21}},
    {"n_images": 7, "min_images": 30},
])
def test_report_shows_the_verified_metrics_beside_the_uploader_figures(sqlite_settings, verified):
    from datetime import UTC, datetime

    metrics = {"model": {"dominant_recall@1": 0.78, "map": 0.6}, "baseline": {"dominant_recall@1": 0.3},
               "n_images": 50, "verified": verified}
    model = {"id": 3, "status": "candidate", "arch": "resnet18", "vocab_version_id": 1, "params": {},
             "metrics": metrics, "created_at": datetime(2026, 11, 1, tzinfo=UTC), "promoted_at": None}
    ctx = report.Context(model=model, vocab={"n_labels": 1, "n_images": 1},
                         figures={f.key: f for f in [report.Figure(k, k, note="none") for k in report.FIGURES]},
                         summary=report.summary_rows(metrics))
    html = report.write(sqlite_settings, 3, ctx, None).read_text()
    table = html[html.index('id="summary"'):html.index("</table>", html.index('id="summary"'))]
    if "model" in verified:
        assert "model, verified" in table and "66.0%" in table and "21.0%" in table and "78.0%" in table
        assert "on 42 validation images whose labels people corrected" in html
    else:
        assert "verified" not in table
        assert "7 validation images with people's verdicts so far" in html and "from 30 on" in html
