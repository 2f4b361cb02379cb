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
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select, update
from test_score import LABELS, add_images, add_model, add_vocab, tiny_model_dir  # noqa: F401

from instatag import cli, db, plots, report, webapp
from instatag import schema as t
from instatag.errors import UserError
from instatag.settings import load_settings

SECTIONS = ("metrics", "labels", "augmentation", "first-layer", "training", "per-label", "examples")


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
        for i in range(len(report.THRESHOLDS)):
            assert c["tp"][i] + c["fn"][i] == r["support"]  # the same validation images as the evaluation
        assert c["tp"] == sorted(c["tp"], reverse=True) and c["fp"] == sorted(c["fp"], reverse=True)
    assert f"On {metrics['n_images']} validation images" in html
    # the examples show the uploader's hashtags, never the scrape's search tag
    grid = html[html.index('id="example-grid"'):]
    assert "#recipe " not in grid and grid.count('class="example"') == min(report.N_EXAMPLES, metrics["n_images"])


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
def _untrained(settings, tiny_model_dir, **params):  # noqa: F811
    images = add_images(settings, 24)
    mid = add_model(settings, add_vocab(settings, images), tiny_model_dir)
    with db.get_engine(settings).begin() as conn:
        conn.execute(update(t.model_versions).where(t.model_versions.c.id == mid)
                     .values(params={"valid_pct": 0.5, "size": 32, **params}))
    return mid


def test_report_of_a_model_without_lr_find_epochs_or_evaluation(settings, tiny_model_dir):  # noqa: F811
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
def test_report_without_the_model_file_still_writes_the_rest(settings, tiny_model_dir):  # noqa: F811
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


def test_report_picks_the_champion_else_the_newest(settings, tiny_model_dir):  # noqa: F811
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
def test_report_cli_prints_the_path(sqlite_settings, tiny_model_dir, capsys):  # noqa: F811
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
