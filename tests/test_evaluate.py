"""``evaluate`` with a real (tiny, untrained) model: stored metrics, label_metrics and thresholds in the
database (model.json untouched), idempotent re-runs, the CLI (evaluating only; ``instatag promote``
decides), a vocabulary change, a trained model."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from builders import LABELS, add_images, add_model, add_vocab
from sqlalchemy import func, select

from instatag import cli, db, evaluate, metrics, modelfile, promote, registry
from instatag import schema as t
from instatag.errors import UserError
from instatag.labels import is_valid


def _label_rows(settings, mid):
    with db.get_engine(settings).connect() as conn:
        return conn.execute(select(t.label_metrics).where(t.label_metrics.c.model_version_id == mid)
                            .order_by(t.label_metrics.c.label)).mappings().all()


def _status(settings, mid):
    with db.get_engine(settings).connect() as conn:
        return conn.execute(select(t.model_versions.c.status).where(t.model_versions.c.id == mid)).scalar()


def test_evaluate_stores_metrics_thresholds_and_is_idempotent(settings, tiny_model_dir):
    images = add_images(settings, 24)
    mid = add_model(settings, add_vocab(settings, images), tiny_model_dir)
    meta_file = settings.data_dir / "models" / str(mid) / modelfile.META
    before = meta_file.read_bytes()
    v = evaluate.validate(settings, mid)
    assert v.image_ids == [i for i, sha, _ in images if is_valid(sha, 0.5)]  # the vocabulary's valid_pct
    assert v.y_true.sum(axis=1).min() >= 1 and v.probs.shape == (len(v.image_ids), len(LABELS))

    summary = evaluate.evaluate(settings, mid, validation=v)
    expected = metrics.evaluate_predictions(v.y_true, v.probs, LABELS, v.counts,
                                            metrics.tune_thresholds(v.y_true, v.probs)[0])
    assert summary["model"] == expected["model"] and summary["baseline"] == expected["baseline"]
    assert summary["n_images"] == len(v.image_ids) and summary["vocab_version_id"] == v.vocab_version_id
    with db.get_engine(settings).connect() as conn:
        stored = conn.execute(select(t.model_versions.c.metrics).where(t.model_versions.c.id == mid)).scalar()
    assert stored == summary

    rows = _label_rows(settings, mid)
    assert [r["label"] for r in rows] == sorted(LABELS)
    tuned, global_t = metrics.tune_thresholds(v.y_true, v.probs)
    with db.get_engine(settings).connect() as conn:
        stored = registry.thresholds(conn, mid)
        row = registry.threshold_row(conn, mid, LABELS)
    assert stored.global_threshold == summary["global_threshold"] == pytest.approx(global_t)
    np.testing.assert_allclose(row, tuned)  # the thresholds every reader gets: the tuned ones, in label order
    for r in rows:
        assert r["threshold"] == stored.per_label[r["label"]] and r["threshold"] >= 0.05
        assert r["support"] == int(v.y_true[:, LABELS.index(r["label"])].sum())
        assert set(r["baseline"]) == {"precision", "recall", "f1", "ap"}
        assert summary["per_label_ap"][r["label"]] == {"ap": r["ap"], "baseline_ap": r["baseline"]["ap"],
                                                       "support": r["support"]}
    assert meta_file.read_bytes() == before  # model.json stays what training wrote

    again = evaluate.evaluate(settings)  # the newest candidate, predicted again: same numbers
    assert again["model"]["dominant_recall@2"] == pytest.approx(summary["model"]["dominant_recall@2"])
    assert len(_label_rows(settings, mid)) == len(LABELS)


def test_evaluate_stores_dominant_recall_under_both_rankings(sqlite_settings, tiny_model_dir, tmp_path):
    """Whatever the model's own ranking, the evaluation stores the top-k metrics under probability
    order and under dominant_first; the headline metrics follow the model's ranking."""
    from instatag import ranking

    s = sqlite_settings
    images = add_images(s, 24)
    vocab = add_vocab(s, images)
    by_probability = add_model(s, vocab, tiny_model_dir)  # no ranking in model.json: by probability
    v = evaluate.validate(s, by_probability)
    summary = evaluate.evaluate(s, by_probability, validation=v)
    order = metrics.frequency_order(LABELS, v.counts)
    expected = {name: metrics.ranked_metrics(v.y_true, ranking.rank_scores(v.probs, name, order), LABELS, v.counts)
                for name in ranking.RANKINGS}
    assert summary["ranking"] == "probability" and summary["model_by_ranking"] == expected
    assert {k: summary["model"][k] for k in metrics.RANKED_METRICS} == expected["probability"]
    assert expected["probability"] != expected["dominant_first"]  # the orders differ on these images

    other = tmp_path / "dominant-first"
    shutil.copytree(tiny_model_dir, other)
    modelfile.update_meta(other, ranking="dominant_first", frequency_order=[LABELS[j] for j in order])
    dominant = add_model(s, vocab, other)
    summary = evaluate.evaluate(s, dominant)
    assert summary["ranking"] == "dominant_first" and summary["model_by_ranking"] == expected
    assert {k: summary["model"][k] for k in metrics.RANKED_METRICS} == expected["dominant_first"]
    table = evaluate.format_table(summary)
    assert "labels ranked dominant_first (the model's ranking)" in table
    for name in ranking.RANKINGS:
        line = next(line for line in table.splitlines() if line.startswith(name + " "))
        assert all(f"{expected[name][k]:.3f}" in line for k in ("dominant_recall@1", "dominant_recall@2"))

    # promotion compares both models in the candidate's ranking: the same weights ranked otherwise tie
    promote.promote(s, dominant, reason="test")
    d = promote.decide(s, by_probability)
    assert d.comparison["ranking"] == "probability" and d.decision == "promoted", d.reason
    assert d.comparison["candidate"]["metrics"] == d.comparison["champion"]["metrics"]


