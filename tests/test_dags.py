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
    chain = ["vocabulary", "train", "evaluate", "promote", "rescore", "report"]
    assert {t.task_id for t in dag.tasks} == set(chain)
    for up, down in zip(chain, chain[1:], strict=False):
        assert up in dag.get_task(down).upstream_task_ids, (up, down)
    train = dag.get_task("train")
    assert (train.queue, train.pool, train.pool_slots) == ("gpu", "gpu", 1)
    assert train.execution_timeout == timedelta(hours=6)
    assert train.retries >= 1
    assert {t.queue for t in dag.tasks if t.task_id != "train"} == {"default"}
    assert {t.pool for t in dag.tasks if t.task_id != "train"} == {"default_pool"}
    assert [a.name for a in dag.get_task("rescore").outlets] == ["instatag_champion"]
    assert dag.get_task("report").trigger_rule == "none_failed"
    assert set(dag.params) == {"preset", "arch", "size", "epochs", "freeze_epochs", "lr", "bs", "pretrained",
                               "groups_file", "min_count", "force_promote"}
    assert dag.params["preset"] == "default"
    assert dag.params["force_promote"] is False


@pytest.mark.parametrize("conf", [
    {},
    {"epochs": 1, "freeze_epochs": 0, "arch": "resnet18", "size": 64, "lr": "auto", "min_count": 2},
    {"lr": "1e-3"}, {"lr": 0.002}, {"lr": None}, {"preset": "study", "force_promote": True},
    {"groups_file": "/etc/instatag/groups.yaml", "pretrained": "false", "bs": 32, "epochs": 3},
    {"epochs": 0}, {"freeze_epochs": 0}, {"size": 1024}, {"bs": 4096}, {"pretrained": "true"}, {"arch": None},
])
def test_retrain_params_accept(dagbag, conf):
    """Accepted by Airflow's validation and by instatag's check alike."""
    dag = dagbag.dags["instatag_retrain"]
    _valid(dag, conf)
    check_conf("instatag_retrain", conf, dag.params)


@pytest.mark.parametrize("conf, name", [
    ({"epochs": -1}, "epochs"), ({"epochs": "many"}, "epochs"), ({"epochs": 1.5}, "epochs"),
    ({"epochs": 501}, "epochs"), ({"freeze_epochs": -1}, "freeze_epochs"), ({"arch": "vgg16"}, "arch"),
    ({"size": 8}, "size"),
    ({"size": 2048}, "size"), ({"lr": "fast"}, "lr"), ({"lr": 0}, "lr"), ({"lr": 50}, "lr"), ({"lr": "-1"}, "lr"),
    ({"min_count": 0}, "min_count"), ({"force_promote": "yes"}, "force_promote"), ({"pretrained": "yes"}, "pretrained"),
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
    assert {t.task_id for t in dag.tasks} == {"plan", "score", "summary"}
    score = dag.get_task("score")
    assert type(score).__name__.endswith("MappedOperator")  # one task per shard, expanded at run time
    assert score.upstream_task_ids == {"plan"}
    assert dag.get_task("summary").upstream_task_ids == {"score"}
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
