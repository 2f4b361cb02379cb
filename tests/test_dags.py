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
        assert dag.doc_md, dag.dag_id


def test_ingest_dag(dagbag):
    dag = dagbag.dags["instatag_ingest"]
    assert dag.schedule == "@hourly"  # the default of INSTATAG_INGEST_SCHEDULE
    assert {t.task_id for t in dag.tasks} == {"ingest", "publish_new_images"}
    publish = dag.get_task("publish_new_images")
    assert publish.upstream_task_ids == {"ingest"}
    assert [a.name for a in publish.outlets] == ["instatag_images"]
    assert dag.get_task("ingest").outlets == []
    assert dag.params["sources"] == []
    _valid(dag, {"sources": ["/drop/a", "/drop/b"]})
    _invalid(dag, {"sources": "/drop/a"}, "sources")


def test_retrain_dag(dagbag):
    dag = dagbag.dags["instatag_retrain"]
    assert dag.schedule == "@daily"  # the default of INSTATAG_RETRAIN_SCHEDULE
    chain = ["vocabulary", "train", "evaluate", "promote", "rescore", "report"]
    assert {t.task_id for t in dag.tasks} == {*chain, "suggest"}
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
                               "groups_file", "min_count", "force_promote", "suggest"}
    assert dag.params["preset"] == "default"
    assert dag.params["force_promote"] is False


def test_retrain_dags_suggest_task_is_optional_and_applies_nothing(dagbag, monkeypatch):
    from airflow.sdk.exceptions import AirflowSkipException

    from instatag import pipeline

    dag = dagbag.dags["instatag_retrain"]
    suggest = dag.get_task("suggest")
    assert dag.params["suggest"] is False  # scheduled runs skip it
    assert suggest.upstream_task_ids == set() and suggest.downstream_task_ids == set()  # nothing waits on it
    assert suggest.queue == "default"
    _valid(dag, {"suggest": True, "groups_file": "/etc/instatag/groups.yaml"})
    _invalid(dag, {"suggest": "yes"}, "suggest")
    with pytest.raises(AirflowSkipException, match="suggest is off"):
        suggest.python_callable(params={"suggest": False, "groups_file": ""})
    calls = []
    monkeypatch.setattr(pipeline, "suggest_vocabulary", lambda groups_file: calls.append(groups_file) or {"n": 1})
    assert suggest.python_callable(params={"suggest": True, "groups_file": "/g.yaml"}) == {"n": 1}
    assert calls == ["/g.yaml"]


@pytest.mark.parametrize("conf", [
    {},
    {"epochs": 1, "freeze_epochs": 0, "arch": "resnet18", "size": 64, "lr": "auto", "min_count": 2},
    {"lr": "1e-3"}, {"lr": 0.002}, {"lr": None}, {"preset": "study", "force_promote": True},
    {"groups_file": "/etc/instatag/groups.yaml", "pretrained": False, "bs": 32},
    {"min_count": "5%"}, {"min_count": "2.5%"}, {"min_count": "95"},
])
def test_retrain_params_accept(dagbag, conf):
    _valid(dagbag.dags["instatag_retrain"], conf)


@pytest.mark.parametrize("conf, name", [
    ({"epochs": 0}, "epochs"), ({"epochs": "many"}, "epochs"), ({"epochs": 1.5}, "epochs"),
    ({"freeze_epochs": -1}, "freeze_epochs"), ({"arch": "vgg16"}, "arch"), ({"size": 8}, "size"),
    ({"lr": "fast"}, "lr"), ({"lr": 0}, "lr"), ({"lr": 50}, "lr"), ({"lr": "-1"}, "lr"),
    ({"min_count": 0}, "min_count"), ({"min_count": "many"}, "min_count"), ({"min_count": "5 %%"}, "min_count"),
    ({"min_count": 2.5}, "min_count"), ({"force_promote": "yes"}, "force_promote"),
    ({"preset": "huge"}, "preset"), ({"groups_file": 3}, "groups_file"), ({"bs": 1}, "bs"),
])
def test_retrain_params_reject_with_the_param_named(dagbag, conf, name):
    _invalid(dagbag.dags["instatag_retrain"], conf, name)


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


def test_parsing_imports_no_torch_and_reads_the_schedules_from_settings(tmp_path):
    """The DAG files parse without importing torch or fastai; schedules and the preset come from settings."""
    code = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag({str(DAGS)!r})\n"
        "out = {'errors': bag.import_errors, 'heavy': sorted(m for m in ('torch', 'fastai', 'torchvision', 'timm',"
        " 'matplotlib', 'nltk') if m in sys.modules),\n"
        "       'schedules': {d.dag_id: d.schedule for d in bag.dags.values()},\n"
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
