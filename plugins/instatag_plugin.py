"""instatag inside the Airflow UI: mounts instatag's read-only pages (``instatag.webapp``) on the
api-server under ``/instatag`` and adds the navigation entry "instatag", which shows them in the UI.
It also adds ``instatag.trigger_guard`` to the api-server: a run of an instatag DAG whose conf has a
key that is no param, or a bad value, is refused with HTTP 400 before it is created.

The pages require an Airflow login (every route depends on Airflow's own ``get_user``). The
instatag settings (database, data dir) come from the api-server's environment: ``INSTATAG_*``
variables or ``AIRFLOW_CONN_INSTATAG_DB``.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from instatag.trigger_guard import TriggerGuard
from instatag.webapp import create_app

URL_PREFIX = "/instatag"


class InstatagPlugin(AirflowPlugin):
    name = "instatag"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "instatag"}]
    fastapi_root_middlewares = [{"middleware": TriggerGuard, "args": [], "kwargs": {},
                                 "name": "instatag run conf check"}]
    external_views = [{
        "name": "instatag",
        "href": f"{URL_PREFIX}/",
        "url_route": "instatag",
        "destination": "nav",
        "nav_top_level": True,
    }]
