"""instatag.pipeline: the task-sized functions the DAGs and the demo call, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text

from instatag import db, pipeline, sample
from instatag.errors import UserError

#: posts of the end-to-end test's sample scrape
POSTS = 240
TINY = {"arch": "efficientnet_lite0", "size": 32, "epochs": 1, "freeze_epochs": 1, "lr": "0.01", "bs": 8}


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A process environment without instatag or Airflow settings (the pipeline reads its own)."""
    import os

    for name in list(os.environ):
        if name.startswith(("INSTATAG_", "AIRFLOW_CONN_", "AIRFLOW_CTX_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow_home"))
    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    return monkeypatch


@pytest.fixture
def use(env, settings):
    """The pipeline pointed, through the environment, at the ``settings`` fixture's database."""
    env.setenv("INSTATAG_DATABASE_URL", settings.database_url)
    env.setenv("INSTATAG_DATA_DIR", str(settings.data_dir))
    env.setenv("INSTATAG_DEVICE", "cpu")
    return settings


def test_schedule_from_a_setting():
    from datetime import timedelta

    hourly = pipeline.schedule("@hourly")
    assert type(hourly).__name__ == "CronTriggerTimetable"
    assert (hourly.expression, hourly.timezone, hourly.run_immediately) == ("0 * * * *", "UTC", timedelta(minutes=5))
    assert pipeline.schedule(" 0 3 * * * ").expression == "0 3 * * *"
    assert pipeline.schedule("none") is None
    assert pipeline.schedule("") is None
    assert pipeline.schedule("@once") == "@once"
    with pytest.raises(UserError, match="schedule 'daily' is neither a cron expression"):
        pipeline.schedule("daily")


def test_shard_list_and_totals():
    kwargs = pipeline.shard_list(3, model=7, all_images=False)
    assert kwargs == [{"shard": i, "shards": 3, "model": 7, "all_images": False} for i in range(3)]
    json.dumps(kwargs)
    with pytest.raises(UserError, match="at least 1"):
        pipeline.shard_list(0)
    reports = [{"model_version_id": 7, "n_images": 3, "n_rows": 6, "n_missing": 0},
               {"model_version_id": 7, "n_images": 2, "n_rows": 5, "n_missing": 1}]
    assert pipeline.sum_scores(reports) == {"shards": 2, "model_version_ids": [7], "n_images": 5, "n_rows": 11,
                                            "n_missing": 1}


def test_results_become_plain_json():
    from dataclasses import dataclass
    from datetime import UTC, datetime

    @dataclass
    class Result:
        path: Path
        shard: tuple[int, int]
        tags: set[str]

    assert pipeline._jsonable(Result(Path("/a/b"), (1, 4), {"b", "a"})) == {"path": "/a/b", "shard": [1, 4],
                                                                         "tags": ["a", "b"]}
    when = datetime(2026, 1, 2, tzinfo=UTC)
    assert pipeline._jsonable({"at": when}) == {"at": str(when)}


def test_run_params_refuse_a_typo_and_keep_airflow_defaults():
    assert pipeline.run_params("instatag_score", None, {"shards": None, "all_images": False}) == {
        "shards": None, "all_images": False}
    assert pipeline.run_params("instatag_score", {"shards": 3}, {"shards": 3, "all_images": False})["shards"] == 3
    with pytest.raises(UserError, match="Unknown param.*shard: instatag_score takes shards, all_images"):
        pipeline.run_params("instatag_score", {"shard": 3}, {"shard": 3, "shards": None, "all_images": False})


def test_train_config_from_preset_and_overrides():
    default = pipeline.train_config()
    cfg = pipeline.train_config("default", epochs=2, lr="1e-3", size=None)
    assert cfg["epochs"] == 2 and cfg["lr"] == 0.001
    assert cfg["size"] == default["size"]  # None keeps the preset's value
    assert pipeline.train_config("study")["arch"] == "resnet18"
    assert pipeline.train_config(lr="auto")["lr"] == "auto"
    json.dumps(cfg)
    with pytest.raises(UserError, match="lr"):
        pipeline.train_config(lr="fast")
    with pytest.raises(UserError, match="preset"):
        pipeline.train_config("huge")


def test_ingest_needs_a_source(env, tmp_path):
    env.setenv("INSTATAG_DATA_DIR", str(tmp_path / "var"))
    with pytest.raises(UserError, match="INSTATAG_DROP_DIRS"):
        pipeline.ingest_drops()
    with pytest.raises(UserError, match="no such"):
        pipeline.ingest_drops([str(tmp_path / "nowhere")])


