"""The README stays true: its settings table, its commands and its make targets."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import pytest

from instatag.cli import build_parser
from instatag.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _code_lines() -> list[str]:
    blocks = re.findall(r"```(?:sh|bash)?\n(.*?)```", README, flags=re.S)
    inline = re.findall(r"`((?:instatag|make) [^`]+)`", README)
    lines = [ln.split("#")[0].strip() for b in blocks for ln in b.splitlines()]
    return [ln for ln in lines + inline if ln.startswith(("instatag ", "make "))]


def test_settings_table_lists_every_setting():
    for f in dataclasses.fields(Settings):
        assert f"`{ENV_PREFIX}{f.name.upper()}`" in README, f.name


PLACEHOLDERS = [(r"\\\|", "|"), (r"default\|study", "study"), (r"\[\.\.\.\]", ""), (r"FILE\.\.\.", "photo.jpg"),
                (r"TAG\.\.\.", "cake"), (r"SOURCE \.\.\.", "drop"), (r"MODEL_VERSION|VERSION", "1"), (r"I/N", "0/2"),
                (r"DROP", "3"), (r"FILE", "groups.yaml"), (r"[\[\]]", "")]


@pytest.mark.parametrize("line", sorted({ln for ln in _code_lines() if ln.startswith("instatag ")}))
def test_instatag_commands_in_the_readme_parse(line):
    for pattern, value in PLACEHOLDERS:
        line = re.sub(pattern, value, line)
    args = build_parser().parse_args(shlex.split(line)[1:])
    assert callable(args.handler)


def test_make_targets_in_the_readme_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = {ln.split()[1] for ln in _code_lines() if ln.startswith("make ")}
    assert {"demo", "test"} <= targets
    for target in targets:
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), target


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
