"""Real, throw-away Airflow 3 instances for end-to-end tests.

``AirflowHarness`` creates a fresh PostgreSQL database for Airflow's metadata, runs
``airflow db migrate``, then starts the scheduler, the dag-processor, the api-server and two
Celery workers (queue ``default`` and queue ``gpu``, broker: a numbered database on the
local Redis) as subprocesses in their own process groups, with their logs in the harness
folder. ``stop()`` kills every process group, drops the database and flushes only the Redis
database it used; it is safe to call after a failed or partial start.

``MakeAirflow`` starts Airflow the way ``make airflow`` does, through
``scripts/airflow_standalone.sh`` (LocalExecutor, SQLite), with its own home, data dir, drop
folder and ports; ``stop()`` sends the script SIGTERM, as Ctrl-C would, and reports any
process it left behind.

Both reach the REST API v2 (``RestApi``) with a JWT from the SimpleAuthManager
(``POST /auth/token``). In the harness, every worker reports its own name as the task
instance ``hostname`` (``[core] hostname_callable``), so a test can tell which worker ran a task.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import create_engine, text

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
USER = "admin"

_HOSTNAME_MODULE = '''\
import os
import socket


def hostname():
    """The worker name the harness gave this process, else the machine's name."""
    return os.environ.get("HARNESS_HOSTNAME") or socket.getfqdn()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ingest_workers(log: str) -> int:
    """The number of decoding processes an ingest task's log names."""
    found = re.findall(r"; (\d+) worker\(s\)", log)
    if not found:
        raise HarnessError(f"no worker count in the ingest log:\n{log[-3000:]}")
    return int(found[-1])


def expected_ingest_workers(n_photos: int) -> int:
    """Ingest's default for ``n_photos`` new photos: one decoding process per core (from PARALLEL_MIN on)."""
    from instatag import ingest

    cores = len(os.sched_getaffinity(0))
    return 1 if n_photos < ingest.PARALLEL_MIN else min(cores, n_photos)


class HarnessError(RuntimeError):
    """The harness could not bring Airflow up (the message names the log to read)."""