def test_per_label_ap_table_says_which_tags_are_learned():
    summary = {"per_label_ap": {"bibimbap": {"ap": 0.91, "baseline_ap": 0.10, "support": 30},
                                "healthy": {"ap": 0.45, "baseline_ap": 0.20, "support": 40},
                                "foodie": {"ap": 0.33, "baseline_ap": 0.30, "support": 60},
                                "empty": {"ap": None, "baseline_ap": None, "support": 0}}}
    lines = evaluate.format_label_ap(summary).splitlines()
    rows = [line.split() for line in lines[2:-2]]
    assert [r[0] for r in rows] == ["bibimbap", "healthy", "foodie"]  # highest AP first
    assert lines[-1] == "no AP (no positive among the validation images): empty"
    assert [r[-1] for r in rows] == ["well", "partly", "hardly"]
    assert rows[0][1:4] == ["30", "0.910", "0.100"]
    assert evaluate.format_label_ap({}) == ""


def test_evaluate_errors(settings, tiny_model_dir):
    with pytest.raises(UserError, match="no candidate model"):
        evaluate.evaluate(settings)
    with pytest.raises(UserError, match="no model version 5"):
        evaluate.evaluate(settings, 5)
    images = add_images(settings, 6)
    mid = add_model(settings, add_vocab(settings, images, valid_pct=1e-9), tiny_model_dir)
    with pytest.raises(UserError, match="no labelled image in the validation split"):
        evaluate.evaluate(settings, mid)
    ok = add_model(settings, add_vocab(settings, images, valid_pct=0.9), tiny_model_dir)
    (settings.data_dir / "models" / str(ok) / modelfile.WEIGHTS).write_bytes(b"tampered")
    with pytest.raises(modelfile.HashMismatch):
        evaluate.evaluate(settings, ok)


