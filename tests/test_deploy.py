"""The docker-compose deployment: the file validates (``docker-compose config`` needs no Docker
engine), has the expected services, queues and GPU reservation, commits no secret, and its
instatag-init script really sets up a database. No image is built here: that needs an engine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, inspect, text

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
SECRETS = ("POSTGRES_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY",
           "_AIRFLOW_WWW_USER_PASSWORD")


def _docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        reason = "docker-compose is not installed (Debian: apt-get install docker-compose)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def _env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def _filled_env_file(tmp_path: Path) -> Path:
    """.env.example with its empty (secret) values filled in, as a user's .env would be."""
    env = _env_example()
    env.update({name: f"test-{name.lower()}" for name in SECRETS})
    env["AIRFLOW_CONN_INSTATAG_DB"] = "postgres://airflow:test-postgres_password@postgres:5432/instatag"
    path = tmp_path / "test.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return path


def _config(tmp_path: Path) -> dict:
    proc = subprocess.run([_docker_compose(), "--env-file", str(_filled_env_file(tmp_path)), "-f", str(COMPOSE),
                           "config"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_env_example_commits_no_secret():
    env = _env_example()
    for name in (*SECRETS, "AIRFLOW_CONN_INSTATAG_DB"):
        assert env[name] == "", f"{name} must stay empty in .env.example"
    assert ".env" in (REPO / ".gitignore").read_text().split()
    assert ".env" in (REPO / ".dockerignore").read_text().split()


def test_compose_refuses_to_start_without_the_secrets(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = subprocess.run([_docker_compose(), "--env-file", str(empty), "-f", str(COMPOSE), "config", "-q"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "POSTGRES_PASSWORD": ""})
    assert proc.returncode != 0
    assert re.search(r"set \w+ in \.env", proc.stderr), proc.stderr


def test_compose_file_validates_with_the_expected_services(tmp_path):
    proc = subprocess.run([_docker_compose(), "--env-file", str(_filled_env_file(tmp_path)), "-f", str(COMPOSE),
                           "config", "-q"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    services = _config(tmp_path)["services"]
    assert set(services) >= {"postgres", "redis", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                             "airflow-triggerer", "airflow-worker", "airflow-worker-gpu", "airflow-init",
                             "instatag-init"}

    gpu = services["airflow-worker-gpu"]
    assert gpu["command"].split() == ["celery", "worker", "--queues", "gpu", "--concurrency", "1"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["environment"]["INSTATAG_DEVICE"] == "cuda"
    cpu = services["airflow-worker"]
    assert cpu["command"].split()[:4] == ["celery", "worker", "--queues", "default"]
    assert "deploy" not in cpu

    airflow_services = [name for name, s in services.items() if s.get("image", "").startswith("instatag-airflow")]
    assert len(airflow_services) >= 9
    for name in airflow_services:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW_CONN_INSTATAG_DB"].startswith("postgres://"), name
        assert env["INSTATAG_DATA_DIR"] == "/opt/instatag/data", name
        targets = {v.split(":")[1] for v in services[name]["volumes"]}
        assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/instatag/data", "/opt/instatag/drop"} <= targets
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                 "airflow-worker", "airflow-worker-gpu"):
        assert services[name]["depends_on"]["instatag-init"]["condition"] == "service_completed_successfully"
    assert services["instatag-init"]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    init = services["instatag-init"]["command"][-1]
    assert "instatag db upgrade" in init and 'airflow pools set gpu 1 "' in init


def test_dockerfile_extends_the_airflow_image_and_fetches_at_build_time():
    text_ = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM apache/airflow:\$\{AIRFLOW_VERSION\}-python\$\{PYTHON_VERSION\}$", text_, re.M)
    assert "ARG AIRFLOW_VERSION=3.3.2" in text_
    assert "-c /opt/instatag/src/constraints.txt" in text_
    assert "instatag.wordnet provision" in text_ and "resnet18(weights=" in text_
    for path in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text_, re.M):
        for part in path.split():
            assert (REPO / part).exists(), f"the Dockerfile copies {part}, which is missing"


@pytest.mark.postgres
def test_instatag_init_script_sets_up_the_database_and_can_run_again(tmp_path, pg_admin_url):
    """The compose file's instatag-init script, run here against the local PostgreSQL with a stand-in
    ``airflow`` command: it creates the database, migrates it and sets the pool; a second run changes nothing."""
    script = yaml.safe_load(COMPOSE.read_text())["services"]["instatag-init"]["command"][-1]
    script = script.replace("${INSTATAG_GPU_SLOTS:-1}", "1")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "airflow-calls"
    (bin_dir / "airflow").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "airflow").chmod(0o755)
    name = f"instatag_init_{uuid.uuid4().hex[:10]}"
    host = pg_admin_url.split("://", 1)[1].rsplit("/", 1)[0]
    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INSTATAG_", "AIRFLOW"))}
    env.update(PATH=f"{bin_dir}:{venv_bin}:{env['PATH']}", AIRFLOW_CONN_INSTATAG_DB=f"postgres://{host}/{name}",
               INSTATAG_DATA_DIR=str(tmp_path / "var"))
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    try:
        for _ in range(2):
            proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stdout + proc.stderr
        engine = create_engine(pg_admin_url.rsplit("/", 1)[0] + f"/{name}")
        with engine.connect() as conn:
            assert {"images", "predictions", "model_versions"} <= set(inspect(conn).get_table_names())
            assert "predicted_tags" in inspect(conn).get_view_names()
        engine.dispose()
        assert calls.read_text().splitlines() == ["pools set gpu 1 instatag training: one slot per GPU"] * 2
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