class RestApi:
    """Airflow's REST API v2 and the waits built on it, for an Airflow at ``base_url``.

    A subclass sets ``base_url``, ``password`` (of ``user``), ``logs`` (a folder named in error
    messages) and defines ``check_alive()`` (raises ``HarnessError`` when a process died).
    """

    base_url: str
    password: str
    logs: Path
    user: str = USER
    _token: str = ""

    def check_alive(self) -> None:
        raise NotImplementedError

    def token(self) -> str:
        if not self._token:
            r = requests.post(f"{self.base_url}/auth/token", json={"username": self.user, "password": self.password},
                              timeout=30)
            r.raise_for_status()
            self._token = r.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, expect: int | None = 200, **kwargs) -> requests.Response:
        """Call ``/api/v2{path}``; raises with the body when the status is not ``expect``."""
        headers = {"Authorization": f"Bearer {self.token()}", **kwargs.pop("headers", {})}
        r = requests.request(method, f"{self.base_url}/api/v2{path}", timeout=30, headers=headers, **kwargs)
        if expect is not None and r.status_code != expect:
            raise HarnessError(f"{method} {path} -> {r.status_code}: {r.text[:2000]}")
        return r

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 180) -> None:
        """Wait until the dag-processor has parsed every DAG; fail at once on import errors."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            errors = self.api("GET", "/importErrors").json()["import_errors"]
            if errors:
                lines = [f"{e['filename']}: {e['stack_trace']}" for e in errors]
                raise HarnessError("DAG import errors:\n" + "\n".join(lines))
            found = {d["dag_id"] for d in self.api("GET", "/dags", params={"limit": 100}).json()["dags"]}
            if set(dag_ids) <= found:
                return
            time.sleep(2)
        raise HarnessError(f"DAGs {dag_ids} not parsed after {timeout:.0f}s; see {self.logs}/dag-processor.log")

    def unpause(self, dag_id: str) -> None:
        self.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, expect: int = 200) -> requests.Response:
        return self.api("POST", f"/dags/{dag_id}/dagRuns", expect=expect,
                        json={"logical_date": None, "conf": conf or {}})

    def dag_runs(self, dag_id: str) -> list[dict]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns", params={"order_by": "run_after"}).json()["dag_runs"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600) -> dict:
        """Poll until the run finishes; returns it, raises with the task logs when it failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            run = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()
            if run["state"] == "success":
                return run
            if run["state"] == "failed":
                raise HarnessError(f"{dag_id} run {run_id} failed:\n{self.describe_run(dag_id, run_id)}")
            time.sleep(3)
        raise HarnessError(f"{dag_id} run {run_id} still running after {timeout:.0f}s:\n"
                           f"{self.describe_run(dag_id, run_id)}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances",
                        params={"limit": 100}).json()["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1):
        """A task's return value."""
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
                        params={"map_index": map_index, "deserialize": True}).json()["value"]

    def task_log(self, dag_id: str, run_id: str, ti: dict) -> str:
        """A task instance's log (its latest try), one line per event."""
        map_index = ti.get("map_index", -1)
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/{max(ti['try_number'], 1)}"
        r = self.api("GET", path, expect=None, params={"map_index": map_index, "full_content": True})
        if r.status_code != 200:
            return f"(log unavailable: HTTP {r.status_code} {r.text[:500]})"
        lines = []
        for entry in r.json().get("content") or []:  # structured lines: event, timestamp, level, ...
            if isinstance(entry, str):
                lines.append(entry)
                continue
            extra = {k: v for k, v in entry.items() if k not in ("event", "timestamp", "level", "logger")}
            lines.append(" ".join(filter(None, [str(entry.get("timestamp", "")), f"[{entry.get('level', '')}]",
                                                str(entry.get("event", "")), json.dumps(extra) if extra else ""])))
        return "\n".join(lines)

    def describe_run(self, dag_id: str, run_id: str) -> str:
        """Every task's state, and the logs of the tasks that did not succeed."""
        lines = []
        for ti in self.task_instances(dag_id, run_id):
            lines.append(f"  {ti['task_id']}[{ti['map_index']}]: {ti['state']} on {ti.get('hostname')} "
                         f"queue {ti.get('queue')}")
            if ti["state"] not in ("success", "skipped", None, "scheduled", "queued"):
                lines.append(self.task_log(dag_id, run_id, ti)[-6000:])
        lines.append(f"(process logs in {self.logs})")
        return "\n".join(lines)



    def consumed(self, run: dict) -> set[str]:
        """Names of the Assets whose events triggered ``run``."""
        events = self.api("GET", f"/dags/{run['dag_id']}/dagRuns/{run['dag_run_id']}/upstreamAssetEvents").json()
        return {e["name"] for e in events["asset_events"]}

    def wait_for_runs(self, dag_id: str, done, timeout: float = 420) -> list[dict]:
        """Wait until ``done(runs)`` and every run of ``dag_id`` has finished; the runs.

        Raises with the task logs when one failed."""
        deadline = time.monotonic() + timeout
        runs: list[dict] = []
        while time.monotonic() < deadline:
            self.check_alive()
            runs = self.dag_runs(dag_id)
            if runs and done(runs) and all(r["state"] in ("success", "failed") for r in runs):
                failed = [r for r in runs if r["state"] == "failed"]
                if failed:
                    raise HarnessError("\n".join(self.describe_run(dag_id, r["dag_run_id"]) for r in failed))
                return runs
            time.sleep(3)
        raise HarnessError(f"{dag_id} runs not finished after {timeout:.0f}s: "
                           f"{[(r['dag_run_id'], r['state']) for r in runs]}")


