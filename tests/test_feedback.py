"""Corrections of labels: the append-only history, the next vocabulary build, CSV export/import."""

from __future__ import annotations

import pytest
from builders import TAGGED_POSTS, add_posts, unchecked_vocab, vocab_rows
from sqlalchemy import func, select, text

from instatag import db, feedback
from instatag import schema as t
from instatag.cli import main


def correct(settings, ids, rows):
    with db.get_engine(settings).begin() as conn:
        for key, label, verdict in rows:
            feedback.record(conn, ids[key], label, verdict, "ann", None)


def test_latest_verdict_counts_and_the_history_stays(sqlite_settings, groups_file):  # noqa: F811
    ids = add_posts(sqlite_settings, TAGGED_POSTS)
    correct(sqlite_settings, ids, [("p1", "pie", "rejected"), ("p1", "pie", "confirmed"), ("p2", "bbq", "rejected")])
    with db.get_engine(sqlite_settings).connect() as conn:
        assert feedback.latest_verdicts(conn) == {ids["p1"]: {"pie": "confirmed"}, ids["p2"]: {"bbq": "rejected"}}
        assert conn.execute(select(func.count()).select_from(t.label_corrections)).scalar() == 3
        view = conn.execute(text("select image_id, label, verdict from label_verdicts order by image_id")).all()
    assert [tuple(r) for r in view] == [(ids["p1"], "pie", "confirmed"), (ids["p2"], "bbq", "rejected")]


@pytest.mark.pg_drivers
def test_a_correction_changes_the_next_vocabulary_build(settings, groups_file):  # noqa: F811
    ids = add_posts(settings, TAGGED_POSTS)
    before = unchecked_vocab(settings, groups_file)
    _, per_image, _ = vocab_rows(settings, before)
    assert per_image["p1"] == {"apple", "pie", "sweets_sum"} and "p7" not in per_image
    # a person rejects p1's pie and adds bbq to p7 (an image the uploader tagged with nothing that counts)
    correct(settings, ids, [("p1", "pie", "rejected"), ("p7", "bbq", "confirmed")])
    after = unchecked_vocab(settings, groups_file)
    assert after != before
    labels, per_image, row = vocab_rows(settings, after)
    assert per_image["p1"] == {"apple", "sweets_sum"}
    assert per_image["p7"] == {"bbq"}
    counts = {r[0]: r[2] for r in labels}
    assert counts["bbq"] == 3 and "pie" not in counts  # pie is left on one image: below min_count 2
    assert row.stats["n_verified_images"] == 2
    assert unchecked_vocab(settings, groups_file) == after  # nothing new: the same version again


def test_feedback_export_import_round_trip_and_idempotent(sqlite_settings, groups_file, tmp_path, capsys):  # noqa: F811
    ids = add_posts(sqlite_settings, TAGGED_POSTS)
    unchecked_vocab(sqlite_settings, groups_file)
    good = tmp_path / "good.csv"
    sha_p2 = db.get_engine(sqlite_settings).connect().execute(
        select(t.images.c.sha256).where(t.images.c.id == ids["p2"])).scalar()
    good.write_text(f"image_id,sha256,label,verdict,user\n{ids['p1']},,pie,rejected,ann\n"
                    f",{sha_p2},bbq,Confirmed,bob\n")
    env = ["--database-url", sqlite_settings.database_url, "--data-dir", str(sqlite_settings.data_dir)]
    assert main([*env, "feedback", "import", str(good)]) == 0
    assert "imported 2 corrections" in capsys.readouterr().out
    assert main([*env, "feedback", "import", str(good)]) == 0
    out = capsys.readouterr().out
    assert "imported 0 corrections" in out and "2 already recorded" in out
    out = tmp_path / "out.csv"
    assert main([*env, "feedback", "export", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("image_id,sha256,post,label,verdict,user") and len(lines) == 3
    assert f"{ids['p2']},{sha_p2},p2,bbq,confirmed,bob" in out.read_text()


def test_feedback_import_refuses_bad_rows_by_line_and_writes_nothing(sqlite_settings, groups_file, tmp_path,  # noqa: F811
                                                                      capsys):
    ids = add_posts(sqlite_settings, TAGGED_POSTS)
    unchecked_vocab(sqlite_settings, groups_file)
    bad = tmp_path / "bad.csv"
    bad.write_text(f"image_id,label,verdict,user\n{ids['p1']},pie,rejected,ann\n{ids['p1']},tofu,confirmed,ann\n"
                   f"999,pie,rejected,ann\n{ids['p2']},pie,maybe,ann\n{ids['p2']},pie,rejected,\n")
    env = ["--database-url", sqlite_settings.database_url, "--data-dir", str(sqlite_settings.data_dir)]
    assert main([*env, "feedback", "import", str(bad)]) != 0
    err = capsys.readouterr().err
    assert "4 bad rows, nothing imported" in err
    assert "line 3: 'tofu' is not a label of the vocabulary" in err
    assert "line 4: no image with id '999'" in err and "line 5: verdict 'maybe'" in err and "line 6: no user" in err
    with db.get_engine(sqlite_settings).connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.label_corrections)).scalar() == 0
    (tmp_path / "nohead.csv").write_text("id,label\n1,pie\n")
    assert main([*env, "feedback", "import", str(tmp_path / "nohead.csv")]) != 0
    assert "the header lacks user, verdict, image_id or sha256" in capsys.readouterr().err


def test_feedback_import_refuses_contradicting_rows_on_one_image_and_label(sqlite_settings, groups_file,  # noqa: F811
                                                                          tmp_path, capsys):
    """``5,pie,confirmed`` then ``5,pie,rejected`` in one file: imported twice it would add both rows each time
    (each differs from the latest verdict the other left); the file is refused, naming both lines. The same
    verdict twice is no contradiction."""
    ids = add_posts(sqlite_settings, TAGGED_POSTS)
    unchecked_vocab(sqlite_settings, groups_file)
    sha_p1 = db.get_engine(sqlite_settings).connect().execute(
        select(t.images.c.sha256).where(t.images.c.id == ids["p1"])).scalar()
    both = tmp_path / "both.csv"
    both.write_text(f"image_id,sha256,label,verdict,user\n{ids['p1']},,pie,confirmed,ann\n"
                    f"{ids['p2']},,pie,rejected,ann\n,{sha_p1},pie,Rejected,bob\n")
    env = ["--database-url", sqlite_settings.database_url, "--data-dir", str(sqlite_settings.data_dir)]
    for _ in range(2):
        assert main([*env, "feedback", "import", str(both)]) != 0
        err = capsys.readouterr().err
        assert "1 bad row, nothing imported" in err
        assert f"line 4: rejected contradicts line 2 (confirmed) for image {ids['p1']} and label 'pie'" in err
    with db.get_engine(sqlite_settings).connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.label_corrections)).scalar() == 0
    same = tmp_path / "same.csv"
    same.write_text(f"image_id,label,verdict,user\n{ids['p1']},pie,rejected,ann\n{ids['p1']},pie,rejected,bob\n")
    assert main([*env, "feedback", "import", str(same)]) == 0
    assert "imported 1 correction from" in capsys.readouterr().out
    assert main([*env, "feedback", "import", str(same)]) == 0
    assert "imported 0 corrections" in capsys.readouterr().out
