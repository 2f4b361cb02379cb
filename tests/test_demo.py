"""`instatag demo`: the whole job in process on the embedded default (SQLite)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from instatag import db
from instatag.cli import main


@pytest.mark.slow
def test_demo_runs_every_stage_and_prints_a_summary(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("INSTATAG_DATABASE_URL", raising=False)
    data = tmp_path / "var"
    # 240 posts: the fewest of this sample scrape whose vocabulary can train and validate a model
    code = main(["--data-dir", str(data), "demo", "--posts", "240", "--epochs", "1", "--freeze-epochs", "1",
                 "--lr", "0.003", "--min-count", "10%"])
    out = capsys.readouterr().out
    assert code == 0
    for words in ("instatag demo finished", "240 ingested", "labels:", "dominant_recall@2", "report",
                  "instatag sql sql/examples/images_with_tag.sql"):
        assert words in out, words
    from instatag.settings import load_settings

    settings = load_settings(env={}, data_dir=data)
    with db.get_engine(settings).connect() as conn:
        scored = conn.execute(text("select count(distinct image_id) from predicted_tags")).scalar()
        champion = conn.execute(text("select count(*) from model_versions where status = 'champion'")).scalar()
    assert scored == 240 and champion == 1
    assert (data / "reports" / "1" / "report.html").is_file()
    # a second run on the same data dir ingests nothing new and still succeeds
    assert main(["--data-dir", str(data), "demo", "--posts", "240", "--epochs", "1", "--freeze-epochs", "1",
                 "--lr", "0.003", "--min-count", "10%"]) == 0
    assert "240 ingested" in capsys.readouterr().out


def test_demo_refuses_a_missing_source(tmp_path, capsys):
    code = main(["--data-dir", str(tmp_path), "demo", "--source", str(tmp_path / "nope")])
    assert code == 2 and "no such source" in capsys.readouterr().err
