"""The pipeline's stages as task-sized functions: what the Airflow tasks (``dags/``) and ``instatag demo`` call.

Each function does one stage through its stage module, loads the settings itself
(``settings()``) and takes and returns only JSON-able values (ids, counts, paths as strings), so
Airflow can pass them through XCom. Models reach workers by id: the file's path is in the
database. Heavy imports (torch, fastai) happen inside the stage modules' functions, so importing
this module — as every DAG file does at parse time — stays cheap.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

from .errors import UserError
from .settings import Settings, load_settings

log = logging.getLogger(__name__)

#: Airflow Asset the ingest DAG updates when new images arrived; the scoring DAG runs on it
IMAGES_ASSET = "instatag_images"
#: Airflow Asset the retrain DAG updates when it promoted a new champion; the scoring DAG runs on it
CHAMPION_ASSET = "instatag_champion"
#: Airflow connection id for the instatag database (``AIRFLOW_CONN_INSTATAG_DB`` or one made in the UI)
CONN_ID = "instatag_db"


# --------------------------------------------------------------------------- settings
def settings() -> Settings:
    """The settings of the current process (``INSTATAG_*`` variables, ``INSTATAG_CONFIG``,
    ``AIRFLOW_CONN_INSTATAG_DB``). Inside an Airflow task, when none of those names a database,
    the Airflow connection ``instatag_db`` (metadata database or secrets backend) is used if it exists."""
    s = load_settings()
    if s.database_url == _default_url(s) and os.environ.get("AIRFLOW_CTX_DAG_ID"):
        url = airflow_connection_url(CONN_ID)
        if url:
            s = s.replace(database_url=url)
    return s


def _default_url(s: Settings) -> str:
    return f"sqlite:///{(s.data_dir / 'instatag.db').absolute()}"


def airflow_connection_url(conn_id: str) -> str | None:
    """The SQLAlchemy URL of an Airflow connection, None when it is not defined (or not in Airflow)."""
    try:
        from airflow.sdk import Connection
        from airflow.sdk.exceptions import AirflowNotFoundException
    except ImportError:
        return None
    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
    if conn.conn_type in ("postgres", "postgresql"):
        from sqlalchemy.engine import URL

        return URL.create("postgresql+psycopg2", username=conn.login or None, password=conn.password or None,
                          host=conn.host or None, port=conn.port or None,
                          database=conn.schema or None).render_as_string(hide_password=False)
    return conn.get_uri()


def schedule(value: str) -> str | None:
    """A DAG schedule from a setting: a cron expression or preset; ``none`` or empty for manual runs only."""
    value = value.strip()
    return None if value.lower() in ("", "none", "manual") else value


def _jsonable(obj):
    """A stage's result (a dataclass, or a dict with paths, sets, dates...) as plain JSON values."""
    if hasattr(obj, "as_dict"):
        obj = obj.as_dict()
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return json.loads(json.dumps(obj, default=lambda o: sorted(o) if isinstance(o, (set, frozenset)) else str(o)))


# --------------------------------------------------------------------------- stages
def ingest_drops(sources: list[str] | None = None) -> dict:
    """Ingest the given folders/manifests (default: the configured drop folders); the ingest report."""
    from . import ingest

    s = settings()
    report = _jsonable(ingest.ingest(s, [Path(p) for p in sources] if sources else None))
    log.info("ingest of %s: %s", ", ".join(sources or s.drop_dirs), report)
    return report


def new_images(report: dict) -> int:
    """How many images an ingest report says were added."""
    return int(report.get("accepted") or 0)


def build_vocabulary(groups_file: str | None = None, min_count: int | str | None = None) -> int:
    """Build (or reuse the identical) vocabulary version; its id. ``min_count``: 95, "95" or "5%"
    (None: the grouping file's). A vocabulary that cannot train a model is a ``UserError``
    (``vocab.check_trainable``), so the retrain stops here."""
    from . import vocab

    return int(vocab.build_vocab(settings(), groups_file or None, min_count))


def suggest_vocabulary(groups_file: str | None = None) -> dict:
    """Measure grouping suggestions for a grouping file (``instatag vocab suggest``; None: the configured
    one) and store the report, which the Airflow UI's instatag page shows (Suggestions); nothing is
    applied. Returns the report's path, the suggestions (id and title) and the label counts."""
    from . import suggest

    s = settings()
    report = suggest.suggest(s, groups_file or None)
    path = suggest.save_report(s, report)
    log.info("%s", suggest.describe(report))
    return {"report": str(path), "suggestions": [f"{x.id} {x.title}" for x in report.suggestions],
            "labels_now": report.counts["labels_now"], "labels_suggested": report.suggested_labels}


