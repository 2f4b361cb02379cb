"""End to end on a real Airflow 3: CeleryExecutor, Redis broker, two workers, REST API v2.

The harness (tests/airflow_harness.py) gives Airflow its own PostgreSQL database and the test
another one for instatag; the DAGs reach the latter through the Airflow connection
``instatag_db``, created here through the REST API. Both databases, every process and the
Redis database used are removed afterwards, also when the test fails.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import pytest
from airflow_harness import AirflowHarness, HarnessError, expected_ingest_workers, ingest_workers
from sqlalchemy import create_engine, make_url, text

from instatag import db, ingest, sample
from instatag.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
DAG_IDS = ["instatag_ingest", "instatag_retrain", "instatag_score"]
#: a tiny training that still goes through every stage
TINY = {"preset": "default", "arch": "efficientnet_lite0", "size": 32, "epochs": 1, "freeze_epochs": 1,
        "lr": "0.01", "bs": 16, "min_count": 30}

pytestmark = [pytest.mark.airflow, pytest.mark.slow, pytest.mark.postgres]
#: posts of the sample scrape: enough for ingest to decode them in worker processes (PARALLEL_MIN),
#: and for a vocabulary that can train and validate a model (vocab.check_trainable: 240)
N_POSTS = max(ingest.PARALLEL_MIN, 240)


def _require_redis(url: str) -> None:
    """Skip when the local Redis is unreachable, except under CI, where the test fails instead."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable
        reason = f"Redis at {url} unreachable: {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def airflow(tmp_path, pg_admin_url):
    harness = AirflowHarness(
        root=tmp_path / "airflow",
        dags_folder=REPO / "dags",
        plugins_folder=REPO / "plugins",
        pg_admin_url=pg_admin_url,
        worker_concurrency=2,
        env={
            "INSTATAG_DATA_DIR": str(tmp_path / "var"),
            "INSTATAG_INGEST_SCHEDULE": "none",  # only the runs the test triggers
            "INSTATAG_RETRAIN_SCHEDULE": "none",
            "INSTATAG_SCORE_SHARDS": "2",
            "INSTATAG_DEVICE": "cpu",
            "OMP_NUM_THREADS": "1",
        },
    )
    _require_redis(harness.redis_url)
    try:
        yield harness
    finally:
        harness.stop()


