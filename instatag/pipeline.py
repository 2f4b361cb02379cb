"""The pipeline's stages as task-sized functions: what the Airflow tasks (``dags/``) and ``instatag demo`` call.

Each function does one stage through its stage module and takes and returns only JSON-able
values (ids, counts, paths as strings), so Airflow can pass them through XCom. A stage that uses
the database or the data dir takes the keyword ``settings`` (``instatag demo`` passes its own);
left out, as in an Airflow task, it reads the process's (``load_settings``). Models reach workers
by id: the file's path is in the database. Heavy imports (torch, fastai) happen inside the stage
modules' functions, so importing this module — as every DAG file does at parse time — stays cheap.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import timedelta
from pathlib import Path

from .errors import UserError
from .settings import Settings, load_settings

log = logging.getLogger(__name__)

#: Airflow Asset the ingest DAG updates when new images arrived; the scoring DAG runs on it
IMAGES_ASSET = "instatag_images"
#: Airflow Asset the retrain DAG updates when it promoted a new champion; the scoring DAG runs on it
CHAMPION_ASSET = "instatag_champion"
#: Airflow Asset the scoring DAG updates when a graded drop crossed a threshold (the reasons in ``extra``)
DRIFT_ASSET = "instatag_drift"


def _settings(settings: Settings | None) -> Settings:
    """The settings a stage runs with: the caller's (``instatag demo``), else those of the current
    process, as an Airflow task reads them (``load_settings``: ``INSTATAG_*``, ``INSTATAG_CONFIG``,
    the Airflow connection ``instatag_db``)."""
    return settings if settings is not None else load_settings()


#: a tick that passed less than this long ago still runs when a scheduled DAG is unpaused for the first
#: time (the scheduler creates runs a few seconds late); an older one is skipped
SCHEDULE_GRACE = timedelta(minutes=5)


def schedule(value: str):
    """A DAG's ``schedule`` from a setting (``INSTATAG_*_SCHEDULE``): ``none``, ``manual`` or empty: None
    (manual runs only); ``@once``/``@continuous`` as they are; any other cron expression or preset
    (``@daily``, ``0 3 * * *``) an ``airflow.sdk.CronTriggerTimetable`` in UTC, a run at each tick.

    Airflow 3.3 turns a cron string into the same timetable, but with a DAG ``start_date`` the first
    unpause starts a run for the tick just past (up to a day old for ``@daily``: an unasked retrain with
    the default preset). The DAGs have no start_date, and ``run_immediately=SCHEDULE_GRACE`` makes a DAG
    unpaused for the first time wait for its next tick. With ``catchup=False`` (the DAGs'), a DAG that
    already ran and was paused over some ticks gets one run, for the latest, when unpaused (Airflow's rule).
    Invalid values: UserError naming the value (an import error of the DAG).
    """
    value = value.strip()
    if value.lower() in ("", "none", "manual"):
        return None
    if value in ("@once", "@continuous"):
        return value
    from airflow.sdk import CronTriggerTimetable

    timetable = CronTriggerTimetable(value, timezone="UTC", run_immediately=SCHEDULE_GRACE)
    try:
        timetable.validate()
    except Exception as exc:  # AirflowTimetableInvalid, with croniter's words
        raise UserError(f"schedule {value!r} is neither a cron expression nor a preset such as @daily, "
                        f"nor none: {exc}") from None
    return timetable


def _jsonable(obj):
    """A stage's result (a dataclass, or a dict with paths, sets, dates...) as plain JSON values."""
    if hasattr(obj, "as_dict"):
        obj = obj.as_dict()
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    return json.loads(json.dumps(obj, default=lambda o: sorted(o) if isinstance(o, (set, frozenset)) else str(o)))


# --------------------------------------------------------------------------- stages
def ingest_drops(sources: list[str] | None = None, *, settings: Settings | None = None) -> dict:
    """Ingest the given folders/manifests (default: the configured drop folders); the ingest report."""
    from . import ingest

    s = _settings(settings)
    report = _jsonable(ingest.ingest(s, [Path(p) for p in sources] if sources else None))
    log.info("ingest of %s: %s", ", ".join(sources or s.drop_dirs), report)
    return report


def new_images(report: dict) -> int:
    """How many images an ingest report says were added."""
    return int(report.get("accepted") or 0)


def build_vocabulary(groups_file: str | None = None, min_count: int | str | None = None, *,
                     settings: Settings | None = None) -> int:
    """Build (or reuse the identical) vocabulary version; its id. ``min_count``: 95, "95" or "5%"
    (None: the grouping file's). A vocabulary that cannot train a model is a ``UserError``
    (``vocab.check_trainable``), so the retrain stops here."""
    from . import vocab

    return int(vocab.build_vocab(_settings(settings), groups_file or None, min_count))


def suggest_vocabulary(groups_file: str | None = None, *, settings: Settings | None = None) -> dict:
    """Measure grouping suggestions for a grouping file (``instatag vocab suggest``; None: the configured
    one) and store the report, which the Airflow UI's instatag page shows (Suggestions); nothing is
    applied. Returns the report's path, the suggestions (id and title) and the label counts."""
    from . import suggest

    s = _settings(settings)
    report = suggest.suggest(s, groups_file or None)
    path = suggest.save_report(s, report)
    log.info("%s", suggest.describe(report))
    return {"report": str(path), "suggestions": [f"{x.id} {x.title}" for x in report.suggestions],
            "labels_now": report.counts["labels_now"], "labels_suggested": report.suggested_labels}



def train_config(preset: str = "default", **overrides) -> dict:
    """The training configuration a preset and overrides (None: keep the preset's) give, validated."""
    from .train import config_from

    if isinstance(overrides.get("lr"), str) and overrides["lr"] != "auto":
        try:
            overrides["lr"] = float(overrides["lr"])
        except ValueError:
            raise UserError(f"lr must be 'auto' or a number, not {overrides['lr']!r}") from None
    return config_from(preset, **overrides).to_dict()


def train_model(vocab_version_id: int, preset: str = "default", *, settings: Settings | None = None,
                **overrides) -> int:
    """Train on a vocabulary version with a preset and overrides (None values keep the preset's);
    the new candidate model version's id."""
    from .train import TrainConfig, train

    config = TrainConfig(**train_config(preset, **overrides))
    return int(train(_settings(settings), config, vocab_version_id=vocab_version_id))


def evaluate_model(model_version_id: int, *, settings: Settings | None = None) -> dict:
    """Evaluate a model version on its validation split; the stored metrics."""
    from . import evaluate

    return _jsonable(evaluate.evaluate(_settings(settings), model_version_id))


def promote_model(model_version_id: int, force: bool = False, *, settings: Settings | None = None) -> dict:
    """Decide whether the model version becomes the champion; the decision (``promoted``, ``reason``...).
    Running it again for the champion changes nothing (``promote.decide_once``)."""
    from . import promote

    decision = promote.decide_once(_settings(settings), model_version_id, force=force)
    log.info("model version %d: %s (%s)", model_version_id, decision.decision, decision.reason)
    return decision.as_dict()


def champion(*, settings: Settings | None = None) -> int | None:
    """The champion model version's id, None when there is none yet."""
    from . import db, registry

    s = _settings(settings)
    with db.get_engine(s).connect() as conn:
        return registry.champion_id(conn)


def shard_list(n: int, **common) -> list[dict]:
    """Keyword arguments of ``score_shard`` for each of ``n`` shards (for Airflow's ``expand_kwargs``);
    ``common`` goes into every one (e.g. ``model``, ``all_images``)."""
    if n < 1:
        raise UserError(f"the number of shards must be at least 1, not {n}")
    return [{"shard": i, "shards": n, **common} for i in range(n)]


def score_shard(shard: int, shards: int, model: str | int = "champion", all_images: bool = False, *,
                settings: Settings | None = None) -> dict:
    """Score shard ``shard`` of ``shards`` with a model (default: the champion): the images it has not
    scored yet, or with ``all_images`` every image again. The score report."""
    from . import score

    return _jsonable(score.score(_settings(settings), model=model, new=not all_images, shard=(shard, shards)))


def sum_scores(reports: list[dict]) -> dict:
    """Totals of the shards' score reports."""
    return {
        "shards": len(reports),
        "model_version_ids": sorted({r["model_version_id"] for r in reports}),
        "n_images": sum(r["n_images"] for r in reports),
        "n_rows": sum(r["n_rows"] for r in reports),
        "n_missing": sum(r.get("n_missing", 0) for r in reports),
    }


def make_report(model_version_id: int, *, settings: Settings | None = None) -> str:
    """Write the model version's report (plots + HTML); its path."""
    from . import report

    return str(report.build_report(_settings(settings), model_version_id))


def grade_drops(*, settings: Settings | None = None) -> list[dict]:
    """Grade the drops the champion has scored and not graded yet (``drops.grade_pending``): fresh-label
    metrics and drift, stored in ``drop_evaluations``; flagged figures are logged as warnings."""
    from . import drops

    return drops.grade_pending(_settings(settings))


def drift_reasons(graded: list[dict]) -> list[str]:
    """'drop N (model version M): reason' for every threshold the graded drops crossed."""
    from . import drops

    return drops.reasons_of(graded)


def retrain_request(graded: list[dict], *, settings: Settings | None = None) -> dict | None:
    """The conf of an ``instatag_retrain`` run when a graded drop was flagged and
    ``INSTATAG_RETRAIN_ON_DRIFT`` is on (``{"reason": ...}``); None otherwise."""
    reasons = drift_reasons(graded)
    if not reasons or not _settings(settings).retrain_on_drift:
        return None
    return {"reason": "; ".join(reasons)}


def retrain_check(scheduled: bool, reason: str = "", *, settings: Settings | None = None) -> tuple[bool, str]:
    """(run?, why) of a retrain run (``drops.retrain_check``; ``INSTATAG_RETRAIN_WHEN``)."""
    from . import drops

    return drops.retrain_check(_settings(settings), scheduled=scheduled, reason=reason)


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


def run_params(dag_id: str, conf: dict | None, params=None) -> dict:
    """A run's params as the tasks use them, checked by ``instatag.params.check_conf`` (the rule the
    api-server applies when the run is triggered): ``conf`` is ``dag_run.conf`` (keys that are no
    params are refused), ``params`` Airflow's merged params (the DAG's defaults). UserError names every
    problem; under ``fail_fast`` it fails the task at once, so a bad run that got in another way stops
    at its first task."""
    from .params import check_conf

    return check_conf(dag_id, conf, params)