@dataclass
class AirflowHarness(RestApi):
    root: Path
    dags_folder: Path
    pg_admin_url: str
    plugins_folder: Path | None = None
    #: Redis database number for the Celery broker: one nothing else here uses
    redis_url: str = "redis://127.0.0.1:6379/7"
    #: extra environment for every Airflow process (e.g. INSTATAG_* settings)
    env: dict[str, str] = field(default_factory=dict)
    worker_concurrency: int = 1
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    databases: list[str] = field(default_factory=list)
    _token: str = ""

    # ------------------------------------------------------------------ set-up
    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.home = self.root / "airflow_home"
        self.logs = self.root / "logs"
        self.pylib = self.root / "pylib"
        for d in (self.home, self.logs, self.pylib):
            d.mkdir(exist_ok=True)
        suffix = secrets.token_hex(5)
        self.metadata_db = f"instatag_airflow_{suffix}"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(12)
        self._secrets = {"jwt": secrets.token_urlsafe(32), "api": secrets.token_urlsafe(32),
                         "fernet": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()}

    def pg_url(self, database: str, scheme: str = "postgresql+psycopg2") -> str:
        base = self.pg_admin_url.rsplit("/", 1)[0]
        return f"{scheme}://{base.split('://', 1)[1]}/{database}"

    def create_database(self, name: str) -> str:
        """A fresh PostgreSQL database, dropped by ``stop()``; returns its SQLAlchemy URL."""
        admin = create_engine(self.pg_admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        self.databases.append(name)
        return self.pg_url(name)

    def airflow_env(self) -> dict[str, str]:
        """The environment of every Airflow process: the whole configuration lives here."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "INSTATAG_"))}
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.plugins_folder or self.home / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__FERNET_KEY": self._secrets["fernet"],
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "harness_hostname.hostname",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.home / "passwords.json"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.pg_url(self.metadata_db),
            "AIRFLOW__CELERY__BROKER_URL": self.redis_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.pg_url(self.metadata_db, "postgresql"),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__SECRET_KEY": self._secrets["api"],
            "AIRFLOW__API_AUTH__JWT_SECRET": self._secrets["jwt"],
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs / "tasks"),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(self.pylib), os.environ.get("PYTHONPATH", "")])),
        })
        env.update(self.env)
        return env

    def _run(self, name: str, *args: str, timeout: float = 300) -> None:
        log = self.logs / f"{name}.log"
        with log.open("ab") as fh:
            rc = subprocess.run([AIRFLOW, *args], env=self.airflow_env(), stdout=fh, stderr=subprocess.STDOUT,
                                cwd=self.root, timeout=timeout, start_new_session=True).returncode
        if rc:
            raise HarnessError(f"`airflow {' '.join(args)}` failed ({rc}):\n{tail(log)}")

    def _spawn(self, name: str, *args: str, **env: str) -> None:
        fh = (self.logs / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [AIRFLOW, *args], env={**self.airflow_env(), **env}, stdout=fh, stderr=subprocess.STDOUT,
            cwd=self.root, start_new_session=True)
        fh.close()

    def start(self, timeout: float = 240) -> None:
        """Migrate a fresh metadata database, start every process, wait until the API answers."""
        import redis

        broker = redis.Redis.from_url(self.redis_url, socket_connect_timeout=3)
        broker.ping()
        broker.flushdb()  # only the database number in redis_url
        (self.pylib / "harness_hostname.py").write_text(_HOSTNAME_MODULE)
        (self.home / "passwords.json").write_text(json.dumps({USER: self.password}))
        self.create_database(self.metadata_db)
        self._run("db-migrate", "db", "migrate", timeout=timeout)
        self._run("pools", "pools", "set", "gpu", "1", "one training at a time on the GPU")
        self._spawn("api-server", "api-server", "--port", str(self.port), "--host", "127.0.0.1")
        self._spawn("scheduler", "scheduler")
        self._spawn("dag-processor", "dag-processor")
        self._spawn("worker-default", "celery", "worker", "--queues", "default", "--concurrency",
                    str(self.worker_concurrency), "--celery-hostname", "default@%h", "--skip-serve-logs",
                    HARNESS_HOSTNAME="worker-default")
        self._spawn("worker-gpu", "celery", "worker", "--queues", "gpu", "--concurrency", "1",
                    "--celery-hostname", "gpu@%h", "--skip-serve-logs", HARNESS_HOSTNAME="worker-gpu")
        self.wait_healthy(timeout)

    def check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise HarnessError(f"airflow {name} exited with {proc.returncode}:\n{tail(self.logs / f'{name}.log')}")

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                health = requests.get(f"{self.base_url}/api/v2/monitor/health", timeout=5).json()
                states = {k: (v or {}).get("status") for k, v in health.items()}
                if all(states.get(k) == "healthy" for k in ("metadatabase", "scheduler", "dag_processor")):
                    for name in ("worker-default", "worker-gpu"):
                        if " ready." not in (self.logs / f"{name}.log").read_text(errors="replace"):
                            raise HarnessError(f"{name} not ready yet")
                    return
                last = str(states)
            except (requests.RequestException, ValueError, HarnessError) as exc:
                last = str(exc)
            time.sleep(2)
        raise HarnessError(f"Airflow not healthy after {timeout:.0f}s ({last}); logs in {self.logs}")

    # ------------------------------------------------------------------ teardown
    def stop(self) -> None:
        """Kill every process group, drop the databases, flush the broker database. Never raises."""
        for proc in self.processes.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.processes.clear()
        admin = create_engine(self.pg_admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                for name in self.databases:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except Exception as exc:  # noqa: BLE001 - teardown reports and goes on
            print(f"harness: could not drop {self.databases}: {exc}", file=sys.stderr)
        finally:
            admin.dispose()
        self.databases.clear()
        try:
            import redis

            redis.Redis.from_url(self.redis_url, socket_connect_timeout=3).flushdb()
        except Exception as exc:  # noqa: BLE001
            print(f"harness: could not flush {self.redis_url}: {exc}", file=sys.stderr)


@dataclass
class MakeAirflow(RestApi):
    """Airflow started the way ``make airflow`` starts it: ``scripts/airflow_standalone.sh``.

    The script runs with its own AIRFLOW_HOME, instatag data dir and drop folder under ``root``
    and its own free ports (UI, task log server, trigger log server), nothing else of this
    process's ``AIRFLOW*``/``INSTATAG_*`` environment, plus ``env``. Its output goes to
    ``root/make-airflow.log``; the components' logs are in ``logs``. The REST API is reached as
    the user ``admin`` with the password the api-server generated, read from the file the
    script names (as a user does).
    """

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    script: Path = Path(__file__).resolve().parents[1] / "scripts" / "airflow_standalone.sh"
    process: subprocess.Popen | None = None
    user: str = "admin"
    password: str = ""
    _token: str = ""

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.home = self.root / "airflow_home"
        self.data_dir = self.root / "var"
        self.drop = self.root / "drop"
        self.logs = self.home / "logs" / "standalone"
        self.output = self.root / "make-airflow.log"
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        self.port, self.worker_log_port, self.trigger_log_port = sorted(ports)
        self.base_url = f"http://127.0.0.1:{self.port}"

    def script_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "INSTATAG_"))}
        env.update({
            "VENV": sys.prefix,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW_PORT": str(self.port),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.worker_log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.trigger_log_port),
            "INSTATAG_DATA_DIR": str(self.data_dir),
            "INSTATAG_DROP_DIRS": str(self.drop),
        })
        env.update(self.env)
        return env

    def launch(self) -> None:
        """Start the script (its own session); returns at once. ``said()`` is what it prints from now on."""
        self._said_from = self.output.stat().st_size if self.output.exists() else 0
        with self.output.open("ab") as fh:
            self.process = subprocess.Popen(["sh", str(self.script)], env=self.script_env(), stdout=fh,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)

    def said(self) -> str:
        """The script's output since the last ``launch()`` (a restart on the same root appends)."""
        if not self.output.exists():
            return ""
        with self.output.open("rb") as fh:
            fh.seek(getattr(self, "_said_from", 0))
            return fh.read().decode(errors="replace")

    def start(self, timeout: float = 600) -> None:
        """Launch the script and wait until it says Airflow is up; read the admin password."""
        self.launch()
        deadline = time.monotonic() + timeout
        while "instatag: Airflow is up" not in self.said():
            self.check_alive()
            if time.monotonic() > deadline:
                raise HarnessError(f"make airflow not up after {timeout:.0f}s:\n{self.said()[-4000:]}")
            time.sleep(2)
        passwords = self.home / "simple_auth_manager_passwords.json.generated"
        assert str(passwords) in self.said(), self.said()
        self.password = json.loads(passwords.read_text())["admin"]

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            rc = None if self.process is None else self.process.returncode
            raise HarnessError(f"make airflow exited ({rc}):\n{self.said()[-6000:]}")

    def leftovers(self) -> list:
        """Processes still running from this Airflow: in the session of a component the script
        started (``standalone.sessions``), or with this AIRFLOW_HOME in their environment (a
        process that renamed itself, e.g. ``airflow serve-logs``, may show an environment no more)."""
        import psutil

        sessions = set()
        with contextlib.suppress(OSError):
            sessions = {int(line.split()[1]) for line in (self.home / "standalone.sessions").read_text().splitlines()
                        if line.strip()}
        self._sessions = sessions | getattr(self, "_sessions", set())
        mine = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) in self._sessions or proc.environ().get("AIRFLOW_HOME") == str(self.home):
                    mine.append(proc)
            except (psutil.Error, OSError):
                continue
        return mine

    def stop(self, timeout: float = 120) -> tuple[int | None, list[str]]:
        """SIGTERM to the script, as Ctrl-C would; its exit status and the processes it left.

        Whatever is left afterwards (none when the script stops properly) is killed. Never raises."""
        rc = None
        self.leftovers()  # note the components' sessions before the script removes its list
        if self.process is not None:
            if self.process.poll() is None:
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                rc = self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
                self.process.wait(timeout=10)
        left = []
        for proc in self.leftovers():
            try:
                left.append(" ".join(proc.cmdline()) or proc.name())
                proc.kill()
            except Exception:  # noqa: BLE001 - gone meanwhile
                pass
        return rc, left


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None or sig == signal.SIGKILL:
        try:
            os.killpg(proc.pid, sig)  # the group of this process only (start_new_session=True)
        except (ProcessLookupError, PermissionError):
            pass


def tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"({path} unreadable)"
