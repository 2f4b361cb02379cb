"""instatag.registry: resolving "champion" / "latest" / "candidate" / a number, the champion, crowning,
and the tuned thresholds as the database holds them (model.json's copy, if any, is never read)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import insert, select

from instatag import db, registry
from instatag import schema as t
from instatag.errors import UserError

LABELS = ["cake", "soup", "salad"]


def _vocab(conn) -> int:
    return conn.execute(insert(t.vocab_versions).values(
        config={}, config_sha256="c" * 64, n_posts=1, n_images=1, n_unlabelled=0, n_raw_tags=3, n_lemmas=3,
        n_labels=3, stats={}, valid_pct=0.2)).inserted_primary_key[0]


def _model(conn, vocab_id: int, status: str = "candidate", metrics: dict | None = None) -> int:
    return conn.execute(insert(t.model_versions).values(
        vocab_version_id=vocab_id, arch="resnet18", params={}, artifact_path="models/x/model.safetensors",
        sha256="0" * 64, status=status, metrics=metrics)).inserted_primary_key[0]


def test_resolve_names_the_champion_the_newest_a_candidate_or_a_number(settings):
    engine = db.get_engine(settings)
    with engine.connect() as conn:
        for ref, message in (("champion", "no champion model yet"), ("latest", "no model version yet"),
                             ("candidate", "no candidate model"), (1, "no model version 1"),
                             ("1", "no model version 1")):
            with pytest.raises(UserError, match=message):
                registry.resolve(conn, ref)
        assert registry.champion_id(conn) is None
    with engine.begin() as conn:
        v = _vocab(conn)
        old = _model(conn, v, "retired")
        champ = _model(conn, v, "champion")
        cand = _model(conn, v)
        newest = _model(conn, v, "retired")
    with engine.connect() as conn:
        assert registry.resolve(conn, "champion") == registry.champion_id(conn) == champ
        assert registry.resolve(conn, " Latest ") == newest
        assert registry.resolve(conn, "candidate") == cand
        assert registry.resolve(conn, old) == registry.resolve(conn, str(old)) == old
        for bad in ("newest", "1.5", "", None, True, 0, -1, 99):
            with pytest.raises(UserError, match="champion.*latest.*candidate|no model version"):
                registry.resolve(conn, bad)
        assert registry.row(conn, cand)["status"] == "candidate" and registry.vocab_version_id(conn, cand) == v
        with pytest.raises(UserError, match="no model version 99 .*instatag models"):
            registry.row(conn, 99)
    assert registry.find(settings, "latest") == newest


def test_crown_keeps_one_champion_and_several_are_refused(sqlite_settings):
    engine = db.get_engine(sqlite_settings)
    with engine.begin() as conn:
        v = _vocab(conn)
        first, second = _model(conn, v, "champion"), _model(conn, v)
        registry.crown(conn, second)
    with engine.connect() as conn:
        statuses = dict(conn.execute(select(t.model_versions.c.id, t.model_versions.c.status)).all())
        assert statuses == {first: "retired", second: "champion"} and registry.champion_id(conn) == second
        promoted = conn.execute(select(t.model_versions.c.promoted_at)
                                .where(t.model_versions.c.id == second)).scalar()
        assert promoted is not None
    with engine.begin() as conn:
        _model(conn, v, "champion")  # written behind instatag's back
    with engine.connect() as conn, pytest.raises(RuntimeError, match="several champions"):
        registry.champion_id(conn)


def test_thresholds_come_from_the_evaluation_rows_not_model_json(settings):
    engine = db.get_engine(settings)
    with engine.begin() as conn:
        v = _vocab(conn)
        fresh = _model(conn, v)
        evaluated = _model(conn, v, metrics={"global_threshold": 0.35, "model": {}})
        old = _model(conn, v, metrics={"model": {}})  # evaluated without a global threshold
        conn.execute(insert(t.label_metrics), [
            {"model_version_id": evaluated, "label": "cake", "support": 3, "threshold": 0.2},
            {"model_version_id": evaluated, "label": "soup", "support": 1, "threshold": None}])
    # a model.json claiming other thresholds (as evaluate wrote them before the registry) changes nothing
    folder = settings.data_dir / "models" / str(evaluated)
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"labels": LABELS, "thresholds": {"cake": 0.9, "soup": 0.9,
                                                                                    "salad": 0.9},
                                                   "global_threshold": 0.9}))
    with engine.connect() as conn:
        assert registry.thresholds(conn, fresh) is None and registry.threshold_row(conn, fresh, LABELS) is None
        got = registry.thresholds(conn, evaluated)
        assert got == registry.Thresholds({"cake": 0.2}, 0.35)
        np.testing.assert_array_equal(registry.threshold_row(conn, evaluated, LABELS), [0.2, 0.35, 0.35])
        np.testing.assert_array_equal(registry.threshold_row(conn, old, LABELS), [registry.FALLBACK_THRESHOLD] * 3)
        with pytest.raises(UserError, match="no model version 99"):
            registry.thresholds(conn, 99)
    with pytest.raises(UserError, match=f"model version {fresh} has no tuned thresholds: run `instatag evaluate"):
        registry.require_thresholds(settings, fresh, LABELS)
    assert registry.require_thresholds(settings, evaluated, ["salad", "cake"]).tolist() == [0.35, 0.2]