@pytest.mark.slow
def test_evaluate_cli_evaluates_only_and_promote_decides(sqlite_settings, tiny_model_dir, capsys):  # noqa: F811
    s = sqlite_settings
    base = ["--database-url", s.database_url, "--data-dir", str(s.data_dir)]
    images = add_images(s, 16)
    vocab = add_vocab(s, images)
    first = add_model(s, vocab, tiny_model_dir)
    assert cli.main(base + ["evaluate"]) == 0
    out = capsys.readouterr().out
    assert f"model version {first}" in out and "dominant_recall@2" in out and "baseline" in out
    assert f"`instatag promote {first}`" in out and "promoted" not in out
    assert "per-label AP, highest first" in out and "learned" in out
    assert cli.main(base + ["evaluate", "0"]) != 0  # 0 is no model version, not "the newest candidate"
    assert "model version 0" in capsys.readouterr().err
    with db.get_engine(s).connect() as conn:
        assert registry.champion_id(conn) is None and _status(s, first) == "candidate"
        assert conn.execute(select(func.count()).select_from(t.promotion_decisions)).scalar() == 0
    assert cli.main(base + ["promote"]) == 0  # the newest candidate
    assert f"model version {first}: promoted: no champion yet" in capsys.readouterr().out
    # the same weights again: a tie on the same images is not worse
    second = add_model(s, vocab, tiny_model_dir)
    assert cli.main(base + ["evaluate", str(second)]) == 0
    assert _status(s, second) == "candidate"
    d = promote.decide(s, second)
    assert d.decision == "promoted" and "not worse" in d.reason
    cand, champ = d.comparison["candidate"]["metrics"], d.comparison["champion"]["metrics"]
    assert cand["map"] == pytest.approx(champ["map"]) and not d.comparison["vocabulary_changed"]
    assert (_status(s, first), _status(s, second)) == ("retired", "champion")
    assert cli.main(base + ["models", "rollback"]) == 0
    assert _status(s, first) == "champion"
    capsys.readouterr()
    assert cli.main(base + ["evaluate", str(first)]) == 0  # re-evaluating the champion decides nothing
    assert _status(s, first) == "champion"
    assert cli.main(base + ["promote", str(first)]) == 0  # nor does promoting it again
    assert f"model version {first} is the champion already" in capsys.readouterr().out
    assert cli.main(base + ["promote", "99"]) == 2
    assert "no model version 99" in capsys.readouterr().err


@pytest.mark.slow
def test_vocabulary_change_with_real_models(sqlite_settings, tiny_model_dir, tmp_path):
    s = sqlite_settings
    images = add_images(s, 16)
    champ = add_model(s, add_vocab(s, images), tiny_model_dir)
    evaluate.evaluate(s, champ)
    promote.decide(s, champ)
    # a new vocabulary: 'tomato' gone, 'bowl' new, the rest reordered
    new_labels = ["soup", "salad", "cake", "dessert", "tart", "bowl"]
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    modelfile.update_meta(other, labels=new_labels)
    cand = add_model(s, add_vocab(s, images, labels=new_labels), other)
    evaluate.evaluate(s, cand)
    d = promote.decide(s, cand)
    c = d.comparison
    assert c["vocabulary_changed"] and c["labels_compared"] == 5
    assert c["labels_candidate_only"] == ["bowl"] and c["labels_champion_only"] == ["tomato"]
    assert "vocabulary changed" in d.reason and "5 labels both share" in d.reason
    assert c["candidate"]["metrics"]["n_labels"] == 5 and c["champion"]["metrics"]["n_labels"] == 5
    with db.get_engine(s).connect() as conn:
        rows = conn.execute(select(func.count()).select_from(t.promotion_decisions)).scalar()
    assert rows == 2


@pytest.mark.slow
def test_a_trained_model_evaluates_and_scores(sqlite_settings):
    """train.py's output is what evaluate and score expect (size 32, no pretrained weights, 1+1 epochs)."""
    from instatag import score
    from instatag.train import TrainConfig, train

    s = sqlite_settings
    images = add_images(s, 24)
    vocab = add_vocab(s, images)
    mid = train(s, TrainConfig(arch="resnet18", size=32, epochs=1, freeze_epochs=1, lr=1e-3, bs=8,
                               pretrained=False), vocab_version_id=vocab)
    summary = evaluate.evaluate(s, mid)
    assert summary["n_images"] > 0 and 0 <= summary["model"]["map"] <= 1
    assert promote.decide(s, mid).promoted
    report = score.score(s, new=False)
    assert report.n_images == 24 and report.n_rows >= 48
    assert np.isfinite(summary["model"]["dominant_recall@1"])


