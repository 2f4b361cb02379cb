"""The model registry: model versions, their status and their tuned thresholds, read in one place.

Every stage that names a model goes through here: ``resolve`` turns what a user or a task wrote
("champion", "latest", "candidate" or a version number) into a model version id, ``row`` reads a
version's ``model_versions`` row, ``champion_id`` finds the champion, ``crown`` changes it (inside the
caller's transaction, ``promote._record``), and ``thresholds`` reads the per-label thresholds the
evaluation tuned. Functions take an open SQLAlchemy connection, so a caller reads several facts in one
transaction; none imports torch.

Thresholds have one owner, the database, written by ``evaluate._store`` in one transaction with the
rest of the evaluation: ``label_metrics.threshold`` per label and ``model_versions.metrics
["global_threshold"]`` for a label without one. ``model.json`` holds what training wrote and no
thresholds (a ``thresholds`` field in files written before this module is ignored).

Statuses (``model_versions.status``): ``candidate`` (registered by training), ``champion`` (at most
one), ``retired`` (a former champion).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import UserError

CANDIDATE, CHAMPION, RETIRED = "candidate", "champion", "retired"
STATUSES = (CANDIDATE, CHAMPION, RETIRED)
#: the references ``resolve`` takes besides a version number
REFERENCES = ("champion", "latest", "candidate")
#: the threshold of a label with no tuned one when the evaluation stored no global threshold either
FALLBACK_THRESHOLD = 0.5


def row(conn, model_version_id: int) -> Mapping:
    """The ``model_versions`` row of a version (a mapping of its columns); UserError when there is none."""
    from sqlalchemy import select

    from . import schema as t

    found = conn.execute(select(t.model_versions).where(t.model_versions.c.id == int(model_version_id))
                         ).mappings().first()
    if found is None:
        raise UserError(f"there is no model version {model_version_id} (see `instatag models`)")
    return found


def exists(conn, model_version_id: int) -> bool:
    from sqlalchemy import select

    from . import schema as t

    mv = t.model_versions.c
    return conn.execute(select(mv.id).where(mv.id == int(model_version_id))).first() is not None


def champion_id(conn) -> int | None:
    """The champion's id, None when there is none; RuntimeError when the database holds several (it was
    changed outside instatag: ``crown`` keeps at most one)."""
    from sqlalchemy import select

    from . import schema as t

    mv = t.model_versions.c
    ids = conn.execute(select(mv.id).where(mv.status == CHAMPION)).scalars().all()
    if len(ids) > 1:
        raise RuntimeError(f"several champions {ids}: the database was changed outside instatag")
    return int(ids[0]) if ids else None


def newest_id(conn, status: str | None = None) -> int | None:
    """The newest model version's id (with ``status`` when given), None when there is none."""
    from sqlalchemy import func, select

    from . import schema as t

    mv = t.model_versions.c
    q = select(func.max(mv.id))
    if status is not None:
        q = q.where(mv.status == status)
    mid = conn.execute(q).scalar()
    return None if mid is None else int(mid)


def resolve(conn, ref: str | int) -> int:
    """The model version id ``ref`` names: "champion", "latest" (the newest version), "candidate" (the
    newest candidate) or a version number (int or digits). UserError saying what to do when there is no
    such version."""
    if isinstance(ref, str) and ref.strip().lower() in REFERENCES:
        name = ref.strip().lower()
        mid = champion_id(conn) if name == "champion" else newest_id(conn, CANDIDATE if name == "candidate" else None)
        if mid is None:
            raise UserError({
                "champion": "there is no champion model yet: train and evaluate one (`instatag train`, "
                            "`instatag evaluate`), promote it (`instatag promote`) or name a version",
                "latest": "there is no model version yet: train one with `instatag train`",
                "candidate": "there is no candidate model: train one with `instatag train`",
            }[name])
        return mid
    try:
        mid = int(ref)
    except (TypeError, ValueError):
        raise UserError(f"a model is 'champion', 'latest', 'candidate' or a model version number, "
                        f"not {ref!r}") from None
    if isinstance(ref, bool) or mid < 1 or not exists(conn, mid):
        raise UserError(f"there is no model version {ref} (see `instatag models`)")
    return mid


def find(settings, ref: str | int) -> int:
    """``resolve`` on a connection of its own: the model version id ``ref`` names (``--model`` of
    ``instatag score``, ``predict``, ``explain``)."""
    from . import db

    with db.get_engine(settings).connect() as conn:
        return resolve(conn, ref)


def vocab_version_id(conn, model_version_id: int) -> int:
    """The vocabulary version a model version was trained on."""
    return int(row(conn, model_version_id)["vocab_version_id"])


def crown(conn, model_version_id: int) -> None:
    """Retire the champion (if any) and make ``model_version_id`` the champion, with ``promoted_at`` now;
    in the caller's transaction (which also checks who was champion: ``promote._record``)."""
    from sqlalchemy import func, update

    from . import schema as t

    mv = t.model_versions
    conn.execute(update(mv).where(mv.c.status == CHAMPION).values(status=RETIRED))
    conn.execute(update(mv).where(mv.c.id == int(model_version_id)).values(status=CHAMPION, promoted_at=func.now()))


# --------------------------------------------------------------------------- thresholds
@dataclass(frozen=True)
class Thresholds:
    """A model version's tuned thresholds: ``per_label`` ({label: threshold}) and ``global_threshold``
    (for a label without one; None when the evaluation stored none)."""

    per_label: dict[str, float]
    global_threshold: float | None

    @property
    def default(self) -> float:
        """The threshold of a label without its own: the global one, else ``FALLBACK_THRESHOLD``."""
        return FALLBACK_THRESHOLD if self.global_threshold is None else float(self.global_threshold)

    def row(self, labels: Sequence[str]) -> np.ndarray:
        """Thresholds in ``labels`` order (float64 ``[len(labels)]``), ``default`` where a label has none."""
        from .metrics import thresholds_for

        return thresholds_for(labels, self.per_label, self.default)


def thresholds(conn, model_version_id: int) -> Thresholds | None:
    """The thresholds ``instatag evaluate`` tuned for a model version (``label_metrics.threshold`` and
    ``model_versions.metrics["global_threshold"]``), None while it is not evaluated (``metrics`` empty).
    UserError when there is no such version."""
    from sqlalchemy import select

    from . import schema as t

    summary = row(conn, model_version_id)["metrics"]
    if not summary:
        return None
    lm = t.label_metrics.c
    per_label = {r.label: float(r.threshold) for r in conn.execute(
        select(lm.label, lm.threshold).where(lm.model_version_id == int(model_version_id))) if r.threshold is not None}
    glob = summary.get("global_threshold")
    return Thresholds(per_label, None if glob is None else float(glob))


def threshold_row(conn, model_version_id: int, labels: Sequence[str]) -> np.ndarray | None:
    """``thresholds(...).row(labels)``, or None while the model version is not evaluated."""
    found = thresholds(conn, model_version_id)
    return None if found is None else found.row(labels)


def require_thresholds(settings, model_version_id: int, labels: Sequence[str]) -> np.ndarray:
    """The threshold row of an evaluated model version; UserError naming ``instatag evaluate`` otherwise
    (scoring and drop grading need tuned thresholds)."""
    from . import db

    with db.get_engine(settings).connect() as conn:
        found = threshold_row(conn, model_version_id, labels)
    if found is None:
        raise UserError(f"model version {model_version_id} has no tuned thresholds: run "
                        f"`instatag evaluate {model_version_id}`")
    return found
