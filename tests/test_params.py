"""instatag.params (the DAGs' run parameters and the check of a run's conf) and instatag.trigger_guard
(the api-server middleware that applies the check when a run is requested), without Airflow."""

from __future__ import annotations

import json

import jsonschema
import pytest

from instatag import params, train
from instatag.errors import UserError
from instatag.params import INGEST, RETRAIN, SCORE, check_conf, specs

#: values of every JSON type and the edges of every limit, tried on every param
PROBES = [None, True, False, 0, 1, -1, 2, 0.5, 1.0, 1.5, 15, 16, 255, 256, 257, 500, 501, 1024, 1025, 4096, 4097,
          1e-3, 9.99, 10, 10.5, float("inf"), "", " ", "0", "1e-3", "0.01", "10", "auto", "fast", "-1", "1e3",
          "true", "false", "yes", "default", "study", "huge", "resnet18", "vgg16", "/etc/groups.yaml",
          [], [""], ["/drop/a", ""], ["/drop/a", "/drop/b"], [1], "/drop/a", {"a": 1}]


def _schema_accepts(spec: params.Spec, value) -> bool:
    try:
        jsonschema.validate(value, spec.schema(), format_checker=jsonschema.FormatChecker())
    except jsonschema.ValidationError:
        return False
    return True


def _check_accepts(spec: params.Spec, value) -> bool:
    try:
        spec.check(value)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("dag_id", params.DAG_IDS)
def test_the_check_never_accepts_what_airflow_refuses(dag_id):
    """Airflow validates each value against the schema (jsonschema, as SerializedParam.resolve does):
    whatever instatag's check accepts, that schema accepts too, so Airflow never refuses a run the check
    let through. The schema is weaker only where JSON schema cannot say it: a string lr's numeric range."""
    weaker = []
    for name, spec in specs(dag_id).items():
        for value in PROBES:
            check, schema = _check_accepts(spec, value), _schema_accepts(spec, value)
            assert schema or not check, (name, value)
            if schema and not check:
                weaker.append((name, value))
    assert weaker == ([("lr", "0"), ("lr", "10"), ("lr", "1e3")] if dag_id == RETRAIN else [])


def test_whole_number_limits_are_the_training_configs():
    """The DAG's limits are TrainConfig's (train.LIMITS): both take the limits and refuse one beyond."""
    table = specs(RETRAIN)
    for name, (low, high) in train.LIMITS.items():
        assert table[name].limits == (low, high)
        other = {"epochs": 1} if name == "freeze_epochs" else {"freeze_epochs": 1}
        for value in (low, high):
            check_conf(RETRAIN, {name: value, **other})
            train.config_from("default", **{name: value, **other})
        for value in (low - 1, high + 1):
            with pytest.raises(UserError, match=f"Invalid input for param {name}: {value} is not a whole number "
                                                f"from {low} to {high}"):
                check_conf(RETRAIN, {name: value, **other})
            with pytest.raises(UserError, match=name):
                train.config_from("default", **{name: value, **other})


@pytest.mark.parametrize("conf, message", [
    ({"epoch": 1}, "Unknown param(s) epoch: instatag_retrain takes preset, arch, size, epochs, freeze_epochs, lr, "
                   "bs, pretrained, groups_file, min_count, force_promote"),
    ({"lr": "0"}, 'Invalid input for param lr: "0" is not "auto" or a number between 0 and 10'),
    ({"lr": 0}, "Invalid input for param lr: 0 is not"),
    ({"lr": "1e3"}, "Invalid input for param lr: "),
    ({"epochs": -1}, "Invalid input for param epochs: -1 is not a whole number from 0 to 500"),
    ({"epochs": 1.5}, "Invalid input for param epochs: 1.5 is not a whole number"),
    ({"epochs": "3"}, 'Invalid input for param epochs: "3" is text: give the number 3'),
    ({"epochs": "3.5"}, 'Invalid input for param epochs: "3.5" is text: give a whole number from 0 to 500'),
    ({"epochs": "many"}, 'Invalid input for param epochs: "many" is text: give a whole number from 0 to 500'),
    ({"epochs": True}, "Invalid input for param epochs: true is not a whole number"),
    ({"epochs": 0, "freeze_epochs": 0}, "Invalid training configuration: train at least one epoch"),
    ({"epochs": 0, "pretrained": "false"}, "Invalid training configuration: without pretrained weights"),
    ({"pretrained": False}, 'Invalid input for param pretrained: false is not one of the strings "true", "false"'),
    ({"arch": "vgg16"}, 'Invalid input for param arch: "vgg16" is not one of resnet18, '),
    ({"preset": "huge"}, 'Invalid input for param preset: "huge" is not one of '),
    ({"preset": None}, "Invalid input for param preset: a value is required"),
    ({"force_promote": "yes"}, 'Invalid input for param force_promote: "yes" is not true or false'),
    ({"min_count": 0}, "Invalid input for param min_count: 0 is not a whole number of images of at least 1 (95) "
                       "or a share of the images with a candidate label above 0% and at most 100% (5%)"),
    ({"min_count": "0%"}, 'Invalid input for param min_count: "0%" is not a whole number of images of at least 1'),
    ({"min_count": "150%"}, 'Invalid input for param min_count: "150%" is not a whole number of images of at least 1 '
                            "(95) or a share of the images with a candidate label above 0% and at most 100%"),
    ({"groups_file": 3}, "Invalid input for param groups_file: 3 is not a text"),
])
def test_retrain_conf_refused_with_the_problem_named(conf, message):
    with pytest.raises(UserError) as err:
        check_conf(RETRAIN, conf)
    assert str(err.value).startswith(message), str(err.value)


