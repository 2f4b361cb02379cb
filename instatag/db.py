"""Database access: the engine, schema upgrades (Alembic) and the SQL views in ``sql/``."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, make_url, text

from .errors import UserError
from .settings import Settings, load_settings, sqlalchemy_url

log = logging.getLogger(__name__)

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _sqlite_pragmas(dbapi_conn, _record):
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.close()


#: PostgreSQL drivers whose COPY ``copy_rows`` speaks; SQLAlchemy's default for ``postgresql://`` is psycopg (3)
PG_DRIVERS = ("psycopg", "psycopg2")


#: the database URLs instatag works with (the message of every refused URL names them)
SUPPORTED_URLS = ("sqlite:///PATH, postgresql://USER@HOST/DB (psycopg 3; postgres://... is read as postgresql://), "
                  "postgresql+psycopg2://USER@HOST/DB")


@lru_cache(maxsize=8)
def _engine(url: str) -> Engine:
    """The engine for ``url``; ``UserError`` for a URL that is not SQLite or PostgreSQL (with psycopg)."""
    url = sqlalchemy_url(url)  # a Settings made with .replace() may still hold postgres://
    try:
        parsed = make_url(url)
    except Exception:  # sqlalchemy.exc.ArgumentError: not a URL at all
        raise UserError(f"database URL {url.split('@')[-1]!r} is not a URL; use {SUPPORTED_URLS}") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise UserError(f"database URL {parsed.drivername}://...: instatag works with SQLite and PostgreSQL only; "
                        f"use {SUPPORTED_URLS}")
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() not in PG_DRIVERS:
        raise UserError(f"database URL {parsed.drivername}://...: instatag writes to PostgreSQL with COPY, through "
                        "psycopg (postgresql://... or postgresql+psycopg://...) or psycopg2 (postgresql+psycopg2://...)")
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def get_engine(settings: Settings | None = None) -> Engine:
    """The engine for the configured database (one per URL and process)."""
    return _engine((settings or load_settings()).database_url)


_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")
_COPY_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _copy_escape(match: re.Match) -> str:
    return _COPY_ESCAPES[match.group()]


def copy_text(rows: Iterable[Sequence]) -> io.StringIO:
    """``rows`` in PostgreSQL's COPY text format: tab-separated, ``\\N`` for NULL, text escaped."""
    def value(v) -> str:
        if v is None:
            return "\\N"
        # re.sub with a function: several times faster than str.translate on long captions
        return _COPY_SPECIAL.sub(_copy_escape, v) if isinstance(v, str) else str(v)  # str(float) round-trips

    return io.StringIO("".join("\t".join(map(value, row)) + "\n" for row in rows))


def copy_rows(conn, table, rows: Iterable[Sequence], columns: Sequence[str] | None = None) -> int:
    """Bulk insert ``rows`` (tuples in ``columns`` order, default the table's) in ``conn``'s
    transaction: COPY on PostgreSQL, executemany elsewhere. Returns the number of rows."""
    columns = list(columns or table.columns.keys())
    rows = list(rows)
    if not rows:
        return 0
    if conn.dialect.name != "postgresql":
        conn.execute(table.insert(), [dict(zip(columns, r, strict=True)) for r in rows])
        return len(rows)
    quote = conn.dialect.identifier_preparer
    names = ", ".join(map(quote.quote, columns))
    with conn.connection.dbapi_connection.cursor() as cur:
        _copy_from(cur, f"COPY {quote.format_table(table)} ({names}) FROM STDIN", rows)
    return len(rows)


def _copy_from(cursor, statement: str, rows: Iterable[Sequence]) -> None:
    """Run ``statement`` (``COPY <table> (<columns>) FROM STDIN``) on a DBAPI ``cursor`` of
    psycopg 3 (``postgresql://`` and ``postgresql+psycopg://`` URLs) or psycopg2
    (``postgresql+psycopg2://``), with ``rows`` as its data (``copy_text``)."""
    data = copy_text(rows)
    if hasattr(cursor, "copy"):  # psycopg 3
        with cursor.copy(statement) as copy:
            copy.write(data.getvalue())
    else:
        cursor.copy_expert(statement, data)


def _alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def view_statements() -> list[str]:
    """The CREATE VIEW statements of ``sql/views.sql``, each preceded by its DROP."""
    body = (SQL_DIR / "views.sql").read_text()
    return [s.strip() for s in body.split(";") if s.strip() and not _only_comments(s)]


def _only_comments(stmt: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in stmt.splitlines())


def upgrade(settings: Settings | None = None, revision: str = "head") -> str:
    """Bring the schema to ``revision`` and (re)create the views. Safe to run again."""
    from alembic import command

    engine = get_engine(settings)
    with engine.begin() as conn:  # views first (re-created below): SQLite refuses to rebuild a table a view reads
        for view in inspect(conn).get_view_names():
            conn.execute(text(f'DROP VIEW IF EXISTS "{view}"'))
    command.upgrade(_alembic_config(engine), revision)
    with engine.begin() as conn:
        for stmt in view_statements():
            conn.execute(text(stmt))
    return current_revision(engine)


def current_revision(engine: Engine) -> str:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return ""
        return conn.execute(text("select version_num from alembic_version")).scalar() or ""


def new_revision(message: str, settings: Settings | None = None) -> None:
    """Autogenerate a migration from the difference between ``schema.py`` and the database."""
    from alembic import command

    engine = get_engine(settings)
    command.revision(_alembic_config(engine), message=message, autogenerate=True)
