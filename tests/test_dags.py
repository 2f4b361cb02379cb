"""The DAG files: they import cleanly (without torch), and wire the expected tasks, queues, pools,
params and schedules. Parsing only: tests/test_airflow_e2e.py runs them on a real Airflow."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from instatag.errors import UserError
from instatag.params import check_conf

DAGS = Path(__file__).resolve().parents[1] / "dags"
DAG_IDS = {"instatag_ingest", "instatag_retrain", "instatag_score"}

pytestmark = pytest.mark.slow  # importing Airflow takes a few seconds


def _airflow_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INSTATAG_", "AIRFLOW"))}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    """The DAG folder parsed in this process, with default settings and a throw-away AIRFLOW_HOME."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(_airflow_env(tmp_path_factory.mktemp("airflow_home")))
    try:
        from airflow.dag_processing.dagbag import DagBag

        yield DagBag(str(DAGS))
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == DAG_IDS
    for dag in dagbag.dags.values():
        assert dag.max_active_runs == 1, dag.dag_id
        assert dag.catchup is False, dag.dag_id
        assert dag.start_date is None, dag.dag_id  # a first unpause waits for the next tick
        assert dag.doc_md, dag.dag_id


def _cron(dag) -> tuple:
    tt = dag.timetable
    return type(tt).__name__, tt.expression, tt.timezone, tt.run_immediately


def test_ingest_dag(dagbag):
    dag = dagbag.dags["instatag_ingest"]
    # the default of INSTATAG_INGEST_SCHEDULE, @hourly
    assert _cron(dag) == ("CronTriggerTimetable", "0 * * * *", "UTC", timedelta(minutes=5))
    assert {t.task_id for t in dag.tasks} == {"ingest", "publish_new_images"}
    publish = dag.get_task("publish_new_images")
    assert publish.upstream_task_ids == {"ingest"}
    assert [a.name for a in publish.outlets] == ["instatag_images"]
    assert dag.get_task("ingest").outlets == []
    assert dag.params["sources"] is None
    _valid(dag, {"sources": ["/drop/a", "/drop/b"]})
    _valid(dag, {"sources": []})
    _invalid(dag, {"sources": "/drop/a"}, "sources")


def test_retrain_dag(dagbag):
    dag = dagbag.dags["instatag_retrain"]
    # the default of INSTATAG_RETRAIN_SCHEDULE, @daily
    assert _cron(dag) == ("CronTriggerTimetable", "0 0 * * *", "UTC", timedelta(minutes=5))
    chain = ["changes", "vocabulary", "train", "evaluate", "promote", "publish_champion", "report"]
    assert {t.task_id for t in dag.tasks} == {*chain, "suggest"}
    for up, down in zip(chain, chain[1:], strict=False):
        assert up in dag.get_task(down).upstream_task_ids, (up, down)
    train = dag.get_task("train")
    assert (train.queue, train.pool, train.pool_slots) == ("gpu", "gpu", 1)
    assert train.execution_timeout == timedelta(hours=6)
    assert train.retries >= 1
    assert {t.queue for t in dag.tasks if t.task_id != "train"} == {"default"}
    assert {t.pool for t in dag.tasks if t.task_id != "train"} == {"default_pool"}
    assert [a.name for a in dag.get_task("publish_champion").outlets] == ["instatag_champion"]
    assert dag.get_task("report").trigger_rule == "none_failed_min_one_success"  # not when `changes` skipped
    assert set(dag.params) == {"preset", "arch", "size", "epochs", "freeze_epochs", "lr", "bs", "pretrained",
                               "groups_file", "min_count", "force_promote", "reason", "suggest"}
    assert dag.params["reason"] is None
    assert dag.params["preset"] == "default"
    assert dag.params["force_promote"] is False