def test_every_problem_is_named_at_once():
    with pytest.raises(UserError) as err:
        check_conf(RETRAIN, {"epoch": 1, "lr": "fast", "bs": 1})
    assert str(err.value).split("; ")[0].startswith("Unknown param(s) epoch:")
    assert [p.split(":")[0] for p in str(err.value).split("; ")[1:]] == [
        "Invalid input for param lr", "Invalid input for param bs"]


def test_retrain_values_as_the_tasks_use_them():
    assert check_conf(RETRAIN, {}, {"preset": "study"}) == {
        "preset": "study", "arch": None, "size": None, "epochs": None, "freeze_epochs": None, "lr": None, "bs": None,
        "pretrained": None, "groups_file": None, "min_count": None, "force_promote": False, "suggest": False,
        "reason": None}
    got = check_conf(RETRAIN, {"lr": "1e-3", "pretrained": "false", "epochs": 0 + 3, "groups_file": "  ",
                               "arch": "resnet18", "size": 64.0, "force_promote": True})
    assert (got["lr"], got["pretrained"], got["epochs"], got["groups_file"], got["arch"]) == (
        0.001, False, 3, None, "resnet18")
    assert got["size"] == 64 and isinstance(got["size"], int)
    assert check_conf(RETRAIN, {"lr": "auto", "pretrained": "true"})["pretrained"] is True
    assert check_conf(RETRAIN, {"lr": 0.002})["lr"] == 0.002
    assert check_conf(RETRAIN, {"epochs": 0})["epochs"] == 0  # only the default preset's 2 frozen epochs


def test_ingest_and_score_conf():
    assert check_conf(INGEST, {}) == {"sources": None}
    assert check_conf(INGEST, {"sources": []}) == {"sources": None}
    assert check_conf(INGEST, {"sources": [" /drop/a ", "", "/drop/b"]}) == {"sources": ["/drop/a", "/drop/b"]}
    with pytest.raises(UserError, match='Invalid input for param sources: "/drop/a" is not a list of paths'):
        check_conf(INGEST, {"sources": "/drop/a"})
    with pytest.raises(UserError, match="Unknown param.*epochs: instatag_ingest takes sources"):
        check_conf(INGEST, {"epochs": 3})
    assert check_conf(SCORE, {"shards": 8, "all_images": True}) == {"shards": 8, "all_images": True}
    with pytest.raises(UserError, match="Invalid input for param shards: 0 is not a whole number from 1 to 256"):
        check_conf(SCORE, {"shards": 0})


def test_descriptions_give_the_presets_values():
    table = specs(RETRAIN, "study")
    assert table["preset"].default == "study"
    assert "(study: 15; default: 7)" in table["epochs"].description
    assert "0 to 500" in table["epochs"].description
    assert "(study: yes; default: yes)" in table["pretrained"].description
    with pytest.raises(KeyError):
        specs("another_dag")


