"""Promotion decisions on model rows inserted here, with the models' predictions faked:
better, worse, tie, vocabulary change, force, the 'always' rule, manual promotion, rollback."""

from __future__ import annotations

import numpy as np
import pytest
from builders import model_row, vocab_row
from sqlalchemy import func, select

from instatag import cli, evaluate, promote
from instatag import schema as t
from instatag.errors import UserError

Y = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1]], dtype=bool)
GOOD = np.where(Y, 0.9, 0.1)  # ranks every true label first
MEDIUM = np.where(Y, 0.6, 0.3) + np.array([[0.0, 0.35, 0.0], [0, 0, 0.2], [0.4, 0, 0], [0, 0, 0], [0, 0.3, 0]])
BAD = 1.0 - GOOD






@pytest.fixture
def world(settings, monkeypatch):
    """Two vocabularies (a,b,c) and (a,b,d); predictions per model set through ``world.outputs``."""
    from instatag import db

    engine = db.get_engine(settings)
    with engine.begin() as conn:
        v1 = vocab_row(conn, ["a", "b", "c"], [10, 9, 8], n_images=5)
        v2 = vocab_row(conn, ["a", "b", "d"], [10, 9, 8], n_images=5)
    outputs: dict[int, tuple[list[str], np.ndarray]] = {}

    def fake_predict(settings_, model_id, paths, batch_size=256):
        labels, probs = outputs[model_id]
        assert len(paths) == len(probs)
        return labels, probs, probs

    monkeypatch.setattr(evaluate, "predict_probs", fake_predict)

    class World:
        pass

    w = World()
    w.settings, w.engine, w.v1, w.v2, w.outputs = settings, engine, v1, v2, outputs

    def model(probs, vocab=None, labels=("a", "b", "c"), evaluated=True):
        with engine.begin() as conn:
            metrics = {"global_threshold": 0.5, "model": {}} if evaluated else None
            mid = model_row(conn, vocab or v1, metrics=metrics, run=False)
        outputs[mid] = (list(labels), probs)
        return mid

    def validation(mid):
        labels, probs = outputs[mid]
        return evaluate.Validation(mid, w.vocab_of(mid), labels, np.array([5, 4, 3]), list(range(1, 6)),
                                   [f"/img/{i}.jpg" for i in range(5)], Y, probs)

    def vocab_of(mid):
        with engine.connect() as conn:
            mv = t.model_versions
            return conn.execute(select(mv.c.vocab_version_id).where(mv.c.id == mid)).scalar()

    def statuses():
        with engine.connect() as conn:
            return dict(conn.execute(select(t.model_versions.c.id, t.model_versions.c.status)).all())

    def decisions():
        with engine.connect() as conn:
            return conn.execute(select(t.promotion_decisions).order_by(t.promotion_decisions.c.id)).mappings().all()

    w.model, w.validation, w.vocab_of, w.statuses, w.decisions = model, validation, vocab_of, statuses, decisions
    return w


def _decide(w, mid, **kw):
    return promote.decide(w.settings, mid, validation=w.validation(mid), **kw)


def test_first_candidate_becomes_champion(world):
    a = world.model(MEDIUM)
    d = _decide(world, a)
    assert d.promoted and d.decision == "promoted" and d.champion_id is None and d.reason == "no champion yet"
    assert world.statuses()[a] == "champion"
    row = world.decisions()[-1]
    assert (row["candidate_id"], row["decision"], row["forced"]) == (a, "promoted", False)


def test_better_candidate_replaces_champion_which_is_retired(world):
    a, b = world.model(MEDIUM), world.model(GOOD)
    _decide(world, a)
    d = _decide(world, b)
    assert d.decision == "promoted" and d.champion_id == a
    assert world.statuses() == {a: "retired", b: "champion"}
    row = world.decisions()[-1]
    assert row["champion_id"] == a and "not worse" in row["reason"]
    cmp_ = row["comparison"]
    assert cmp_["candidate"]["metrics"]["map"] > cmp_["champion"]["metrics"]["map"]
    assert cmp_["n_images"] == 5 and cmp_["vocabulary_changed"] is False and "baseline" in cmp_


def test_worse_candidate_is_rejected_and_recorded(world):
    a, b = world.model(GOOD), world.model(BAD)
    _decide(world, a)
    d = _decide(world, b)
    assert d.decision == "rejected" and not d.promoted
    assert "worse than the champion in dominant_recall@2 and map" in d.reason
    assert world.statuses() == {a: "champion", b: "candidate"}
    assert world.decisions()[-1]["decision"] == "rejected"


