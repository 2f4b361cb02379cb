"""Ingest's decoding processes start clean under any parent (instatag.procpool), and a database
write that fails leaves nothing the next run cannot adopt (SQLite, PostgreSQL with both drivers)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from instatag import db, procpool
from instatag import ingest as ingest_mod
from instatag.imagestore import ORIGINALS, RESIZED
from instatag.ingest import PARALLEL_MIN, ingest
from instatag.sample import make_scrape
from instatag.schema import images, posts

ROOT = Path(__file__).resolve().parents[1]

# The parent of the ingest: a __main__ that must not run again (as the `airflow` console script,
# which multiprocessing's spawn and forkserver run again in every child, fails to under a task's
# masked database URL); with "daemon", the ingest runs in a daemonic process, as in a Celery pool.
PARENT = """
import json, logging, multiprocessing, os, sys
if __name__ != "__main__":
    raise SystemExit(f"the parent's __main__ was run again, as {__name__}")


def run(args):
    from pathlib import Path

    from instatag.ingest import ingest
    from instatag.settings import load_settings

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    settings = load_settings(env={}, data_dir=args["data_dir"], database_url=args["database_url"])
    report = ingest(settings, [Path(args["drop"])], workers=args["workers"])
    print(json.dumps({"report": report.as_dict(), "pid": os.getpid(),
                      "daemon": multiprocessing.current_process().daemon}), flush=True)


args = json.loads(sys.argv[1])
if args["daemon"]:
    p = multiprocessing.get_context("fork").Process(target=run, args=(args,), daemon=True)
    p.start()
    p.join()
    sys.exit(p.exitcode)
run(args)
"""


@pytest.mark.parametrize("daemon", [False, True], ids=["entry-point", "daemonic"])
def test_workers_start_clean_under_any_parent(sqlite_settings, tmp_path, daemon):
    drop = tmp_path / "drop"
    make_scrape(drop, n_posts=PARALLEL_MIN, seed=11)
    script = tmp_path / "entry_point.py"
    script.write_text(PARENT)
    args = {"data_dir": str(sqlite_settings.data_dir), "database_url": sqlite_settings.database_url,
            "drop": str(drop), "workers": 3, "daemon": daemon}
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "airflow-db-not-allowed:///",  # a task process's
           "AIRFLOW_HOME": str(tmp_path / "no-airflow-here")}
    done = subprocess.run([sys.executable, str(script), json.dumps(args)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["daemon"] is daemon
    assert out["report"]["accepted"] == PARALLEL_MIN and not out["report"]["rejected"]
    line = re.search(r"instatag\.procpool: (\d+) items in (\d+) worker processes \(pid: items\): (.*)", done.stderr)
    assert line, done.stderr[-3000:]
    per_pid = {int(pid): int(n) for pid, n in re.findall(r"(\d+): (\d+)", line.group(3))}
    assert int(line.group(1)) == sum(per_pid.values()) == PARALLEL_MIN
    assert len(per_pid) == int(line.group(2)) == 3 and all(per_pid.values()) and out["pid"] not in per_pid
    with db.get_engine(sqlite_settings).connect() as conn:
        assert len(conn.execute(select(posts.c.id)).all()) == PARALLEL_MIN


def test_pool_results_in_order_errors_and_stopping_early(caplog):
    caplog.set_level("INFO", logger="instatag.procpool")
    before = set(_children())  # e.g. multiprocessing's resource tracker, started by other tests
    assert list(procpool.imap(abs, range(-50, 0), 3, chunksize=4)) == list(range(50, 0, -1))
    assert "50 items in 3 worker processes" in caplog.text
    with pytest.raises(procpool.WorkerError, match="math domain error"):
        list(procpool.imap(math.sqrt, [1, 4, -1, 9], 2))
    with pytest.raises(procpool.WorkerError, match="exit code 3"):
        list(procpool.imap(os._exit, [3, 3], 2))  # a worker that dies
    results = procpool.imap(math.sqrt, list(range(100_000)), 2, chunksize=10)
    assert next(results) == 0
    assert len(set(_children()) - before) == 2
    results.close()  # the consumer stops: the workers finish what they hold and exit
    assert set(_children()) <= before


def test_workers_get_no_airflow_or_instatag_variables():
    env = {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "x", "AIRFLOW_CONN_INSTATAG_DB": "x", "_AIRFLOW_FORK_EXEC": "1",
           "INSTATAG_DATA_DIR": "x", "PATH": "/usr/bin", "LANG": "C.UTF-8"}
    assert procpool.worker_env(env) == {"PATH": "/usr/bin", "LANG": "C.UTF-8"}


def _children() -> list[int]:
    """Processes whose parent is this one (from /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            kids.append(int(stat.parent.name))
    return kids


# --------------------------------------------------------------------------- a failed database write


def _store_files(settings) -> set[str]:
    root = Path(settings.data_dir)
    return {p.relative_to(root).as_posix() for top in (ORIGINALS, RESIZED) for p in (root / top).rglob("*")
            if p.is_file()}


@pytest.mark.pg_drivers
def test_a_failed_database_write_is_adopted_by_the_next_run(settings, tmp_path, monkeypatch, request, caplog):
    case = request.node.callspec.params["settings"]
    if case.startswith("postgres"):  # postgres: postgresql://, psycopg 3 unless INSTATAG_TEST_PG_DRIVER says
        driver = case.partition("-")[2] or os.environ.get("INSTATAG_TEST_PG_DRIVER", "psycopg")
        assert db.get_engine(settings).dialect.driver == driver
    drop = tmp_path / "drop"
    make_scrape(drop, n_posts=12, seed=5)
    monkeypatch.setattr(ingest_mod, "BATCH", 5)
    monkeypatch.setattr(ingest_mod, "PARALLEL_MIN", 0)  # two worker processes, decoding ahead of the writes
    write_batch, calls = ingest_mod.write_batch, []

    def fails_the_second_time(conn, *args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the database went away")
        write_batch(conn, *args)

    monkeypatch.setattr(ingest_mod, "write_batch", fails_the_second_time)
    children = set(_children())
    with pytest.raises(RuntimeError, match="went away"):
        ingest(settings, [drop], workers=2)
    assert set(_children()) <= children  # the run stopped its workers
    assert "the next ingest of these posts adds their rows" in caplog.text
    rows = _image_files(settings)
    assert len(rows) == 2 * 5  # the first batch's originals and resized copies
    orphans = _store_files(settings) - rows
    assert len(orphans) >= 2 * 5  # the second batch's (and any decoded ahead): no rows point to them

    monkeypatch.setattr(ingest_mod, "write_batch", write_batch)
    report = ingest(settings, [drop], workers=2)
    assert (report.accepted, report.reposts, report.duplicates) == (7, 0, 5)
    files = _image_files(settings)
    assert _store_files(settings) == files and len(files) == 2 * 12  # every file has its row, and back
    root = Path(settings.data_dir)
    with db.get_engine(settings).connect() as conn:
        assert len(conn.execute(select(posts.c.id)).all()) == 12
        assert all((root / p).is_file() for r in conn.execute(select(images.c.original_path, images.c.resized_path))
                   for p in r)


def _image_files(settings) -> set[str]:
    with db.get_engine(settings).connect() as conn:
        return {p for r in conn.execute(select(images.c.original_path, images.c.resized_path)) for p in r}