def test_retrain_dags_suggest_task_is_optional_and_applies_nothing(dagbag, monkeypatch):
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowSkipException

    from instatag import pipeline

    dag = dagbag.dags["instatag_retrain"]
    suggest = dag.get_task("suggest")
    assert dag.params["suggest"] is False  # scheduled runs skip it
    # after the run's first task (which checks the conf and may skip the run); nothing waits on it
    assert suggest.upstream_task_ids == {"changes"} and suggest.downstream_task_ids == set()
    assert suggest.queue == "default"
    _valid(dag, {"suggest": True, "groups_file": "/etc/instatag/groups.yaml"})
    _invalid(dag, {"suggest": "yes"}, "suggest")
    with pytest.raises(AirflowSkipException, match="suggest is off"):
        suggest.python_callable(params={"suggest": False, "groups_file": ""}, dag_run=SimpleNamespace(conf={}))
    calls = []
    monkeypatch.setattr(pipeline, "suggest_vocabulary", lambda groups_file: calls.append(groups_file) or {"n": 1})
    assert suggest.python_callable(params={"suggest": True, "groups_file": "/g.yaml"},
                                   dag_run=SimpleNamespace(conf={})) == {"n": 1}
    assert calls == ["/g.yaml"]


@pytest.mark.parametrize("conf", [
    {},
    {"epochs": 1, "freeze_epochs": 0, "arch": "resnet18", "size": 64, "lr": "auto", "min_count": 2},
    {"lr": "1e-3"}, {"lr": 0.002}, {"lr": None}, {"preset": "study", "force_promote": True},
    {"groups_file": "/etc/instatag/groups.yaml", "pretrained": "false", "bs": 32, "epochs": 3},
    {"epochs": 0}, {"freeze_epochs": 0}, {"size": 1024}, {"bs": 4096}, {"pretrained": "true"}, {"arch": None},
    {"min_count": "5%"}, {"min_count": "2.5%"}, {"min_count": "95"}, {"min_count": 95},
])
def test_retrain_params_accept(dagbag, conf):
    """Accepted by Airflow's validation and by instatag's check alike."""
    dag = dagbag.dags["instatag_retrain"]
    assert set(conf) <= set(_valid(dag, conf))
    checked = check_conf("instatag_retrain", conf, dag.params)
    assert set(conf) <= set(checked) and checked["preset"] == conf.get("preset", dag.params["preset"])


@pytest.mark.parametrize("conf, name", [
    ({"epochs": -1}, "epochs"), ({"epochs": "many"}, "epochs"), ({"epochs": 1.5}, "epochs"),
    ({"epochs": 501}, "epochs"), ({"freeze_epochs": -1}, "freeze_epochs"), ({"arch": "vgg16"}, "arch"),
    ({"size": 8}, "size"),
    ({"size": 2048}, "size"), ({"lr": "fast"}, "lr"), ({"lr": 0}, "lr"), ({"lr": 50}, "lr"), ({"lr": "-1"}, "lr"),
    ({"min_count": 0}, "min_count"), ({"min_count": "many"}, "min_count"),
    ({"min_count": "5 %%"}, "min_count"), ({"min_count": 2.5}, "min_count"),
    ({"force_promote": "yes"}, "force_promote"), ({"pretrained": "yes"}, "pretrained"),
    ({"pretrained": False}, "pretrained"), ({"preset": "huge"}, "preset"), ({"groups_file": 3}, "groups_file"),
    ({"bs": 1}, "bs"),
])
def test_retrain_params_reject_with_the_param_named(dagbag, conf, name):
    """Refused by Airflow (the REST API and the form answer 400) and by instatag's check (the api-server's
    trigger_guard answers first, the first task again), each naming the param."""
    dag = dagbag.dags["instatag_retrain"]
    _invalid(dag, conf, name)
    with pytest.raises(UserError, match=f"Invalid input for param {name}: "):
        check_conf("instatag_retrain", conf, dag.params)


@pytest.mark.parametrize("conf, message", [
    ({"epoch": 1}, "Unknown param.*epoch: instatag_retrain takes preset, "),
    ({"lr": "0"}, "Invalid input for param lr: "), ({"lr": "1e3"}, "Invalid input for param lr: "),
    ({"epochs": 0, "freeze_epochs": 0}, "Invalid training configuration: train at least one epoch"),
])
def test_what_only_instatags_check_refuses(dagbag, conf, message):
    """Airflow lets these through (a key that is no param; what a JSON schema cannot say): the reason for
    instatag.trigger_guard on the api-server and the check in the first task."""
    dag = dagbag.dags["instatag_retrain"]
    _valid(dag, conf)
    with pytest.raises(UserError, match=message):
        check_conf("instatag_retrain", conf, dag.params)


