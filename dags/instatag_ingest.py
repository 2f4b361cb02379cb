"""### instatag_ingest

Ingests the scraper's drop folder(s) (`INSTATAG_DROP_DIRS`, or the `sources` param of a manual
run) into the instatag database: new images and posts, duplicates recognised by content hash,
broken files quarantined in `ingest_errors`. Re-running a run adds nothing twice.

When images arrived, `publish_new_images` updates the Asset `instatag_images`, which starts
`instatag_score`'s scoring of the new images; with none, it is skipped and nothing follows.

Schedule: `INSTATAG_INGEST_SCHEDULE` (default hourly, UTC; `none` for manual runs only). Unpaused
for the first time, it waits for the next tick.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from instatag import pipeline
from instatag.params import INGEST, airflow_params
from instatag.settings import load_settings

SETTINGS = load_settings()
IMAGES = Asset(pipeline.IMAGES_ASSET)


@dag(
    dag_id=INGEST,
    schedule=pipeline.schedule(SETTINGS.ingest_schedule),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["instatag"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
    params=airflow_params(INGEST),
)
def instatag_ingest():
    @task
    @pipeline.fail_fast
    def ingest(params=None, dag_run=None) -> dict:
        run = pipeline.run_params(INGEST, dag_run.conf, params)
        return pipeline.ingest_drops(run["sources"])

    @task(outlets=[IMAGES])
    def publish_new_images(report: dict, outlet_events=None) -> int:
        n = pipeline.new_images(report)
        if not n:
            raise AirflowSkipException("no new images: the Asset is not updated")
        outlet_events[IMAGES].extra = {"new_images": n, "ingest_run_id": report.get("ingest_run_id")}
        return n

    publish_new_images(ingest())


instatag_ingest()