def presets() -> list[str]:
    """The training presets' names (``instatag.train.PRESETS``)."""
    from .train import PRESETS

    return list(PRESETS)


def arch_names() -> list[str]:
    from . import archs

    return archs.names()


def train_config(preset: str = "default", **overrides) -> dict:
    """The training configuration a preset and overrides (None: keep the preset's) give, validated."""
    from .train import config_from

    if isinstance(overrides.get("lr"), str) and overrides["lr"] != "auto":
        try:
            overrides["lr"] = float(overrides["lr"])
        except ValueError:
            raise UserError(f"lr must be 'auto' or a number, not {overrides['lr']!r}") from None
    return config_from(preset, **overrides).to_dict()


def train_model(vocab_version_id: int, preset: str = "default", **overrides) -> int:
    """Train on a vocabulary version with a preset and overrides (None values keep the preset's);
    the new candidate model version's id."""
    from .train import TrainConfig, train

    config = TrainConfig(**train_config(preset, **overrides))
    return int(train(settings(), config, vocab_version_id=vocab_version_id))


def evaluate_model(model_version_id: int) -> dict:
    """Evaluate a model version on its validation split; the stored metrics."""
    from . import evaluate

    return _jsonable(evaluate.evaluate(settings(), model_version_id))


def promote_model(model_version_id: int, force: bool = False) -> dict:
    """Decide whether the model version becomes the champion; the decision (``promoted``, ``reason``...).
    Running it again for the champion changes nothing."""
    from . import db, promote

    s = settings()
    with db.get_engine(s).connect() as conn:
        current = promote.champion_id(conn)
    if current == model_version_id:
        return {"candidate_id": model_version_id, "champion_id": current, "decision": "promoted",
                "reason": "already the champion", "forced": False, "promoted": True}
    decision = promote.decide(s, model_version_id, force=force)
    log.info("model version %d: %s (%s)", model_version_id, decision.decision, decision.reason)
    return decision.as_dict()


def champion() -> int | None:
    """The champion model version's id, None when there is none yet."""
    from . import db, promote

    s = settings()
    with db.get_engine(s).connect() as conn:
        return promote.champion_id(conn)


def shard_list(n: int, **common) -> list[dict]:
    """Keyword arguments of ``score_shard`` for each of ``n`` shards (for Airflow's ``expand_kwargs``);
    ``common`` goes into every one (e.g. ``model``, ``all_images``)."""
    if n < 1:
        raise UserError(f"the number of shards must be at least 1, not {n}")
    return [{"shard": i, "shards": n, **common} for i in range(n)]


def score_shard(shard: int, shards: int, model: str | int = "champion", all_images: bool = False) -> dict:
    """Score shard ``shard`` of ``shards`` with a model (default: the champion): the images it has not
    scored yet, or with ``all_images`` every image again. The score report."""
    from . import score

    return _jsonable(score.score(settings(), model=model, new=not all_images, shard=(shard, shards)))


def sum_scores(reports: list[dict]) -> dict:
    """Totals of the shards' score reports."""
    return {
        "shards": len(reports),
        "model_version_ids": sorted({r["model_version_id"] for r in reports}),
        "n_images": sum(r["n_images"] for r in reports),
        "n_rows": sum(r["n_rows"] for r in reports),
        "n_missing": sum(r.get("n_missing", 0) for r in reports),
    }


def make_report(model_version_id: int) -> str:
    """Write the model version's report (plots + HTML); its path."""
    from . import report

    return str(report.build_report(settings(), model_version_id))


# --------------------------------------------------------------------------- Airflow task glue
def fail_fast(fn):
    """For Airflow task functions: bad input or set-up (``UserError``) fails the task at once, without
    retries (``AirflowFailException``); other errors are retried as the task says."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"instatag: {exc}") from exc

    return wrapper


def reject_unknown(conf: dict | None, known) -> None:
    """Refuse a DAG run configuration with keys that are not the DAG's params (a typo would be ignored)."""
    unknown = sorted(set(conf or {}) - set(known))
    if unknown:
        raise UserError(f"unknown parameter(s) {', '.join(unknown)}; this DAG takes {', '.join(sorted(known))}")