def test_every_form_field_renders_and_submits_at_its_default(dagbag):
    """The trigger form's rules (airflow/ui FlexibleForm in Airflow 3.3.2; instatag.params explains them):
    every field has a title and a description; a field whose type lacks "null" is required, and a
    required field left empty disables Trigger; no minimum/maximum (the number input would clamp a typed
    -1 to the minimum silently); a field of several types needs enum or examples (else a 6-line JSON box)
    and then renders as its first type, which must be text; a dropdown's empty choice has a label (not
    "null"); a dropdown of booleans would show a selected value as nothing. At the defaults, the conf the
    form sends (every param) passes Airflow's validation and instatag's check."""
    for dag in dagbag.dags.values():
        for name in dag.params:
            param = dag.params.get_param(name)
            schema, where = param.schema, (dag.dag_id, name)
            types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            values = [t for t in types if t != "null"]
            assert schema.get("title") and param.description, where
            if "null" not in types:
                assert param.value not in (None, "", []), where
            assert not {"minimum", "maximum"} & set(schema), where
            if len(values) > 1:
                assert {"enum", "examples"} & set(schema) and values[0] == "string", where
            if "enum" in schema:
                assert values[0] in ("string", "integer", "number"), where
                assert all(not isinstance(v, bool) for v in schema["enum"]), where
                if None in schema["enum"]:
                    assert schema["values_display"]["null"] not in ("", "null"), where
        dag.params.validate()
        check_conf(dag.dag_id, {name: dag.params[name] for name in dag.params}, dag.params)


def test_serialized_dags_keep_the_params_and_the_schedule(dagbag):
    """What the api-server and the scheduler use: the DAG as stored (serialized and back)."""
    from airflow.exceptions import ParamValidationError
    from airflow.serialization.serialized_objects import DagSerialization

    stored = {d.dag_id: DagSerialization.from_dict(DagSerialization.to_dict(d)) for d in dagbag.dags.values()}
    for dag_id, ser in stored.items():
        dag = dagbag.dags[dag_id]
        assert list(ser.params) == list(dag.params)
        for name in dag.params:
            mine, kept = dag.params.get_param(name), ser.params.get_param(name)
            assert (kept.value, kept.description, kept.schema) == (mine.value, mine.description, mine.schema)
        ser.params.deep_merge({}).validate()
    retrain = stored["instatag_retrain"].params
    with pytest.raises(ParamValidationError, match="Invalid input for param epochs:"):
        retrain.deep_merge({"epochs": -1}).validate()
    with pytest.raises(ParamValidationError, match="Invalid input for param pretrained:"):
        retrain.deep_merge({"pretrained": False}).validate()
    assert retrain.deep_merge({"epoch": 1}).validate()["epoch"] == 1  # Airflow keeps an unknown key
    timetable = stored["instatag_retrain"].timetable
    assert type(timetable).__name__ == "CronTriggerTimetable"
    assert timetable.serialize()["run_immediately"] == 300  # seconds: pipeline.SCHEDULE_GRACE


def test_a_first_unpause_waits_for_the_next_tick(dagbag, monkeypatch):
    """The scheduler's view (the stored DAG's timetable): a retrain DAG without runs, unpaused at 15:00,
    runs next at midnight, not for the midnight just past; within SCHEDULE_GRACE of a tick that tick
    still runs; after a pause over several ticks, Airflow's catchup=False rule gives one run, the latest."""
    from datetime import UTC, datetime

    import airflow.timetables.trigger as trigger
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import DagRunInfo

    ser = DagSerialization.from_dict(DagSerialization.to_dict(dagbag.dags["instatag_retrain"]))

    def next_run(now: datetime, last: datetime | None = None) -> datetime:
        monkeypatch.setattr(trigger, "utcnow", lambda: now)
        info = ser.next_dagrun_info(last_automated_run_info=DagRunInfo.interval(last, last) if last else None)
        return info.run_after

    day = datetime(2026, 3, 10, tzinfo=UTC)
    assert next_run(day.replace(hour=15)) == datetime(2026, 3, 11, tzinfo=UTC)
    assert next_run(day.replace(minute=3)) == day
    assert next_run(day.replace(minute=6)) == datetime(2026, 3, 11, tzinfo=UTC)
    assert next_run(day.replace(hour=15), last=datetime(2026, 3, 9, tzinfo=UTC)) == day  # ran yesterday: today's
    assert next_run(day.replace(hour=15), last=datetime(2026, 3, 5, tzinfo=UTC)) == day  # paused since the 5th
