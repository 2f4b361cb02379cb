"""The CLI surface and the settings object."""

from __future__ import annotations

import subprocess
import sys

import pytest

from instatag.cli import build_parser, main
from instatag.settings import SettingsError, describe, load_settings


def _commands(parser, prefix=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _commands(sub, prefix + (name,))


def test_every_command_has_help(capsys):
    commands = list(_commands(build_parser()))
    assert ("db", "upgrade") in commands
    for cmd in commands:
        with pytest.raises(SystemExit) as exc:
            main([*cmd, "--help"])
        assert exc.value.code == 0
        assert "usage: instatag" in capsys.readouterr().out


def test_help_does_not_import_torch():
    code = "import sys; from instatag.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_settings_defaults_and_environment(tmp_path):
    s = load_settings(env={})
    assert s.database_url.startswith("sqlite:///") and s.database_url.endswith("var/instatag.db")
    s = load_settings(env={"INSTATAG_DATA_DIR": str(tmp_path), "INSTATAG_SCRAPE_TAGS": "recipe, recipes",
                           "INSTATAG_MAX_PIXELS": "1000"})
    assert s.data_dir == tmp_path and s.scrape_tags == ("recipe", "recipes") and s.max_pixels == 1000
    assert s.database_url == f"sqlite:///{tmp_path / 'instatag.db'}"


def test_settings_config_file_and_precedence(tmp_path):
    cfg = tmp_path / "instatag.toml"
    cfg.write_text('database_url = "postgresql+psycopg2://u@h/db"\nscore_shards = 8\nscrape_tags = ["a", "b"]\n')
    s = load_settings(env={"INSTATAG_CONFIG": str(cfg), "INSTATAG_SCORE_SHARDS": "2"})
    assert s.database_url == "postgresql+psycopg2://u@h/db" and s.score_shards == 2 and s.scrape_tags == ("a", "b")
    cfg.write_text("nonsense = 1\n")
    with pytest.raises(SettingsError, match="unknown settings"):
        load_settings(env={"INSTATAG_CONFIG": str(cfg)})


@pytest.mark.parametrize("env,message", [
    ({"INSTATAG_MAX_PIXELS": "lots"}, "max_pixels"),
    ({"INSTATAG_DEVICE": "tpu"}, "INSTATAG_DEVICE"),
    ({"INSTATAG_CONFIG": "/nonexistent.toml"}, "not a file"),
])
def test_bad_settings_are_clear_errors(env, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(env=env)


@pytest.mark.parametrize("conn,url", [
    # Airflow's URI form: SQLAlchemy's default driver (psycopg 3), the query kept
    ("postgres://user:pw@db:5432/instatag", "postgresql://user:pw@db:5432/instatag"),
    ("postgresql://us%40er:p%2Fw@db/instatag?sslmode=require", "postgresql://us%40er:p%2Fw@db/instatag?sslmode=require"),
    # a driver written in the URI is kept: psycopg2 stays a choice
    ("postgresql+psycopg2://user@db:5432/instatag", "postgresql+psycopg2://user@db:5432/instatag"),
    # Airflow's JSON form, through the same builder
    ('{"conn_type": "postgres", "login": "user", "password": "p@ss", "host": "db", "port": 5433, "schema": "tags"}',
     "postgresql://user:p%40ss@db:5433/tags"),
    ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
])
def test_airflow_connection_is_used(monkeypatch, conn, url):
    from sqlalchemy import make_url

    monkeypatch.delenv("INSTATAG_DATABASE_URL", raising=False)
    monkeypatch.delenv("INSTATAG_CONFIG", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_INSTATAG_DB", conn)
    assert load_settings().database_url == url
    make_url(url)  # SQLAlchemy reads it
    assert load_settings(env={"AIRFLOW_CONN_INSTATAG_DB": conn}).database_url.startswith("sqlite")  # only the process's


def test_postgres_scheme_is_read_as_postgresql():
    assert load_settings(env={"INSTATAG_DATABASE_URL": "postgres://u@h/d"}).database_url == "postgresql://u@h/d"
    assert load_settings(env={}, database_url="postgres://u@h/d").database_url == "postgresql://u@h/d"


def test_config_warns_of_a_misspelt_variable(monkeypatch, capsys):
    from instatag.settings import misspelt_variables

    env = {"INSTATAG_DATA_DIRS": "x", "INSTATAG_SCORE_SHARD": "2", "INSTATAG_DATA_DIR": "var", "INSTATAG_CONFIG": "",
           "INSTATAG_DATA_HOST_DIR": "/srv", "INSTATAG_DB": "instatag", "INSTATAG_TEST_PG_DRIVER": "psycopg"}
    assert misspelt_variables(env) == [("INSTATAG_DATA_DIRS", "INSTATAG_DATA_DIR"),
                                       ("INSTATAG_SCORE_SHARD", "INSTATAG_SCORE_SHARDS")]
    monkeypatch.setenv("INSTATAG_INGEST_WORKER", "3")
    assert main(["config"]) == 0
    assert "INSTATAG_INGEST_WORKER is no setting and is not read; did you mean INSTATAG_INGEST_WORKERS?" in (
        capsys.readouterr().err)


def test_describe_documents_every_setting():
    rows = describe()
    assert all(doc for _, _, doc in rows), [env for env, _, doc in rows if not doc]


def test_bad_setting_exits_2_with_message(monkeypatch, capsys):
    monkeypatch.setenv("INSTATAG_DEVICE", "tpu")
    assert main(["config"]) == 2
    assert "INSTATAG_DEVICE" in capsys.readouterr().err


# --------------------------------------------------------------------------- database errors are messages


@pytest.mark.parametrize("argv", [["models"], ["vocab", "list"], ["vocab", "build"], ["score"], ["report"],
                                  ["evaluate"], ["promote"], ["models", "rollback"],
                                  ["sql", "sql/examples/tags_of_post.sql", "-p", "post=x"]])
def test_a_database_without_the_schema_says_run_db_upgrade(tmp_path, capsys, argv):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["--database-url", url, "--data-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert "has no instatag tables" in err and "instatag db upgrade" in err and "Traceback" not in err


def test_an_empty_postgresql_database_says_run_db_upgrade(pg_url, tmp_path, capsys):
    assert main(["--database-url", pg_url, "--data-dir", str(tmp_path), "models"]) == 2
    assert "has no instatag tables" in capsys.readouterr().err


def test_an_unreachable_server_is_one_line_without_the_password(tmp_path, capsys):
    assert main(["--database-url", "postgresql://u:secret@127.0.0.1:1/x", "--data-dir", str(tmp_path), "models"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("instatag: error: cannot connect to the database postgresql://u:***@127.0.0.1:1/x")
    assert "secret" not in err and len(err.strip().splitlines()) == 1


def test_database_url_forms(tmp_path, capsys):
    from instatag import db

    assert load_settings(env={"INSTATAG_DATABASE_URL": "postgres://u@h/d"}).database_url == "postgresql://u@h/d"
    assert db._engine("postgres://u@h/d").dialect.name == "postgresql"
    for url in ("mysql://u@h/db", "oracle://u@h/db"):
        assert main(["--database-url", url, "--data-dir", str(tmp_path), "models"]) == 2
        err = capsys.readouterr().err
        assert "SQLite and PostgreSQL only" in err and "postgresql://" in err and "Traceback" not in err


def test_sql_names_the_parameters_it_needs(sqlite_settings, capsys):
    base = ["--database-url", sqlite_settings.database_url, "sql", "sql/examples/tags_of_post.sql"]
    assert main(base) == 2
    assert "no value for post" in capsys.readouterr().err
    assert main([*base, "-p", "post=x", "-p", "postt=y"]) == 2
    err = capsys.readouterr().err
    assert "postt not in the query" in err and "-p post=VALUE" in err
    assert main([*base, "-p", "post=x"]) == 0


@pytest.mark.parametrize("argv", [["score", "--batch-size", "0"], ["evaluate", "--batch-size", "-1"],
                                  ["score", "--batch-size", "x"]])
def test_batch_size_is_at_least_1(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "--batch-size" in capsys.readouterr().err