# --------------------------------------------------------------------------- trigger_guard
class _Recorder:
    """The ASGI app behind the guard: records what reached it and answers 200 with the body it got."""

    def __init__(self):
        self.bodies = []

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append((scope["method"], scope["path"], body))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def guarded():
    from starlette.testclient import TestClient

    from instatag.trigger_guard import TriggerGuard

    app = _Recorder()
    return TestClient(TriggerGuard(app)), app


AUTH = {"Authorization": "Bearer x"}


def test_guard_refuses_a_bad_trigger_with_400(guarded):
    client, app = guarded
    for conf, start in (({"epoch": 1}, "Unknown param(s) epoch: instatag_retrain takes "),
                        ({"lr": "0"}, "Invalid input for param lr: "),
                        ({"epochs": -1}, "Invalid input for param epochs: -1 is not a whole number from 0 to 500")):
        r = client.post("/api/v2/dags/instatag_retrain/dagRuns", headers=AUTH, json={"logical_date": None,
                                                                                      "conf": conf})
        assert r.status_code == 400 and r.json()["detail"].startswith(start), r.text
    r = client.post("/api/v2/backfills", cookies={"_token": "x"}, json={
        "dag_id": "instatag_ingest", "from_date": "2026-01-01T00:00:00Z", "to_date": "2026-01-02T00:00:00Z",
        "dag_run_conf": {"sources": "/drop"}})
    assert r.status_code == 400 and "param sources" in r.json()["detail"]
    assert app.bodies == []  # nothing reached Airflow


def test_guard_hands_everything_else_on_unchanged(guarded):
    client, app = guarded
    good = json.dumps({"logical_date": None, "conf": {"epochs": 1, "lr": "1e-3"}}).encode() + b" " * 70000
    cases = [
        ("POST", "/api/v2/dags/instatag_retrain/dagRuns", AUTH, good),  # a good conf (a body in several chunks)
        ("POST", "/api/v2/dags/instatag_retrain/dagRuns", AUTH, b'{"conf": null}'),
        ("POST", "/api/v2/dags/other_dag/dagRuns", AUTH, b'{"conf": {"epoch": 1}}'),  # not instatag's
        ("POST", "/api/v2/dags/instatag_retrain/dagRuns", {}, b'{"conf": {"epoch": 1}}'),  # no credentials: 401
        ("POST", "/api/v2/dags/instatag_retrain/dagRuns", AUTH, b"not json"),  # Airflow answers 422
        ("POST", "/api/v2/dags/instatag_retrain/dagRuns", AUTH, b'{"conf": [1]}'),
        ("PATCH", "/api/v2/dags/instatag_retrain/dagRuns", AUTH, b'{"conf": {"epoch": 1}}'),
        ("POST", "/api/v2/dags/instatag_retrain/dagRuns/x/clear", AUTH, b'{"conf": {"epoch": 1}}'),
        ("POST", "/api/v2/backfills/dry_run", AUTH, b'{"dag_id": "instatag_retrain", "dag_run_conf": {"a": 1}}'),
    ]
    for method, path, headers, body in cases:
        r = client.request(method, path, headers=headers, content=body)
        assert r.status_code == 200 and r.content == body, (method, path, r.text[:200])
    assert [b[2] for b in app.bodies] == [c[3] for c in cases]


def test_a_training_conf_passes_the_dag_check_exactly_when_trainconfig_accepts_it():
    """TrainConfig.validate is the one rule: epochs=0 (only the frozen phase) and freeze_epochs=0 are
    both fine alone, not together, and not without pretrained weights for a frozen-only run; the DAG's
    check takes every one of these answers from it."""
    for epochs in (-1, 0, 1, 500, 501):
        for freeze in (-1, 0, 1):
            for pretrained in (None, True, False):
                fields = {"epochs": epochs, "freeze_epochs": freeze, "pretrained": pretrained}
                conf = {**fields, "pretrained": None if pretrained is None else str(pretrained).lower()}
                try:
                    train.config_from("default", **fields)
                    accepted = True
                except UserError:
                    accepted = False
                try:
                    check_conf(RETRAIN, conf)
                    checked = True
                except UserError:
                    checked = False
                assert checked == accepted, fields
    assert train.config_from("default", epochs=0).epochs == 0 and check_conf(RETRAIN, {"epochs": 0})["epochs"] == 0
    with pytest.raises(UserError, match="train at least one epoch"):
        check_conf(RETRAIN, {"epochs": 0, "freeze_epochs": 0})