def test_worse_in_one_metric_only_is_rejected(world):
    # same ranking of the top 2 per image (dominant recall equal), but a worse ranking across images (mAP)
    a = world.model(GOOD)
    shuffled = GOOD.copy()
    shuffled[0, 0] = 0.05  # image 0's only label still ranks first, but below other images' negatives (0.1)
    shuffled[0, 1:] = 0.01
    b = world.model(shuffled)
    _decide(world, a)
    d = _decide(world, b)
    cmp_ = d.comparison
    assert cmp_["candidate"]["metrics"]["dominant_recall@2"] == cmp_["champion"]["metrics"]["dominant_recall@2"]
    assert d.decision == "rejected" and "worse than the champion in map:" in d.reason


def test_tie_promotes(world):
    a, b = world.model(MEDIUM), world.model(MEDIUM.copy())
    _decide(world, a)
    assert _decide(world, b).decision == "promoted"
    assert world.statuses() == {a: "retired", b: "champion"}


def test_vocabulary_change_compares_shared_labels_and_says_so(world):
    a = world.model(GOOD, vocab=world.v1, labels=("a", "b", "c"))
    _decide(world, a)
    # the candidate's vocabulary is (a, b, c, d): it kept every label of the champion's and gained d
    with world.engine.begin() as conn:
        v3 = vocab_row(conn, ["a", "b", "c", "d"], [10, 9, 8, 7], n_images=5)
    y4 = np.hstack([GOOD, np.full((5, 1), 0.05)])
    b = world.model(y4, vocab=v3, labels=("a", "b", "c", "d"))
    d = _decide(world, b)
    cmp_ = d.comparison
    assert cmp_["vocabulary_changed"] and cmp_["labels_compared"] == 3
    assert cmp_["labels_candidate_only"] == ["d"] and cmp_["labels_champion_only"] == []
    assert f"vocabulary changed (version {world.v1} → {v3}): compared on the 3 labels both share" in d.reason
    assert "gained 1 label (d)" in d.reason and "lost" not in d.reason
    assert d.decision == "promoted" and d.reason.startswith("not worse than the champion")


def test_a_candidate_that_lost_labels_is_refused_naming_them(world):
    a = world.model(GOOD, vocab=world.v1, labels=("a", "b", "c"))
    _decide(world, a)
    # the candidate's vocabulary is (a, b, d): c is gone (say min_count dropped it). On the two labels
    # both share it is exactly as good, which alone would read "not worse"
    b = world.model(GOOD, vocab=world.v2, labels=("a", "b", "d"))
    d = _decide(world, b)
    cmp_ = d.comparison
    assert cmp_["labels_compared"] == 2 and cmp_["labels_champion_only"] == ["c"]
    assert cmp_["candidate"]["metrics"]["map"] == cmp_["champion"]["metrics"]["map"]
    assert d.decision == "rejected" and world.statuses()[a] == "champion"
    assert d.reason.startswith("the candidate's vocabulary lost 1 label the champion predicts (c), so it is not "
                               "'not worse'")
    assert "lost 1 label (c); gained 1 label (d)" in d.reason and "use force" in d.reason
    assert world.decisions()[-1]["reason"] == d.reason
    # 'always' promotes, and still says what was lost; so does force
    forced = _decide(world, b, force=True)
    assert forced.decision == "promoted" and "lost 1 label the champion predicts (c)" in forced.reason


def test_lost_labels_are_named_and_counted_under_rule_always(world):
    champion_labels = tuple("abcdefghijklmn")
    cmp_ = {"candidate": {"id": 2, "vocab_version_id": 2, "metrics": {"map": 0.5, "dominant_recall@2": 0.5}},
            "champion": {"id": 1, "vocab_version_id": 1, "metrics": {"map": 0.5, "dominant_recall@2": 0.5}},
            "n_images": 10, "vocabulary_changed": True, "labels_compared": 2,
            "labels_candidate_only": [], "labels_champion_only": sorted(champion_labels[2:])}
    ok, reason = promote.apply_rule(cmp_, "always")
    assert ok and "lost 12 labels (c, d, e, f, g, h, i, j, k, l, ... 2 more)" in reason
    ok, reason = promote.apply_rule(cmp_, "no_worse")
    assert not ok and "lost 12 labels the champion predicts" in reason


def test_vocabulary_change_uses_the_champions_own_label_order(world):
    # the champion outputs (c, b, a); on the shared labels it ranks as well as the candidate
    a = world.model(GOOD[:, ::-1].copy(), labels=("c", "b", "a"))
    _decide(world, a)
    b = world.model(MEDIUM, vocab=world.v2, labels=("a", "b", "d"))
    d = _decide(world, b)
    champ = d.comparison["champion"]["metrics"]
    assert champ["map"] == pytest.approx(1.0)
    assert d.decision == "rejected"


def test_no_shared_label_is_rejected_unless_forced(world):
    a = world.model(GOOD, labels=("x", "y", "z"))
    _decide(world, a)
    b = world.model(GOOD, vocab=world.v2, labels=("a", "b", "d"))
    d = _decide(world, b)
    assert d.decision == "rejected" and "share no label" in d.reason
    assert _decide(world, b, force=True).decision == "promoted"