def test_settings_use_the_airflow_connection_only_inside_a_task_without_a_database_setting(env, tmp_path):
    from airflow.sdk import Connection

    from instatag.settings import airflow_connection_url, load_settings

    env.setenv("INSTATAG_DATA_DIR", str(tmp_path / "var"))
    conn = Connection(conn_id="instatag_db", conn_type="postgres", host="db.internal", login="tagger",
                      password="p@ss/w:rd", schema="instatag", port=5433)
    asked = []
    env.setattr(Connection, "get", classmethod(lambda cls, conn_id: asked.append(conn_id) or conn))
    url = "postgresql://tagger:p%40ss%2Fw%3Ard@db.internal:5433/instatag"  # psycopg 3, SQLAlchemy's default

    assert load_settings().database_url.startswith("sqlite")  # not in a task: never asks Airflow
    assert asked == []
    env.setenv("AIRFLOW_CTX_DAG_ID", "instatag_retrain")
    assert airflow_connection_url() == url
    assert load_settings().database_url == url
    assert asked == ["instatag_db", "instatag_db"]
    from sqlalchemy import make_url

    parsed = make_url(url)
    assert (parsed.password, parsed.port, parsed.get_driver_name()) == ("p@ss/w:rd", 5433, "psycopg")
    env.setenv("INSTATAG_DATABASE_URL", "postgresql+psycopg2://other/db")  # an explicit setting wins
    assert load_settings().database_url == "postgresql+psycopg2://other/db"


def test_missing_airflow_connection_keeps_the_default(env, tmp_path):
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    from instatag.settings import airflow_connection_url, load_settings

    def missing(cls, conn_id):
        raise AirflowNotFoundException(f"The conn_id `{conn_id}` isn't defined")

    env.setenv("INSTATAG_DATA_DIR", str(tmp_path / "var"))
    env.setenv("AIRFLOW_CTX_DAG_ID", "instatag_ingest")
    env.setattr(Connection, "get", classmethod(missing))
    assert airflow_connection_url() is None
    assert load_settings().database_url == f"sqlite:///{(tmp_path / 'var' / 'instatag.db').absolute()}"


def test_fail_fast_turns_bad_input_into_a_failure_without_retries(env):
    from airflow.sdk.exceptions import AirflowFailException

    @pipeline.fail_fast
    def task_function(x, params=None):
        """doc"""
        if x == "bad":
            raise UserError("bad input")
        if x == "boom":
            raise RuntimeError("transient")
        return x

    assert task_function.__name__ == "task_function"
    assert "params" in __import__("inspect").signature(task_function).parameters  # Airflow injects by name
    assert task_function("ok") == "ok"
    with pytest.raises(AirflowFailException, match="instatag: bad input"):
        task_function("bad")
    with pytest.raises(RuntimeError):
        task_function("boom")


@pytest.mark.slow
def test_stages_end_to_end_and_idempotent(use, tmp_path):
    import torch

    torch.set_num_threads(1)
    drop = tmp_path / "drop"
    # enough posts for a vocabulary that can train and validate a model (vocab.check_trainable)
    sample.make_scrape(drop, n_posts=POSTS, seed=5)

    report = pipeline.ingest_drops([str(drop)])
    assert report["accepted"] == POSTS and pipeline.new_images(report) == POSTS
    json.dumps(report)
    again = pipeline.ingest_drops([str(drop)])
    assert pipeline.new_images(again) == 0 and again["duplicates"] == POSTS

    vocab = pipeline.build_vocabulary(min_count="10%")
    assert pipeline.build_vocabulary(min_count="10%") == vocab  # the same posts and config: the same version
    assert pipeline.champion() is None

    model = pipeline.train_model(vocab, preset="default", **TINY)
    metrics = pipeline.evaluate_model(model)
    assert {"model", "baseline"} <= set(metrics)
    json.dumps(metrics)

    decision = pipeline.promote_model(model)
    assert decision["promoted"] and decision["candidate_id"] == model
    assert pipeline.promote_model(model)["reason"] == "already the champion"  # a re-run changes nothing
    assert pipeline.champion() == model

    reports = [pipeline.score_shard(**kw) for kw in pipeline.shard_list(2, model=model)]
    totals = pipeline.sum_scores(reports)
    assert totals["n_images"] == POSTS and totals["model_version_ids"] == [model]
    rerun = pipeline.sum_scores([pipeline.score_shard(**kw) for kw in pipeline.shard_list(2, model=model)])
    assert rerun["n_images"] == 0  # nothing new to score

    with db.get_engine(use).connect() as conn:
        covered = conn.execute(text("select count(distinct image_id) from predicted_tags")).scalar()
        rows = conn.execute(text("select count(*) from predictions")).scalar()
    assert covered == POSTS and rows == totals["n_rows"]

    everything = pipeline.sum_scores([pipeline.score_shard(0, 1, model="champion", all_images=True)])
    assert everything["n_images"] == POSTS
    with db.get_engine(use).connect() as conn:
        assert conn.execute(text("select count(*) from predictions")).scalar() == everything["n_rows"]

    if not use.database_url.startswith("postgresql"):  # the report does not depend on the database; once is enough
        path = pipeline.make_report(model)
        assert path.endswith(".html") and Path(path).is_file()
