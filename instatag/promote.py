"""Champion decisions: promote a candidate only when it is not worse than the champion.

``decide`` compares a candidate with the champion on the same images: the candidate's validation
split, the champion re-run on it, both with their labels in the candidate's ranking
(``instatag.ranking``), so neither wins by its label order alone. When the two vocabulary versions
differ, both are scored on the labels they share, and the labels only one of them has are recorded
(the reason names them). Rule ``no_worse`` (default): promote iff the candidate lost no label the
champion predicts and its dominant_recall@2 and mAP are each at least the champion's — a candidate
with fewer labels is never "not worse" on the labels it kept alone; rule ``always``: promote.
``force`` promotes regardless. Every decision is a ``promotion_decisions`` row; a promotion retires
the old champion (never deletes it) in the same transaction (``registry.crown``), so there is never
more than one champion.

``instatag promote [MODEL_VERSION]`` and the retrain DAG's ``promote`` task run ``decide_once`` after
``instatag evaluate``; evaluating never promotes. This module imports ``evaluate`` (the validation
split, the models' probabilities), never the reverse. Model rows, the champion and each model's
tuned thresholds come from ``instatag.registry``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import numpy as np

from . import metrics, ranking
from .errors import UserError

log = logging.getLogger(__name__)

#: metrics the no_worse rule compares
RULE_METRICS = ("dominant_recall@2", "map")
#: pg_advisory_xact_lock key serialising champion changes
LOCK_KEY = 7_305_001
TOLERANCE = 1e-9


@dataclass(frozen=True)
class Decision:
    candidate_id: int
    champion_id: int | None  # the champion before the decision
    decision: str  # promoted | rejected | manual | rollback
    reason: str
    forced: bool = False
    comparison: dict | None = field(default=None, repr=False)

    @property
    def promoted(self) -> bool:
        return self.decision != "rejected"

    def as_dict(self) -> dict:
        return {"candidate_id": self.candidate_id, "champion_id": self.champion_id, "decision": self.decision,
                "reason": self.reason, "forced": self.forced, "promoted": self.promoted}


# --------------------------------------------------------------------------- comparison
def _thresholds(conn, model_version_id: int):
    """The model's tuned thresholds (``registry.thresholds``); a model never evaluated (a manual
    promotion) gets the fallback threshold for every label."""
    from . import registry

    return registry.thresholds(conn, model_version_id) or registry.Thresholds({}, None)


def compare(settings, candidate, champion: int) -> dict:
    """Both models' metrics on the candidate's validation images (``candidate`` is an
    ``evaluate.Validation``), restricted to the labels both vocabularies share."""
    from . import db, registry
    from .evaluate import predict_probs

    with db.get_engine(settings).connect() as conn:
        champ_vocab = registry.vocab_version_id(conn, champion)
        cand_t = _thresholds(conn, candidate.model_version_id)
        champ_t = _thresholds(conn, champion)
    champ_labels, champ_probs, _ = predict_probs(settings, champion, candidate.paths)
    champ_index = {label: j for j, label in enumerate(champ_labels)}
    shared = [label for label in candidate.labels if label in champ_index]
    cols = [candidate.labels.index(label) for label in shared]
    champ_cols = [champ_index[label] for label in shared]
    y, counts = candidate.y_true[:, cols], candidate.counts[cols]
    cand_probs, champ_probs = candidate.probs[:, cols], champ_probs[:, champ_cols]
    # Both models' labels in the same order (the candidate's ranking, the shared labels' frequencies), so
    # a champion ranked dominant_first is not preferred over a candidate ranked by probability, or the
    # reverse, for its order alone.
    order = metrics.frequency_order(shared, counts)
    cand = metrics.evaluate_predictions(y, cand_probs, shared, counts, cand_t.row(shared),
                                        ranking.rank_scores(cand_probs, candidate.ranking, order))
    champ = metrics.evaluate_predictions(y, champ_probs, shared, counts, champ_t.row(shared),
                                         ranking.rank_scores(champ_probs, candidate.ranking, order))
    return {
        "candidate": {"id": candidate.model_version_id, "vocab_version_id": candidate.vocab_version_id,
                      "metrics": cand["model"]},
        "champion": {"id": champion, "vocab_version_id": champ_vocab, "metrics": champ["model"]},
        "baseline": cand["baseline"],
        "n_images": int(y.any(axis=1).sum()),
        "ranking": candidate.ranking,
        "valid_image_ids_sha256": candidate.ids_sha256,
        "vocabulary_changed": champ_vocab != candidate.vocab_version_id,
        "labels_compared": len(shared),
        "labels_candidate_only": sorted(set(candidate.labels) - set(shared)),
        "labels_champion_only": sorted(set(champ_labels) - set(shared)),
    }


def _num(value) -> float:
    return -np.inf if value is None else float(value)


def apply_rule(comparison: dict, rule: str) -> tuple[bool, str]:
    """(promote?, reason) for a comparison under ``rule`` (``no_worse`` or ``always``). ``no_worse``
    refuses a candidate that shares no label with the champion, that lost labels the champion
    predicts (the reason names them), or that is worse in any of ``RULE_METRICS``."""
    cand, champ = comparison["candidate"]["metrics"], comparison["champion"]["metrics"]
    parts = [f"{key} {_fmt(cand.get(key))} vs champion {_fmt(champ.get(key))}" for key in RULE_METRICS]
    lost, gained = comparison["labels_champion_only"], comparison["labels_candidate_only"]
    where = f"on {comparison['n_images']} validation images"
    if comparison["vocabulary_changed"]:
        where += (f"; vocabulary changed (version {comparison['champion']['vocab_version_id']} → "
                  f"{comparison['candidate']['vocab_version_id']}): compared on the "
                  f"{comparison['labels_compared']} labels both share")
        where += "".join(f"; {what} {len(names)} label{'s' * (len(names) != 1)} ({_names(names)})"
                         for what, names in (("lost", lost), ("gained", gained)) if names)
    if rule == "always":
        return True, f"rule 'always': {', '.join(parts)} {where}"
    if rule != "no_worse":
        raise UserError(f"unknown promotion rule {rule!r}: no_worse or always")
    if not comparison["labels_compared"]:
        return False, f"the vocabularies share no label, so the models cannot be compared ({where}); use force"
    if lost:
        return False, (f"the candidate's vocabulary lost {len(lost)} label{'s' * (len(lost) != 1)} the champion "
                       f"predicts ({_names(lost)}), so it is not 'not worse' whatever its scores on the labels it "
                       f"kept: {', '.join(parts)} {where}; group or keep those labels (min_count, the grouping "
                       "file), or use force")
    worse = [key for key in RULE_METRICS if _num(cand.get(key)) < _num(champ.get(key)) - TOLERANCE]
    if worse:
        return False, f"worse than the champion in {' and '.join(worse)}: {', '.join(parts)} {where}"
    return True, f"not worse than the champion: {', '.join(parts)} {where}"


def _names(labels: list[str], most: int = 10) -> str:
    return ", ".join(labels[:most]) + (f", ... {len(labels) - most} more" if len(labels) > most else "")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


# --------------------------------------------------------------------------- decisions
def decide(settings, candidate_id: int, force: bool = False, rule: str | None = None, validation=None) -> Decision:
    """Promote ``candidate_id`` or not, record the decision, return it. ``validation``: the candidate's
    ``evaluate.Validation`` when the caller has it (saves re-running the candidate)."""
    from . import db, registry
    from .evaluate import validate

    rule = rule or settings.promotion_rule
    with db.get_engine(settings).connect() as conn:
        row = registry.row(conn, candidate_id)
        current = registry.champion_id(conn)
    if row["status"] == "champion":
        raise UserError(f"model version {candidate_id} is already the champion")
    if not row["metrics"]:
        raise UserError(f"model version {candidate_id} has not been evaluated: run `instatag evaluate {candidate_id}`")
    if current is None:
        return _record(settings, candidate_id, None, "promoted", "no champion yet", forced=force)
    comparison, error, note = None, None, ""
    try:
        candidate = validation or validate(settings, candidate_id)
        if settings.promotion_set == "verified":
            candidate, note = _verified(settings, candidate)
        comparison = compare(settings, candidate, current)
    except UserError as exc:
        if not force:
            raise UserError(f"cannot compare model version {candidate_id} with the champion {current}: {exc}; "
                            "use force to promote anyway") from exc
        error = str(exc)
    if force:
        reason = "forced" + (f" (comparison failed: {error})" if error else
                             f" ({apply_rule(comparison, 'no_worse')[1]})")
        return _record(settings, candidate_id, current, "promoted", reason, forced=True, comparison=comparison)
    ok, reason = apply_rule(comparison, rule)
    reason = note + reason
    return _record(settings, candidate_id, current, "promoted" if ok else "rejected", reason, comparison=comparison)


def decide_once(settings, candidate_id: int, force: bool = False) -> Decision:
    """``decide``, except for the champion itself: then nothing is recorded and the Decision says
    "already the champion", so running it again (the retrain DAG's promote task, ``instatag promote``)
    changes nothing."""
    from . import db, registry

    with db.get_engine(settings).connect() as conn:
        current = registry.champion_id(conn)
    if current == candidate_id:
        return Decision(candidate_id, current, "promoted", "already the champion")
    return decide(settings, candidate_id, force=force)


def _verified(settings, candidate):
    """(the Validation to compare on, a note for the reason) under INSTATAG_PROMOTION_SET=verified: the
    candidate's verified validation images, or its uploader-label set while there are too few."""
    from .evaluate import MIN_VERIFIED_IMAGES, verified_validation

    verified, n = verified_validation(settings, candidate)
    if verified is None:
        return candidate, (f"promotion set 'verified' has {n} verified validation images, fewer than "
                           f"{MIN_VERIFIED_IMAGES}: decided on uploader labels; ")
    return verified, f"on the {n} verified validation images (people's verdicts): "


def promote(settings, version: int, reason: str = "manual") -> Decision:
    """Make ``version`` the champion without a comparison (``instatag models promote``)."""
    from . import db, registry

    with db.get_engine(settings).connect() as conn:
        row = registry.row(conn, version)
        current = registry.champion_id(conn)
    if row["status"] == "champion":
        raise UserError(f"model version {version} is already the champion")
    return _record(settings, version, current, "manual", reason)


def rollback(settings) -> Decision:
    """Bring back the champion before the current one (the current one is retired)."""
    from . import db, registry

    with db.get_engine(settings).connect() as conn:
        current = registry.champion_id(conn)
        if current is None:
            raise UserError("there is no champion to roll back")
        stack = _champion_history(conn)
    if len(stack) < 2 or stack[-1] != current:
        raise UserError(f"model version {current} is the champion and there is no earlier champion to roll back to")
    previous = stack[-2]
    return _record(settings, previous, current, "rollback", f"rollback: model version {current} retired, "
                   f"{previous} is champion again")


def _champion_history(conn) -> list[int]:
    """The champions in order, as the recorded decisions make them (a rollback pops the last)."""
    from sqlalchemy import select

    from . import schema as t

    d = t.promotion_decisions
    stack: list[int] = []
    rows = conn.execute(select(d.c.candidate_id, d.c.decision).where(d.c.decision != "rejected").order_by(d.c.id))
    for cand, decision in rows:
        if decision == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != cand:
                stack.append(cand)
        else:
            stack.append(cand)
    return stack


def _record(settings, candidate_id: int, expected_champion: int | None, decision: str, reason: str,
            forced: bool = False, comparison: dict | None = None) -> Decision:
    """Write the decision; for a promotion, retire the champion and crown the candidate, all in one
    transaction that fails if the champion changed since ``expected_champion`` was read."""
    from sqlalchemy import insert, text

    from . import db, registry
    from . import schema as t

    engine = db.get_engine(settings)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
        if registry.champion_id(conn) != expected_champion:
            raise UserError("the champion changed while this decision was being made; run it again")
        if decision != "rejected":
            registry.crown(conn, candidate_id)
        conn.execute(insert(t.promotion_decisions).values(
            candidate_id=candidate_id, champion_id=expected_champion, decision=decision, reason=reason,
            forced=forced, comparison=comparison))
    log.info("model version %d: %s (%s)", candidate_id, decision, reason)
    return Decision(candidate_id, expected_champion, decision, reason, forced, comparison)


# --------------------------------------------------------------------------- listing and CLI
def list_models(settings) -> list[dict]:
    """Every model version, newest first, with its status, headline metrics, its vocabulary's label
    count (``n_labels``) and its training and validation set sizes (``n_train``, ``n_valid``: images,
    from ``model_versions.params``; None for a model registered without them)."""
    from sqlalchemy import select

    from . import db
    from . import schema as t

    mv, vv = t.model_versions, t.vocab_versions
    with db.get_engine(settings).connect() as conn:
        rows = conn.execute(select(mv, vv.c.n_labels).join(vv, vv.c.id == mv.c.vocab_version_id)
                            .order_by(mv.c.id.desc())).mappings().all()
    out = []
    for r in rows:
        m = (r["metrics"] or {}).get("model", {})
        b = (r["metrics"] or {}).get("baseline", {})
        out.append({"id": r["id"], "arch": r["arch"], "vocab_version_id": r["vocab_version_id"], "status": r["status"],
                    "created_at": r["created_at"], "promoted_at": r["promoted_at"], "n_labels": r["n_labels"],
                    "n_train": (r["params"] or {}).get("n_train"), "n_valid": (r["params"] or {}).get("n_valid"),
                    **{key: m.get(key) for key in ("dominant_recall@1", "dominant_recall@2", "map")},
                    "baseline_dominant_recall@2": b.get("dominant_recall@2")})
    return out


def _promote_cmd(args, settings) -> int:
    from . import db, registry

    with db.get_engine(settings).connect() as conn:
        model_id = registry.resolve(conn, args.model_version if args.model_version is not None else "candidate")
    d = decide_once(settings, model_id, force=args.force)
    if d.reason == "already the champion":
        print(f"model version {model_id} is the champion already")
    else:
        print(f"model version {model_id}: {d.decision}: {d.reason}")
    return 0


def _models_cmd(args, settings) -> int:
    if args.models_command == "promote":
        d = promote(settings, args.version, reason=args.reason)
        print(f"model version {d.candidate_id} is the champion ({d.reason})")
        return 0
    if args.models_command == "rollback":
        d = rollback(settings)
        print(d.reason)
        return 0
    rows = list_models(settings)
    if not rows:
        print("no model versions yet: train one with `instatag train`", file=sys.stderr)
        return 0
    print(f"  {'id':>4} {'arch':16} {'vocab':>5} {'labels':>6} {'train':>6} {'valid':>5} {'status':9} "
          f"{'created':16} {'dr@1':>6} {'dr@2':>6} {'mAP':>6} {'base dr@2':>9}")
    for r in rows:
        mark = "*" if r["status"] == "champion" else " "
        created = r["created_at"].strftime("%Y-%m-%d %H:%M") if r["created_at"] else ""
        print(f"{mark} {r['id']:>4} {r['arch']:16} {r['vocab_version_id']:>5} {r['n_labels']:>6} "
              f"{_count(r['n_train']):>6} {_count(r['n_valid']):>5} {r['status']:9} {created:16} "
              f"{_short(r['dominant_recall@1'])} {_short(r['dominant_recall@2'])} {_short(r['map'])} "
              f"{_short(r['baseline_dominant_recall@2']):>9}")
    return 0


def _count(value) -> str:
    return "-" if value is None else str(value)


def _short(value) -> str:
    return f"{'-':>6}" if value is None else f"{value:6.3f}"


def add_cli(sub) -> None:
    pd = sub.add_parser(
        "promote",
        help="compare an evaluated model with the champion and promote it when it is not worse",
        description="Compare MODEL_VERSION (default: the newest candidate), evaluated by `instatag evaluate`, "
        "with the champion on the candidate's validation images and make it the champion when it is not worse "
        "(INSTATAG_PROMOTION_RULE; the first model becomes champion at once). The decision is recorded either "
        "way; the champion itself is left as it is. `instatag models promote VERSION` promotes without comparing.",
    )
    pd.add_argument("model_version", nargs="?", type=int, metavar="MODEL_VERSION",
                    help="model version id (default: the newest candidate)")
    pd.add_argument("--force", action="store_true", help="promote whatever the comparison with the champion says")
    pd.set_defaults(handler=_promote_cmd)
    p = sub.add_parser(
        "models",
        help="list model versions with metrics and status; promote or roll back the champion",
        description="Without a subcommand: list every model version (newest first; * marks the champion) "
        "with its vocabulary version and label count, its training and validation images, "
        "dominant_recall@1/@2 and mAP on its validation split, and the popularity baseline's "
        "dominant_recall@2.",
    )
    p.set_defaults(handler=_models_cmd, models_command=None)
    msub = p.add_subparsers(dest="models_command", metavar="COMMAND")
    pr = msub.add_parser("promote", help="make VERSION the champion without comparing (the old one is retired)",
                         description="Make VERSION the champion now, whatever its metrics; the current champion "
                         "is retired and the decision recorded as 'manual'.")
    pr.add_argument("version", type=int, metavar="VERSION", help="model version id")
    pr.add_argument("--reason", default="manual", help="recorded with the decision")
    pr.set_defaults(handler=_models_cmd)
    rb = msub.add_parser("rollback", help="bring back the previous champion (the current one is retired)",
                         description="Retire the current champion and make the champion before it champion "
                         "again; recorded as 'rollback'. Repeat to go further back.")
    rb.set_defaults(handler=_models_cmd)