def test_score_dag(dagbag):
    dag = dagbag.dags["instatag_score"]
    condition = dag.timetable.asset_condition  # runs when either Asset is updated
    assert type(condition).__name__ == "AssetAny"
    assert sorted(a.name for a in condition.objects) == ["instatag_champion", "instatag_images"]
    assert {t.task_id for t in dag.tasks} == {"plan", "score", "summary", "grade_drops", "drift_alert",
                                              "retrain_on_drift", "trigger_retrain"}
    score = dag.get_task("score")
    assert type(score).__name__.endswith("MappedOperator")  # one task per shard, expanded at run time
    assert score.upstream_task_ids == {"plan"}
    assert dag.get_task("summary").upstream_task_ids == {"score"}
    assert dag.get_task("grade_drops").upstream_task_ids == {"summary"}
    assert dag.get_task("drift_alert").upstream_task_ids == {"grade_drops"}
    assert [a.name for a in dag.get_task("drift_alert").outlets] == ["instatag_drift"]
    assert dag.get_task("retrain_on_drift").upstream_task_ids == {"grade_drops"}
    trigger = dag.get_task("trigger_retrain")
    assert type(trigger).__name__ == "TriggerDagRunOperator" and trigger.trigger_dag_id == "instatag_retrain"
    assert trigger.upstream_task_ids == {"retrain_on_drift"}  # its conf is that task's result
    assert trigger.openlineage_inject_parent_info is False  # the retrain DAG refuses unknown conf keys
    _valid(dag, {"shards": 8, "all_images": True})
    _invalid(dag, {"shards": 0}, "shards")
    _invalid(dag, {"shards": 257}, "shards")


def test_parsing_imports_no_torch_and_reads_the_schedules_from_settings(tmp_path):
    """The DAG files parse without importing torch or fastai; schedules and the preset come from settings."""
    code = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag({str(DAGS)!r})\n"
        "out = {'errors': bag.import_errors, 'heavy': sorted(m for m in ('torch', 'fastai', 'torchvision', 'timm',"
        " 'matplotlib', 'nltk') if m in sys.modules),\n"
        "       'schedules': {d.dag_id: getattr(d.timetable, 'expression', d.schedule) for d in bag.dags.values()},\n"
        "       'preset': bag.dags['instatag_retrain'].params['preset']}\n"
        "print('RESULT', json.dumps(out, default=repr))\n"
    )
    env = _airflow_env(tmp_path, INSTATAG_INGEST_SCHEDULE="*/10 * * * *", INSTATAG_RETRAIN_SCHEDULE="none",
                       INSTATAG_RETRAIN_PRESET="study")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["errors"] == {}
    assert out["heavy"] == []
    assert out["schedules"]["instatag_ingest"] == "*/10 * * * *"
    assert out["schedules"]["instatag_retrain"] is None
    assert out["preset"] == "study"


def _valid(dag, conf: dict) -> dict:
    params = copy.deepcopy(dag.params)
    params.update(conf)
    return params.validate()


def _invalid(dag, conf: dict, name: str) -> None:
    """The conf is refused as Airflow refuses a trigger (REST API or UI form): naming the param."""
    from airflow.sdk.definitions.param import ParamValidationError

    with pytest.raises(ParamValidationError, match=f"Invalid input for param {name}:"):
        _valid(dag, conf)


