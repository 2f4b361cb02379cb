"""Shared fixtures: settings on a fresh SQLite file and on a fresh PostgreSQL database.

PostgreSQL tests use the server at 127.0.0.1:5432 (INSTATAG_TEST_PG_ADMIN overrides the
admin URL), one database per test, dropped afterwards. They skip with a reason when the
server is unreachable, except under CI (CI=true), where they fail instead.
"""

from __future__ import annotations

import os
import uuid
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


@pytest.fixture
def pg_url(pg_admin_url):
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = f"instatag_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = pg_admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        db._engine.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


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
    """Settings on a fresh, upgraded database: each test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        s = _settings(tmp_path, None)
    else:
        s = _settings(tmp_path, request.getfixturevalue("pg_url"))
    db.upgrade(s)
    return s


@pytest.fixture
def food10() -> Path:
    if not FOOD10.is_dir():
        pytest.skip(f"{FOOD10} is absent")
    return FOOD10
