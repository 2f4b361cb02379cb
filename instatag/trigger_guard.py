"""Refuses a bad run conf for instatag's DAGs when the run is requested, before Airflow creates it.

An ASGI middleware for Airflow's api-server, registered by ``plugins/instatag_plugin.py`` through
``fastapi_root_middlewares`` (Airflow's plugin hook for api-server middleware). Airflow 3.3 offers
no hook between a trigger request and the run's creation, and its own param validation lets conf
keys that are no params through (``instatag.params`` says why); this is the least intrusive way to
refuse them with HTTP 400 rather than fail the run later. It reads only

- ``POST .../api/v2/dags/{dag_id}/dagRuns`` (the REST API; the UI's trigger form posts there too) and
- ``POST .../api/v2/backfills`` (``dag_id`` and ``dag_run_conf`` in the body),

for the DAGs of ``instatag.params.DAG_IDS``, checks the conf with ``instatag.params.check_conf`` and
answers ``400 {"detail": message}`` — the shape of Airflow's own param errors, which the trigger form
shows above its fields — when it fails. Everything else reaches Airflow untouched, the request body
replayed byte for byte: other paths and DAGs, a body that is not JSON (Airflow answers 422), and
requests without credentials (no ``Authorization`` header, no ``_token`` cookie: Airflow answers 401).
The check runs before Airflow's authentication; it reveals nothing but the documented param names
and limits.
"""

from __future__ import annotations

import json
import logging
import re

from . import params
from .errors import UserError

log = logging.getLogger(__name__)

_TRIGGER = re.compile(r"/api/v2/dags/(?P<dag_id>[^/]+)/dagRuns/?$")
_BACKFILL = re.compile(r"/api/v2/backfills/?$")


class TriggerGuard:
    """ASGI middleware: ``TriggerGuard(app)``; see the module docstring."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not _has_credentials(scope):
            return await self.app(scope, receive, send)
        trigger = _TRIGGER.search(scope["path"])
        if not trigger and not _BACKFILL.search(scope["path"]):
            return await self.app(scope, receive, send)
        messages, body = [], b""
        while True:  # buffer the body, to check it and then hand it on unchanged
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        problem = refusal(trigger["dag_id"] if trigger else None, body)
        if problem:
            log.info("refused a run of %s: %s", scope["path"], problem)
            return await _answer_400(send, problem)

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)


def refusal(dag_id: str | None, body: bytes) -> str | None:
    """Why a trigger (``dag_id`` from the path) or backfill (``dag_id`` None: from the body) request
    must be refused; None to let Airflow handle it."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if dag_id is None:
        dag_id, conf = data.get("dag_id"), data.get("dag_run_conf")
    else:
        conf = data.get("conf")
    if dag_id not in params.DAG_IDS or not isinstance(conf, dict | None):
        return None
    try:
        params.check_conf(dag_id, conf)
    except UserError as exc:
        return str(exc)
    except Exception:  # a bug here must not block triggering: the run's first task checks again
        log.exception("checking the conf of a %s run failed; letting Airflow decide", dag_id)
    return None


def _has_credentials(scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"authorization" or (name == b"cookie" and b"_token=" in value):
            return True
    return False


async def _answer_400(send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