# --------------------------------------------------------------------------- drops: what the tasks skip
def _drops_env(monkeypatch, settings, **extra: str) -> None:
    for name in [n for n in os.environ if n.startswith(("INSTATAG_", "AIRFLOW_CTX_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("INSTATAG_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("INSTATAG_DATA_DIR", str(settings.data_dir))
    for name, value in extra.items():
        monkeypatch.setenv(name, value)


def _champion_without_news(settings) -> int:
    from sqlalchemy import insert

    from instatag import db
    from instatag import schema as t

    with db.get_engine(settings).begin() as conn:
        vid = conn.execute(insert(t.vocab_versions).values(
            config={"grouping": {}}, config_sha256="c" * 64, n_posts=1, n_images=1, n_unlabelled=0, n_raw_tags=1,
            n_lemmas=1, n_labels=1, stats={}, valid_pct=0.2)).inserted_primary_key[0]
        return conn.execute(insert(t.model_versions).values(
            vocab_version_id=vid, arch="resnet18", params={}, artifact_path="m", sha256="0" * 64,
            status="champion")).inserted_primary_key[0]


def test_retrain_changes_skips_a_scheduled_run_when_nothing_changed(dagbag, sqlite_settings, monkeypatch):
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowSkipException

    dag = dagbag.dags["instatag_retrain"]
    changes = dag.get_task("changes").python_callable
    params = {name: p.value for name, p in dag.params.items()}
    _drops_env(monkeypatch, sqlite_settings, INSTATAG_RETRAIN_WHEN="changed")
    champion = _champion_without_news(sqlite_settings)
    scheduled = SimpleNamespace(conf={}, run_type="scheduled")
    with pytest.raises(AirflowSkipException, match=f"nothing changed since model version {champion}'s vocabulary"):
        changes(params=params, dag_run=scheduled)
    assert changes(params=params, dag_run=SimpleNamespace(conf={}, run_type="manual")) == "a manual run always runs"
    reason = "drop 3 (model version 1): tag mix against the training data: PSI 2.6"
    started = changes(params={**params, "reason": reason}, dag_run=SimpleNamespace(conf={"reason": reason},
                                                                                  run_type="manual"))
    assert started == f"started because: {reason}"
    monkeypatch.setenv("INSTATAG_RETRAIN_WHEN", "always")
    assert changes(params=params, dag_run=scheduled) == "INSTATAG_RETRAIN_WHEN is always"


def test_score_dag_alerts_and_asks_for_a_retrain_only_on_drift(dagbag, sqlite_settings, monkeypatch):
    from collections import defaultdict
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowSkipException

    dag = dagbag.dags["instatag_score"]
    alert = dag.get_task("drift_alert").python_callable
    retrain = dag.get_task("retrain_on_drift").python_callable
    quiet = [{"ingest_run_id": 2, "model_version_id": 1, "flagged": False, "reasons": []}]
    flagged = quiet + [{"ingest_run_id": 3, "model_version_id": 1, "flagged": True,
                        "reasons": ["tag mix against the training data: PSI 2.645 >= 0.2"]}]
    _drops_env(monkeypatch, sqlite_settings)
    events = defaultdict(SimpleNamespace)
    with pytest.raises(AirflowSkipException, match="1 drop\\(s\\) graded, none crossed a threshold"):
        alert(quiet, outlet_events=events)
    reasons = alert(flagged, outlet_events=events)
    assert reasons == ["drop 3 (model version 1): tag mix against the training data: PSI 2.645 >= 0.2"]
    (event,) = events.values()
    assert event.extra == {"reasons": reasons, "drops": [3]}
    with pytest.raises(AirflowSkipException, match="INSTATAG_RETRAIN_ON_DRIFT is off"):
        retrain(flagged)
    monkeypatch.setenv("INSTATAG_RETRAIN_ON_DRIFT", "true")
    assert retrain(flagged) == {"reason": reasons[0]}
    with pytest.raises(AirflowSkipException):
        retrain(quiet)
    grade = dag.get_task("grade_drops").python_callable
    assert grade({"n_images": 0}) == []  # no champion: nothing to grade
