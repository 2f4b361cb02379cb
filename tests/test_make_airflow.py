"""``make airflow`` as a new user meets it: the same script (scripts/airflow_standalone.sh:
LocalExecutor, SQLite metadata and instatag databases), its own AIRFLOW_HOME, data dir, drop
folder and ports; a generated drop of a few hundred posts; the retrain DAG triggered from its
form in headless Chromium, at its defaults; ingest → retrain → score through the Assets.

The script's checks that need no running Airflow (ports, one instance per AIRFLOW_HOME) are
quick tests; the rest start the script (markers ``airflow``, ``slow``; the walk also
``browser``). Screenshots of the form and the grid are saved in the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from airflow_harness import MakeAirflow, expected_ingest_workers, free_port, ingest_workers
from browser_support import headless_chromium, require_browser
from sqlalchemy import create_engine, text

from instatag import pipeline, sample

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "airflow_standalone.sh"
DAG_IDS = ["instatag_ingest", "instatag_retrain", "instatag_score"]
#: the walk's drop: enough posts for several decoding processes and a vocabulary of several labels
N_POSTS = 300


# --------------------------------------------------------------------------- the script's checks
def _script(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Run the script with a throw-away home, for what it refuses before starting anything: its
    `airflow` is a stub that fails, so a check that lets something through cannot start Airflow."""
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True, exist_ok=True)
    (venv / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (venv / "airflow").write_text('#!/bin/sh\necho "stub airflow $*: the checks let this through" >&2\nexit 97\n')
    for f in venv.iterdir():
        f.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "INSTATAG_"))}
    base.update({"VENV": str(venv.parent), "AIRFLOW_HOME": str(tmp_path / "home"),
                 "INSTATAG_DATA_DIR": str(tmp_path / "var"), "INSTATAG_DROP_DIRS": str(tmp_path / "drop")})
    base.update(env)
    return subprocess.run(["sh", str(SCRIPT)], env=base, capture_output=True, text=True, timeout=120)


@pytest.fixture
def listening():
    """A port something listens on (as another program would)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("port", ["8793", "8794"])
def test_the_ui_port_may_not_be_a_log_server_port(tmp_path, port):
    """Not even when this Airflow's log servers are elsewhere: the next Airflow's take them."""
    r = _script(tmp_path, AIRFLOW_PORT=port, AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
                AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()))
    assert r.returncode == 2, r
    assert f"port {port} (AIRFLOW_PORT) is Airflow's default log server port" in r.stderr
    assert "set AIRFLOW_PORT to another port" in r.stderr


@pytest.mark.parametrize("var", ["AIRFLOW_PORT", "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
                                 "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"])
def test_a_port_in_use_is_refused_naming_the_setting(tmp_path, listening, var):
    r = _script(tmp_path, **{var: str(listening)})
    assert r.returncode == 2, r
    assert f"port {listening} ({var}" in r.stderr and "Address already in use" in r.stderr, r.stderr
    assert f"set {var} to a free port" in r.stderr
    assert not (tmp_path / "var" / "instatag.db").exists()  # refused before anything was set up


def test_one_instance_per_airflow_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    first = subprocess.Popen(["sh", "-c", "sleep 60 # scripts/airflow_standalone.sh"])  # what a running one looks like
    try:
        (home / "standalone.pid").write_text(str(first.pid))
        r = _script(tmp_path, AIRFLOW_PORT=str(free_port()))
    finally:
        first.kill()
        first.wait()
    assert r.returncode == 2, r
    assert f"Airflow already runs from {home} (pid {first.pid})" in r.stderr
    # a lock left by one that was killed is taken over (here up to the stub airflow)
    (home / "standalone.pid").write_text(str(os.getpid()))
    r = _script(tmp_path, AIRFLOW_PORT=str(free_port()))
    assert r.returncode == 1 and "error: airflow db migrate failed" in r.stderr, r
    assert "stub airflow db migrate" in r.stderr
    assert not (home / "standalone.pid").exists()


# --------------------------------------------------------------------------- Airflow started by it
@pytest.mark.airflow
@pytest.mark.slow
def test_the_script_fails_loudly_when_the_ui_cannot_bind(tmp_path):
    """Another program takes the UI's port after the script checked it: the api-server cannot
    bind; the script says so with the api-server's log, stops everything and exits 1."""
    af = MakeAirflow(root=tmp_path / "make-airflow")
    af.launch()
    try:
        deadline = time.monotonic() + 300
        while "instatag: starting" not in af.said():
            assert af.process.poll() is None and time.monotonic() < deadline, af.said()
            time.sleep(0.2)
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", af.port))
            squatter.listen()
            rc = af.process.wait(timeout=300)
    finally:
        stopped_rc, left = af.stop()
    said = af.said()
    assert rc == 1, said
    assert "error: airflow api-server exited" in said, said
    assert f"error while attempting to bind on address ('127.0.0.1', {af.port})" in said  # the log's tail
    assert "instatag: stopped" in said
    assert left == []