def _verify(settings, image_ids, verdicts):
    """Record ``verdicts`` ([(label, verdict)]) on every image of ``image_ids``."""
    from instatag import feedback

    with db.get_engine(settings).begin() as conn:
        for i in image_ids:
            for label, verdict in verdicts:
                feedback.record(conn, i, label, verdict, "ann", None)


def test_verified_images_get_their_own_metrics_from_the_minimum_on(sqlite_settings, tiny_model_dir, capsys):
    s = sqlite_settings
    images = add_images(s, 80)
    mid = add_model(s, add_vocab(s, images), tiny_model_dir)
    v = evaluate.validate(s, mid)
    few = v.image_ids[:evaluate.MIN_VERIFIED_IMAGES - 1]
    _verify(s, few, [(LABELS[0], "confirmed")])
    summary = evaluate.evaluate(s, mid, validation=v)
    assert summary["verified"] == {"n_images": len(few), "min_images": evaluate.MIN_VERIFIED_IMAGES}
    assert f"verified: {len(few)} validation images" in evaluate.format_table(summary)

    # every validation image verified: the first label confirmed, every other label rejected
    _verify(s, v.image_ids, [(LABELS[0], "confirmed")] + [(label, "rejected") for label in LABELS[1:]])
    train_only = [i for i, sha, _ in images if i not in set(v.image_ids)][:3]
    _verify(s, train_only, [(LABELS[1], "confirmed")])  # training-split images are not evaluation images
    summary = evaluate.evaluate(s, mid, validation=v)
    ver = summary["verified"]
    assert ver["n_images"] == len(v.image_ids) >= evaluate.MIN_VERIFIED_IMAGES
    truth = np.zeros_like(v.y_true)
    truth[:, 0] = True
    rows = sorted(_label_rows(s, mid), key=lambda r: LABELS.index(r["label"]))
    thresholds = np.array([r["threshold"] for r in rows])
    expected = metrics.evaluate_predictions(truth, v.probs, LABELS, v.counts, thresholds, v.ranks)
    assert ver["model"] == pytest.approx(expected["model"], nan_ok=True)
    assert ver["model"] != summary["model"]
    with db.get_engine(s).connect() as conn:
        assert conn.execute(select(t.model_versions.c.metrics).where(t.model_versions.c.id == mid)
                            ).scalar()["verified"]["n_images"] == ver["n_images"]
    table = evaluate.format_table(summary)
    assert "verified model" in table and f"on the {ver['n_images']} validation images whose labels people" in table


@pytest.mark.slow
def test_promotion_can_decide_on_the_verified_set(sqlite_settings, tiny_model_dir):
    import dataclasses

    s = dataclasses.replace(sqlite_settings, promotion_set="verified")
    images = add_images(s, 80)
    vocab = add_vocab(s, images)
    first = add_model(s, vocab, tiny_model_dir)
    evaluate.evaluate(s, first)
    promote.promote(s, first)
    second = add_model(s, vocab, tiny_model_dir)
    evaluate.evaluate(s, second)
    d = promote.decide(s, second)
    assert "promotion set 'verified' has 0 verified validation images, fewer than 30: decided on uploader" in d.reason
    v = evaluate.validate(s, second)
    _verify(s, v.image_ids, [(LABELS[0], "confirmed")])
    third = add_model(s, vocab, tiny_model_dir)
    evaluate.evaluate(s, third)
    d = promote.decide(s, third)
    assert d.reason.startswith(f"on the {len(v.image_ids)} verified validation images")
    assert d.comparison["valid_image_ids_sha256"] == evaluate.verified_validation(s, v)[0].ids_sha256
