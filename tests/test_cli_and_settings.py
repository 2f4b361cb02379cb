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


def test_airflow_connection_is_used(monkeypatch):
    monkeypatch.delenv("INSTATAG_DATABASE_URL", raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_INSTATAG_DB", "postgres://user:pw@db:5432/instatag")
    assert load_settings().database_url == "postgresql+psycopg2://user:pw@db:5432/instatag"


def test_describe_documents_every_setting():
    rows = describe()
    assert all(doc for _, _, doc in rows), [env for env, _, doc in rows if not doc]


def test_bad_setting_exits_2_with_message(monkeypatch, capsys):
    monkeypatch.setenv("INSTATAG_DEVICE", "tpu")
    assert main(["config"]) == 2
    assert "INSTATAG_DEVICE" in capsys.readouterr().err