def test_force_promotes_a_worse_candidate(world):
    a, b = world.model(GOOD), world.model(BAD)
    _decide(world, a)
    d = _decide(world, b, force=True)
    assert d.decision == "promoted" and d.forced and d.reason.startswith("forced")
    assert world.statuses() == {a: "retired", b: "champion"}
    row = world.decisions()[-1]
    assert row["forced"] is True and row["comparison"]["champion"]["id"] == a


def test_rule_always_promotes(world):
    a, b = world.model(GOOD), world.model(BAD)
    _decide(world, a)
    d = _decide(world, b, rule="always")
    assert d.decision == "promoted" and "rule 'always'" in d.reason and not d.forced


def test_unevaluated_or_champion_candidate_is_refused(world):
    a = world.model(GOOD, evaluated=False)
    with pytest.raises(UserError, match="has not been evaluated"):
        _decide(world, a)
    b = world.model(GOOD)
    _decide(world, b)
    with pytest.raises(UserError, match="already the champion"):
        _decide(world, b)
    with pytest.raises(UserError, match="no model version 999"):
        promote.decide(world.settings, 999)


def test_manual_promotion_and_rollback_chain(world):
    a, b, c = world.model(MEDIUM), world.model(GOOD), world.model(BAD)
    with pytest.raises(UserError, match="no champion to roll back"):
        promote.rollback(world.settings)
    _decide(world, a)
    with pytest.raises(UserError, match="no earlier champion"):
        promote.rollback(world.settings)
    _decide(world, b)
    assert promote.promote(world.settings, c, reason="hotfix").decision == "manual"
    assert world.statuses() == {a: "retired", b: "retired", c: "champion"}

    d = promote.rollback(world.settings)
    assert (d.candidate_id, d.champion_id, d.decision) == (b, c, "rollback")
    assert world.statuses() == {a: "retired", b: "champion", c: "retired"}
    assert promote.rollback(world.settings).candidate_id == a  # further back, not forward to c
    assert world.statuses() == {a: "champion", b: "retired", c: "retired"}
    with pytest.raises(UserError, match="no earlier champion"):
        promote.rollback(world.settings)
    assert [r["decision"] for r in world.decisions()] == ["promoted", "promoted", "manual", "rollback", "rollback"]
    with world.engine.connect() as conn:  # retired, never deleted
        assert conn.execute(select(func.count()).select_from(t.model_versions)).scalar() == 3


def test_never_two_champions(world):
    ids = [world.model(p) for p in (MEDIUM, GOOD, BAD, GOOD.copy())]
    for mid in ids:
        _decide(world, mid, force=True)
        assert list(world.statuses().values()).count("champion") == 1


def test_models_cli_lists_promotes_and_rolls_back(world, capsys):
    a, b = world.model(MEDIUM), world.model(GOOD)
    url = ["--database-url", world.settings.database_url, "--data-dir", str(world.settings.data_dir)]
    assert cli.main(url + ["models", "promote", str(a)]) == 0
    assert cli.main(url + ["models", "promote", str(b)]) == 0
    assert cli.main(url + ["models", "rollback"]) == 0
    assert world.statuses() == {a: "champion", b: "retired"}
    capsys.readouterr()
    assert cli.main(url + ["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:7] == ["id", "arch", "vocab", "labels", "train", "valid", "status"]
    assert out[2].startswith("*") and f" {a} " in out[2] and "champion" in out[2]
    # "*", id, arch, vocab, then: 3 labels, no training-set sizes (registered without them)
    assert out[2].split()[4:7] == ["3", "-", "-"]
    assert cli.main(url + ["models", "promote", "42"]) == 2


def test_models_list_shows_label_count_and_training_set_size(world, capsys):
    a = world.model(GOOD)
    with world.engine.begin() as conn:
        v3 = vocab_row(conn, ["a", "b", "c", "d"], [10, 9, 8, 7], n_images=5)
    b = world.model(GOOD, vocab=v3)
    with world.engine.begin() as conn:
        conn.execute(t.model_versions.update().where(t.model_versions.c.id == b)
                     .values(params={"n_train": 1525, "n_valid": 360}))
    rows = {r["id"]: r for r in promote.list_models(world.settings)}
    assert (rows[a]["n_labels"], rows[a]["n_train"], rows[a]["n_valid"]) == (3, None, None)
    assert (rows[b]["n_labels"], rows[b]["n_train"], rows[b]["n_valid"]) == (4, 1525, 360)
    url = ["--database-url", world.settings.database_url, "--data-dir", str(world.settings.data_dir)]
    assert cli.main(url + ["models"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.split()[:1] == [str(b)])
    assert line.split()[:6] == [str(b), "resnet18", str(v3), "4", "1525", "360"]
