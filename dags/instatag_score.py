"""### instatag_score

Writes the champion model's predicted tags (table `predictions`, view `predicted_tags`).

Runs when `instatag_ingest` brought new images (Asset `instatag_images`) and when
`instatag_retrain` promoted a new champion (Asset `instatag_champion`). `plan` pins the
champion (skipping everything when there is none yet) and splits the images into
`INSTATAG_SCORE_SHARDS` shards (image id modulo the count); `score` is mapped over them
(dynamic task mapping), one task per shard, each committing its rows atomically. Each shard
scores the images the champion has not scored yet — after a promotion, all of them — so a
re-run adds nothing twice. A manual run may rescore everything (`all_images`).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from instatag import pipeline
from instatag.params import SCORE, airflow_params

IMAGES = Asset(pipeline.IMAGES_ASSET)
CHAMPION = Asset(pipeline.CHAMPION_ASSET)


@dag(
    dag_id=SCORE,
    schedule=(IMAGES | CHAMPION),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["instatag"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    params=airflow_params(SCORE),
)
def instatag_score():
    @task
    @pipeline.fail_fast
    def plan(params=None, dag_run=None) -> list[dict]:
        run = pipeline.run_params(SCORE, dag_run.conf, params)
        champion = pipeline.champion()
        if champion is None:
            raise AirflowSkipException("there is no champion model yet: nothing to score")
        n = run["shards"] or pipeline.settings().score_shards
        return pipeline.shard_list(n, model=champion, all_images=run["all_images"])

    @task
    @pipeline.fail_fast
    def score(shard: int, shards: int, model: int, all_images: bool) -> dict:
        return pipeline.score_shard(shard, shards, model=model, all_images=all_images)

    @task
    def summary(reports: list[dict]) -> dict:
        return pipeline.sum_scores(list(reports))

    summary(score.expand_kwargs(plan()))


instatag_score()
