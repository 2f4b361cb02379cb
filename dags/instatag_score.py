"""### instatag_score

Writes the champion model's predicted tags (table `predictions`, view `predicted_tags`).

Runs when `instatag_ingest` brought new images (Asset `instatag_images`) and when
`instatag_retrain` promoted a new champion (Asset `instatag_champion`). `plan` pins the
champion (skipping everything when there is none yet) and splits the images into
`INSTATAG_SCORE_SHARDS` shards (image id modulo the count); `score` is mapped over them
(dynamic task mapping), one task per shard, each committing its rows atomically. Each shard
scores the images the champion has not scored yet — after a promotion, all of them — so a
re-run adds nothing twice. A manual run may rescore everything (`all_images`).

Then every new drop grades the champion (docs/drops.md): `grade_drops` grades each drop (ingest
run) whose new photos the champion has now scored, on the labels their own hashtags give, and
checks it for drift (tag mix, new hashtags, predictions, image size and brightness); each figure
that crosses its `INSTATAG_DRIFT_*` threshold is a warning in its log. `drift_alert` then updates
the Asset `instatag_drift` with the reasons in its `extra` (skipped when nothing crossed a
threshold), and with `INSTATAG_RETRAIN_ON_DRIFT` on, `trigger_retrain` starts `instatag_retrain`
with the reason in its conf (`retrain_on_drift` is skipped otherwise, and the trigger with it).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Asset, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from instatag import pipeline
from instatag.params import RETRAIN, SCORE, airflow_params
from instatag.settings import load_settings

IMAGES = Asset(pipeline.IMAGES_ASSET)
CHAMPION = Asset(pipeline.CHAMPION_ASSET)
DRIFT = Asset(pipeline.DRIFT_ASSET)


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
        n = run["shards"] or load_settings().score_shards
        return pipeline.shard_list(n, model=champion, all_images=run["all_images"])

    @task
    @pipeline.fail_fast
    def score(shard: int, shards: int, model: int, all_images: bool) -> dict:
        return pipeline.score_shard(shard, shards, model=model, all_images=all_images)

    @task
    def summary(reports: list[dict]) -> dict:
        return pipeline.sum_scores(list(reports))

    @task
    @pipeline.fail_fast
    def grade_drops(totals: dict) -> list[dict]:
        return pipeline.grade_drops()

    @task(outlets=[DRIFT])
    def drift_alert(graded: list[dict], outlet_events=None) -> list[str]:
        reasons = pipeline.drift_reasons(graded)
        if not reasons:
            raise AirflowSkipException(f"{len(graded)} drop(s) graded, none crossed a threshold")
        outlet_events[DRIFT].extra = {"reasons": reasons, "drops": [g["ingest_run_id"] for g in graded if g["flagged"]]}
        return reasons

    @task
    def retrain_on_drift(graded: list[dict]) -> dict:
        conf = pipeline.retrain_request(graded)
        if conf is None:
            raise AirflowSkipException("no drop crossed a threshold, or INSTATAG_RETRAIN_ON_DRIFT is off")
        return conf

    graded = grade_drops(summary(score.expand_kwargs(plan())))
    drift_alert(graded)
    TriggerDagRunOperator(task_id="trigger_retrain", trigger_dag_id=RETRAIN, conf=retrain_on_drift(graded),
                          openlineage_inject_parent_info=False)


instatag_score()
