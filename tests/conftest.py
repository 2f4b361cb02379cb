"""Shared fixtures: settings on a fresh SQLite file and on a fresh PostgreSQL database.

PostgreSQL tests use the server at 127.0.0.1:5432 (INSTATAG_TEST_PG_ADMIN overrides the
admin URL), one database per test, dropped afterwards. They skip with a reason when the
server is unreachable, except under CI (CI=true), where they fail instead.

PostgreSQL driver: the test databases' URLs name the driver INSTATAG_TEST_PG_DRIVER, default
``psycopg`` (psycopg 3: ``postgresql://``, the form users write and SQLAlchemy's default), or
``psycopg2`` (``postgresql+psycopg2://``). Tests marked ``pg_drivers`` (the database layer:
schema, COPY, ingest, vocabulary and score writes) run their PostgreSQL case under the other
driver too (ids ``postgres`` and ``postgres-psycopg2``), so one ``make test`` covers both URL
forms without running the whole suite twice.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from instatag import db
from instatag.settings import load_settings

PG_ADMIN = os.environ.get("INSTATAG_TEST_PG_ADMIN", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
FOOD10 = Path(os.environ.get("INSTATAG_FOOD10",
                             Path(__file__).resolve().parents[2] / "shared" / "data" / "food10-scrape"))


def _pg_unreachable_reason() -> str | None:
    try:
        eng = create_engine(PG_ADMIN, connect_args={"connect_timeout": 3})
        with eng.connect():
            pass
        eng.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable
        return f"PostgreSQL at {PG_ADMIN} unreachable: {str(exc).splitlines()[0]}"


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    reason = _pg_unreachable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (PostgreSQL tests are mandatory in CI)")
        pytest.skip(reason)
    return PG_ADMIN


#: URL scheme of each PostgreSQL driver
PG_SCHEMES = {"psycopg": "postgresql", "psycopg2": "postgresql+psycopg2"}
PG_DRIVER = os.environ.get("INSTATAG_TEST_PG_DRIVER", "psycopg")
if PG_DRIVER not in PG_SCHEMES:
    raise pytest.UsageError(f"INSTATAG_TEST_PG_DRIVER={PG_DRIVER!r}: one of {', '.join(PG_SCHEMES)}")
OTHER_PG_DRIVER = next(d for d in PG_SCHEMES if d != PG_DRIVER)


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc):
    """``pg_drivers``: the PostgreSQL case of ``settings`` (or ``pg_url``) under each driver. Runs
    first and adds a parametrize mark, which takes the place of the fixture's own parameters."""
    if not metafunc.definition.get_closest_marker("pg_drivers"):
        return
    if "settings" in metafunc.fixturenames:
        metafunc.definition.add_marker(pytest.mark.parametrize("settings", [
            "sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
            pytest.param(f"postgres-{OTHER_PG_DRIVER}", marks=pytest.mark.postgres)], indirect=True))
    elif "pg_driver" in metafunc.fixturenames:
        metafunc.definition.add_marker(pytest.mark.parametrize("pg_driver", [PG_DRIVER, OTHER_PG_DRIVER],
                                                               indirect=True))


@contextmanager
def fresh_pg_database(admin_url: str, driver: str = PG_DRIVER):
    """The URL (with ``driver``) of a new PostgreSQL database, dropped afterwards."""
    name = f"instatag_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    server = admin_url.split("://", 1)[1].rsplit("/", 1)[0]
    try:
        yield f"{PG_SCHEMES[driver]}://{server}/{name}"
    finally:
        db._engine.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_driver(request) -> str:
    """The PostgreSQL driver of ``pg_url``: INSTATAG_TEST_PG_DRIVER, or each under ``pg_drivers``."""
    return getattr(request, "param", PG_DRIVER)


@pytest.fixture
def pg_url(pg_admin_url, pg_driver):
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    with fresh_pg_database(pg_admin_url, pg_driver) as url:
        yield url


def _settings(tmp_path: Path, url: str | None):
    data_dir = tmp_path / "var"
    return load_settings(env={}, data_dir=data_dir, **({"database_url": url} if url else {}))


@pytest.fixture
def sqlite_settings(tmp_path):
    """Settings on a fresh, upgraded SQLite database under tmp_path."""
    s = _settings(tmp_path, None)
    db.upgrade(s)
    return s


@pytest.fixture
def pg_settings(tmp_path, pg_url):
    """Settings on a fresh, upgraded PostgreSQL database."""
    s = _settings(tmp_path, pg_url)
    db.upgrade(s)
    return s


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request, tmp_path):
    """Settings on a fresh, upgraded database: each test runs on SQLite and on PostgreSQL
    (``postgres-<driver>``: through that driver, see ``pg_drivers``)."""
    if request.param == "sqlite":
        s = _settings(tmp_path, None)
        db.upgrade(s)
        yield s
        return
    driver = request.param.partition("-")[2] or PG_DRIVER
    with fresh_pg_database(request.getfixturevalue("pg_admin_url"), driver) as url:
        s = _settings(tmp_path, url)
        db.upgrade(s)
        yield s


@pytest.fixture
def food10() -> Path:
    if not FOOD10.is_dir():
        pytest.skip(f"{FOOD10} is absent")
    return FOOD10


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved, untrained resnet18 at size 32 for ``builders.LABELS`` (``builders.save_tiny_model``)."""
    from builders import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def groups_file(tmp_path) -> Path:
    """``builders.GROUPS`` (the grouping of ``builders.TAGGED_POSTS``) as a file."""
    from builders import GROUPS

    path = tmp_path / "groups.yaml"
    path.write_text(GROUPS)
    return path