def near_a_daily_tick() -> bool:
    """Within SCHEDULE_GRACE (and the time Airflow takes to come up) after midnight UTC, when a
    DAG created then runs for that midnight's tick: the nightly retrain would start by itself."""
    now = datetime.now(UTC)
    return now - now.replace(hour=0, minute=0, second=0, microsecond=0) < pipeline.SCHEDULE_GRACE + timedelta(
        minutes=10)


@pytest.fixture
def make_airflow(tmp_path):
    """Airflow started by the script with the defaults of `make airflow`, except that the ingest
    DAG runs only when triggered (INSTATAG_INGEST_SCHEDULE=none: the walk decides when the drop
    is complete) and training runs on the CPU. Stopped afterwards, also when the test fails."""
    env = {"INSTATAG_INGEST_SCHEDULE": "none", "INSTATAG_DEVICE": "cpu"}
    if near_a_daily_tick():
        env["INSTATAG_RETRAIN_SCHEDULE"] = "none"  # else the nightly run would rightly start at once
    af = MakeAirflow(root=tmp_path / "make-airflow", env=env)
    try:
        yield af
    finally:
        af.stop()


@pytest.fixture
def chromium(tmp_path):
    with headless_chromium(tmp_path / "chromium") as driver:
        yield driver


class TriggerForm:
    """The retrain DAG's trigger form in the Airflow UI (Dag page → Trigger)."""

    def __init__(self, driver, base_url: str, dag_id: str):
        from selenium.webdriver.support.ui import WebDriverWait

        self.d, self.base_url, self.dag_id = driver, base_url, dag_id
        self.wait = WebDriverWait(driver, 120)

    def login(self, user: str, password: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        self.d.get(f"{self.base_url}/dags/{self.dag_id}")
        self.wait.until(ec.presence_of_element_located((By.NAME, "username"))).send_keys(user)
        self.d.find_element(By.NAME, "password").send_keys(password)
        self.d.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        self.wait.until(ec.url_contains(f"/dags/{self.dag_id}"))

    def open(self):
        """Open the form from the Dag page; its submit button."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        self.d.get(f"{self.base_url}/dags/{self.dag_id}")
        self.wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-button]"))).click()
        return self.wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]")))

    def field(self, param: str):
        from selenium.webdriver.common.by import By

        return self.d.find_element(By.NAME, f"element_{param}")

    def submit(self, button) -> None:
        self.wait.until(lambda d: button.is_enabled())
        self.d.execute_script("arguments[0].scrollIntoView()", button)
        button.click()

    def message(self, text: str):
        """The form's message containing ``text`` (Airflow's ErrorAlert above the form's fields:
        ``data-testid=error-alert``, no ARIA role), scrolled into view; None while there is none."""
        from selenium.webdriver.common.by import By

        for alert in self.d.find_elements(By.CSS_SELECTOR, "[role=dialog] [data-testid=error-alert]"):
            # textContent: .text is empty while the alert sits outside the dialog's scrolled view
            if text in (alert.get_attribute("textContent") or ""):
                self.d.execute_script("arguments[0].scrollIntoView()", alert)
                return alert
        return None

    def screenshot(self, path: Path) -> None:
        png = self.d.get_screenshot_as_png()
        path.write_bytes(png)


@pytest.mark.airflow
@pytest.mark.slow
@pytest.mark.browser
def test_make_airflow_walk(make_airflow, chromium, tmp_path):
    """A drop, the retrain form at its defaults, and the Assets do the rest."""
    af = make_airflow
    require_browser()
    timings: dict[str, float] = {}
    started = time.monotonic()
    sample.make_scrape(af.drop / "drop-2026-11-01", n_posts=N_POSTS, seed=11)

    af.start()
    timings["airflow up"] = time.monotonic() - started
    af.wait_for_dags(DAG_IDS)
    dags = {d["dag_id"]: d for d in af.api("GET", "/dags", params={"limit": 100}).json()["dags"]}
    assert {dag_id: dags[dag_id]["is_paused"] for dag_id in DAG_IDS} == dict.fromkeys(DAG_IDS, False)

    # ingest the drop folder (INSTATAG_DROP_DIRS), with the default number of decoding processes
    run = af.trigger("instatag_ingest").json()
    af.wait_for_run("instatag_ingest", run["dag_run_id"], timeout=600)
    report = af.xcom("instatag_ingest", run["dag_run_id"], "ingest")
    assert report["accepted"] == N_POSTS, report
    ti = next(t for t in af.task_instances("instatag_ingest", run["dag_run_id"]) if t["task_id"] == "ingest")
    assert ingest_workers(af.task_log("instatag_ingest", run["dag_run_id"], ti)) == expected_ingest_workers(N_POSTS)
    # the Asset instatag_images started the scoring DAG: nothing to score without a champion
    af.wait_for_runs("instatag_score", lambda runs: len(runs) == 1, timeout=300)
    timings["ingest"] = time.monotonic() - started

    # the retrain DAG's form in the browser, logged in as the script's admin
    form = TriggerForm(chromium, af.base_url, "instatag_retrain")
    form.login(af.user, af.password)
    submit = form.open()
    form.screenshot(tmp_path / "form-defaults.png")
    # a bad value: the form shows why, and no run is created
    lr = form.field("lr")
    lr.send_keys("fast")
    form.submit(submit)
    try:
        form.wait.until(lambda d: form.message("Invalid input for param lr"))
    finally:
        form.screenshot(tmp_path / "form-bad-value.png")
    time.sleep(3)
    # neither that nor a run for the tick just past (the DAG was active from its creation)
    assert af.dag_runs("instatag_retrain") == []

    # the defaults, as the form shows them on opening
    submit = form.open()
    form.submit(submit)
    form.wait.until(lambda d: "/runs/" in d.current_url)
    runs = af.dag_runs("instatag_retrain")
    assert len(runs) == 1 and runs[0]["run_type"] == "manual", runs
    run_id = runs[0]["dag_run_id"]
    assert runs[0]["conf"]["preset"] == "default", runs[0]["conf"]
    af.wait_for_run("instatag_retrain", run_id, timeout=1800)
    states = {t["task_id"]: t["state"] for t in af.task_instances("instatag_retrain", run_id)}
    chain = ["changes", "vocabulary", "train", "evaluate", "promote", "publish_champion", "report"]
    assert states == {**dict.fromkeys(chain, "success"), "suggest": "skipped"}  # the form's defaults: suggest off
    model = af.xcom("instatag_retrain", run_id, "train")
    metrics = af.xcom("instatag_retrain", run_id, "evaluate")
    timings["retrain"] = time.monotonic() - started

    # the promotion updated instatag_champion, which started the scoring of every image
    score_runs = af.wait_for_runs("instatag_score", lambda runs: any(
        "instatag_champion" in af.consumed(r) for r in runs), timeout=600)
    assert all(r["state"] == "success" for r in score_runs), score_runs
    timings["score"] = time.monotonic() - started
    chromium.get(f"{af.base_url}/dags/instatag_retrain/runs/{run_id}")
    time.sleep(5)
    form.screenshot(tmp_path / "grid.png")

    engine = create_engine(f"sqlite:///{af.data_dir / 'instatag.db'}")
    try:
        with engine.connect() as conn:
            images = set(conn.execute(text("select id from images")).scalars())
            predicted = conn.execute(text(
                "select image_id, count(*), min(model_version), max(model_version) from predicted_tags "
                "group by image_id")).all()
            champion = conn.execute(text("select id from model_versions where status = 'champion'")).scalars().all()
            labels = conn.execute(text("select count(*) from vocab_labels")).scalar()
    finally:
        engine.dispose()
    assert champion == [model]
    assert len(images) == N_POSTS
    assert {image_id for image_id, *_ in predicted} == images
    assert all(n >= 1 and lo == hi == model for _, n, lo, hi in predicted)

    rc, left = af.stop()
    timings["stopped"] = time.monotonic() - started
    assert rc == 0 and left == [], (rc, left, af.said()[-3000:])
    print(f"make airflow walk: {labels} labels, metrics {json.dumps(metrics)[:400]}")
    print("make airflow walk timings (s since start): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