def test_ingest_retrain_score_on_celery(airflow, tmp_path):
    started = time.monotonic()
    timings = {}
    # the instatag database, reached by the tasks through the Airflow connection instatag_db
    url = airflow.create_database(f"instatag_e2e_{secrets.token_hex(5)}")
    settings = load_settings(env={}, database_url=url, data_dir=tmp_path / "var")
    db.upgrade(settings)
    db.get_engine(settings).dispose()
    drop = tmp_path / "drop"
    sample.make_scrape(drop, n_posts=N_POSTS, seed=3)

    airflow.start()
    timings["airflow up"] = time.monotonic() - started
    u = make_url(url)
    airflow.api("POST", "/connections", expect=201, json={
        "connection_id": "instatag_db", "conn_type": "postgres", "host": u.host, "port": u.port,
        "login": u.username, "password": u.password, "schema": u.database})
    airflow.wait_for_dags(DAG_IDS)
    for dag_id in DAG_IDS:
        airflow.unpause(dag_id)

    # bad params are refused at trigger time, naming the param
    for conf, name in (({"epochs": -1}, "epochs"), ({"arch": "vgg16"}, "arch"), ({"lr": "fast"}, "lr"),
                       ({"min_count": "many"}, "min_count"), ({"force_promote": "yes"}, "force_promote")):
        r = airflow.trigger("instatag_retrain", conf, expect=400)
        assert f"Invalid input for param {name}" in r.json()["detail"], r.text
    r = airflow.trigger("instatag_retrain", {"epoch": 1}, expect=400)  # a typo: no such param
    assert "Unknown param" in r.json()["detail"] and "epoch" in r.json()["detail"], r.text
    assert airflow.dag_runs("instatag_retrain") == []

    # ingest
    run = airflow.trigger("instatag_ingest", {"sources": [str(drop)]}).json()
    airflow.wait_for_run("instatag_ingest", run["dag_run_id"], timeout=300)
    report = airflow.xcom("instatag_ingest", run["dag_run_id"], "ingest")
    assert report["accepted"] == N_POSTS, report
    tis = {ti["task_id"]: ti for ti in airflow.task_instances("instatag_ingest", run["dag_run_id"])}
    assert {k: ti["state"] for k, ti in tis.items()} == {"ingest": "success", "publish_new_images": "success"}
    # inside the Celery worker's (daemonic) pool process, the photos were decoded by one
    # process per core, as anywhere else
    log = airflow.task_log("instatag_ingest", run["dag_run_id"], tis["ingest"])
    assert ingest_workers(log) == expected_ingest_workers(N_POSTS)
    timings["ingest"] = time.monotonic() - started

    # retrain with tiny settings; train runs on the gpu worker
    run = airflow.trigger("instatag_retrain", TINY).json()
    airflow.wait_for_run("instatag_retrain", run["dag_run_id"], timeout=900)
    tis = {ti["task_id"]: ti for ti in airflow.task_instances("instatag_retrain", run["dag_run_id"])}
    assert {k: ti["state"] for k, ti in tis.items()} == {**dict.fromkeys(
        ["changes", "vocabulary", "train", "evaluate", "promote", "publish_champion", "report"], "success"),
        "suggest": "skipped"}  # the param suggest is off by default
    assert (tis["train"]["queue"], tis["train"]["pool"], tis["train"]["hostname"]) == ("gpu", "gpu", "worker-gpu")
    assert {ti["hostname"] for k, ti in tis.items() if k not in ("train", "suggest")} == {"worker-default"}
    timings["retrain"] = time.monotonic() - started

    # the promotion updated instatag_champion; instatag_score writes the champion's predictions
    score_runs = airflow.wait_for_runs("instatag_score", lambda runs: any(
        "instatag_champion" in airflow.consumed(r) for r in runs))
    assert all(r["state"] == "success" for r in score_runs), score_runs
    champion_run = next(r for r in score_runs if "instatag_champion" in airflow.consumed(r))
    shards = [ti for ti in airflow.task_instances("instatag_score", champion_run["dag_run_id"])
              if ti["task_id"] == "score"]
    assert sorted(ti["map_index"] for ti in shards) == [0, 1]
    assert all(ti["state"] == "success" for ti in shards)
    timings["score"] = time.monotonic() - started

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            images = set(conn.execute(text("select id from images")).scalars())
            predicted = conn.execute(text("select image_id, count(*) from predicted_tags group by image_id")).all()
            champion = conn.execute(text("select id from model_versions where status = 'champion'")).scalars().all()
    finally:
        engine.dispose()
    assert len(images) == N_POSTS
    assert {image_id for image_id, _ in predicted} == images
    assert all(n >= 2 for _, n in predicted)  # request_number=2
    assert champion == [airflow.xcom("instatag_retrain", run["dag_run_id"], "train")]

    # re-running the ingest adds nothing and does not update the Asset
    n_score_runs = len(airflow.dag_runs("instatag_score"))
    again = airflow.trigger("instatag_ingest", {"sources": [str(drop)]}).json()
    airflow.wait_for_run("instatag_ingest", again["dag_run_id"], timeout=300)
    states = {ti["task_id"]: ti["state"] for ti in airflow.task_instances("instatag_ingest", again["dag_run_id"])}
    assert states == {"ingest": "success", "publish_new_images": "skipped"}
    time.sleep(5)
    assert len(airflow.dag_runs("instatag_score")) == n_score_runs
    timings["total"] = time.monotonic() - started
    print("e2e timings (s since start): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))


def test_harness_reports_import_errors_and_cleans_up(tmp_path, pg_admin_url):
    """A failing run still leaves no process, no database and no broker data behind."""
    import redis

    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "broken_dag.py").write_text("from airflow.sdk import dag\n\n@dag(schedule='not a schedule')\n"
                                        "def broken():\n    pass\n\nbroken()\n")
    harness = AirflowHarness(root=tmp_path / "airflow", dags_folder=dags, pg_admin_url=pg_admin_url)
    _require_redis(harness.redis_url)
    try:
        harness.start()
        with pytest.raises(HarnessError, match="broken_dag.py"):
            harness.wait_for_dags(["broken"], timeout=120)
    finally:
        procs = list(harness.processes.values())
        databases = list(harness.databases)
        harness.stop()
    assert procs and databases == [harness.metadata_db]
    for proc in procs:
        assert proc.poll() is not None
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)  # nothing of the process group is left
    engine = create_engine(pg_admin_url)
    try:
        with engine.connect() as conn:
            left = conn.execute(text("select datname from pg_database where datname = :n"),
                                {"n": harness.metadata_db}).all()
    finally:
        engine.dispose()
    assert left == []
    assert redis.Redis.from_url(harness.redis_url).dbsize() == 0
