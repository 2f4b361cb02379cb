"""The ``instatag`` command line.

Each stage module may define ``add_cli(subparsers)``, adding its commands; every command's
handler is called as ``handler(args, settings)`` and returns an exit code. Stage modules
import torch and fastai inside their functions, so ``instatag --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from .errors import UserError
from .settings import SettingsError, describe, load_settings

#: stage modules, in the order of the pipeline
STAGE_MODULES = (
    "ingest",
    "vocab",
    "train",
    "evaluate",
    "promote",
    "score",
    "predict",
    "explain",
    "report",
    "feedback",
    "drops",
    "demo",
)


def positive_int(text: str) -> int:
    """argparse ``type`` for counts and sizes: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _db_cli(sub) -> None:
    db = sub.add_parser("db", help="create or upgrade the database schema and views")
    dbsub = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    up = dbsub.add_parser("upgrade", help="apply all migrations and (re)create the SQL views; safe to repeat")
    up.set_defaults(handler=_db_upgrade)
    cur = dbsub.add_parser("current", help="print the schema revision of the database")
    cur.set_defaults(handler=_db_current)
    rev = dbsub.add_parser("revision", help="(developers) autogenerate a migration from instatag/schema.py")
    rev.add_argument("-m", "--message", required=True, help="what the migration changes")
    rev.set_defaults(handler=_db_revision)

    q = sub.add_parser("sql", help="run a SQL file (e.g. sql/examples/*.sql) and print the rows")
    q.add_argument("file", type=Path, help="SQL file holding one statement with :named parameters")
    q.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a value for :NAME in the statement (repeatable)")
    q.set_defaults(handler=_sql)

    c = sub.add_parser("config", help="print the effective settings and every INSTATAG_ variable "
                       "(and warn of an INSTATAG_ variable spelt almost like a setting)")
    c.set_defaults(handler=_config)


def _db_upgrade(args, settings) -> int:
    from . import db

    rev = db.upgrade(settings)
    print(f"database {_safe_url(settings.database_url)} at revision {rev}; views recreated")
    return 0


def _db_current(args, settings) -> int:
    from . import db

    print(db.current_revision(db.get_engine(settings)) or "(empty database: run `instatag db upgrade`)")
    return 0


def _db_revision(args, settings) -> int:
    from . import db

    db.new_revision(args.message, settings)
    return 0


def _sql(args, settings) -> int:
    from sqlalchemy import text

    from . import db

    params = {}
    for item in args.param:
        if "=" not in item:
            raise UserError(f"--param takes NAME=VALUE, not {item!r}")
        k, v = item.split("=", 1)
        params[k] = v
    if not args.file.is_file():
        raise UserError(f"{args.file}: no such file")
    stmt = text(args.file.read_text())
    names = list(stmt.compile().params)  # the statement's :named parameters, in order
    missing, unknown = [n for n in names if n not in params], sorted(set(params) - set(names))
    if missing or unknown:
        given = "; ".join(([f"no value for {', '.join(missing)}"] if missing else [])
                          + ([f"{', '.join(unknown)} not in the query"] if unknown else []))
        raise UserError(f"{args.file}: {given}. Its parameters: "
                        + (" ".join(f"-p {n}=VALUE" for n in names) or "none"))
    with db.get_engine(settings).connect() as conn:
        res = conn.execute(stmt, params)
        cols = list(res.keys())
        rows = res.fetchall()
    print("\t".join(cols))
    for row in rows:
        print("\t".join("" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in row))
    print(f"({len(rows)} rows)", file=sys.stderr)
    return 0


def _config(args, settings) -> int:
    import dataclasses

    from .settings import misspelt_variables

    for name, close in misspelt_variables():
        print(f"warning: {name} is no setting and is not read; did you mean {close}?", file=sys.stderr)

    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name == "database_url":
            value = _safe_url(value)
        print(f"{f.name} = {value}")
    print()
    for env, default, doc in describe():
        print(f"{env:32} default {default or '(empty)'}: {doc}")
    return 0


def _safe_url(url: str) -> str:
    """The URL with any password masked."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instatag",
        description="Learn the hashtags uploaders give #recipe photos: ingest, vocabulary, "
        "train, evaluate, score, report. Settings come from INSTATAG_* variables "
        "(see `instatag config`).",
    )
    parser.add_argument("--database-url", help="override INSTATAG_DATABASE_URL")
    parser.add_argument("--data-dir", type=Path, help="override INSTATAG_DATA_DIR")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _db_cli(sub)
    for name in STAGE_MODULES:
        try:
            module = importlib.import_module(f"instatag.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"instatag.{name}":
                continue
            raise
        add_cli = getattr(module, "add_cli", None)
        if add_cli:
            subcommands = add_cli(sub)
            if name == "vocab":  # `instatag vocab suggest` lives in suggest.py, which imports vocab
                from . import suggest

                suggest.add_cli(subcommands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    overrides = {}
    if args.database_url:
        overrides["database_url"] = args.database_url
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    settings = None
    try:
        settings = load_settings(**overrides)
        return args.handler(args, settings) or 0
    except (UserError, SettingsError) as exc:
        print(f"instatag: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        message = _database_error(exc, settings.database_url if settings else "")
        if message is None or args.verbose:  # -v: the traceback too
            raise
        print(f"instatag: error: {message}", file=sys.stderr)
        return 2


#: SQLSTATE of a missing table (PostgreSQL) and SQLite's words for it
_UNDEFINED_TABLE = "42P01"


def _database_error(exc: BaseException, url: str) -> str | None:
    """One line for a database that cannot be reached or has no instatag tables; ``None`` for
    any other error (a bug: its traceback is shown)."""
    if not type(exc).__module__.startswith("sqlalchemy"):
        return None
    from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

    if not isinstance(exc, DBAPIError):
        return None
    orig = exc.orig
    detail = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code == _UNDEFINED_TABLE or "no such table" in detail:
        return (f"the database {_safe_url(url)} has no instatag tables ({detail}): run `instatag db upgrade`")
    if isinstance(exc, OperationalError) and exc.statement is None or exc.connection_invalidated:
        return f"cannot connect to the database {_safe_url(url)}: {detail}"
    if isinstance(exc, OperationalError | ProgrammingError):
        return f"database {_safe_url(url)}: {detail}"
    return None


if __name__ == "__main__":
    sys.exit(main())
