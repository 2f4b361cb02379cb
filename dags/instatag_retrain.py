"""### instatag_retrain

Retrains the hashtag model on everything ingested so far:

0. `changes`: with `INSTATAG_RETRAIN_WHEN=changed`, a scheduled run is skipped (with the reason)
   unless, since the champion's vocabulary, `INSTATAG_RETRAIN_MIN_NEW_LABELLED` new photos carry
   one of its labels or a drop was flagged (docs/drops.md); manual runs and runs started by
   `instatag_score` on drift (`reason` in the conf) always run;
1. `vocabulary`: build the grouped label vocabulary (or reuse the identical newest version);
2. `train`: fine-tune the CNN: queue `gpu`, pool `gpu` (one slot: one training at a time);
3. `evaluate`: metrics on the validation split, against the popularity baseline;
4. `promote`: the candidate becomes champion only when it is not worse (or `force_promote`);
5. `publish_champion`: when promoted, updates the Asset `instatag_champion` (extra: the model
   version), so `instatag_score` writes the new champion's predictions; skipped otherwise;
6. `report`: plots and an HTML report of the candidate.

With the param `suggest` on, the task `suggest` (after `changes`, beside the training chain) also
measures grouping suggestions for the same grouping file (`instatag vocab suggest`) and stores the
report, shown on the instatag page's Suggestions tab; nothing is applied: a person accepts them there
(or with `instatag vocab suggest --accept ... --write FILE`) and passes the file as `groups_file`.

Scheduled runs (`INSTATAG_RETRAIN_SCHEDULE`, default daily at 00:00 UTC; `none` for manual runs
only) use the preset `INSTATAG_RETRAIN_PRESET`; unpaused for the first time, the DAG waits for the
next tick. A manual run may override any param; empty values keep the preset's. A key that is no
param, or a bad value, is refused when the run is triggered (HTTP 400, a message in the form).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, TriggerRule, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from instatag import pipeline
from instatag.params import RETRAIN, TRAIN_FIELDS, airflow_params
from instatag.settings import load_settings

SETTINGS = load_settings()
CHAMPION = Asset(pipeline.CHAMPION_ASSET)
#: a training that takes longer is stopped (and retried once)
TRAIN_TIMEOUT = timedelta(hours=6)


@dag(
    dag_id=RETRAIN,
    schedule=pipeline.schedule(SETTINGS.retrain_schedule),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["instatag"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2)},
    params=airflow_params(RETRAIN, SETTINGS.retrain_preset),
)
def instatag_retrain():
    @task
    @pipeline.fail_fast
    def changes(params=None, dag_run=None) -> str:
        run = pipeline.run_params(RETRAIN, dag_run.conf, params)  # the first task: refuses a bad conf
        go, why = pipeline.retrain_check(scheduled=dag_run.run_type == "scheduled", reason=run["reason"] or "")
        if not go:
            raise AirflowSkipException(why)
        return why

    @task
    @pipeline.fail_fast
    def vocabulary(params=None, dag_run=None) -> int:
        run = pipeline.run_params(RETRAIN, dag_run.conf, params)
        return pipeline.build_vocabulary(run["groups_file"], run["min_count"])

    @task(queue="gpu", pool="gpu", execution_timeout=TRAIN_TIMEOUT, retries=1, retry_delay=timedelta(minutes=5))
    @pipeline.fail_fast
    def train(vocab_version_id: int, params=None, dag_run=None) -> int:
        run = pipeline.run_params(RETRAIN, dag_run.conf, params)
        return pipeline.train_model(vocab_version_id, preset=run["preset"], **{k: run[k] for k in TRAIN_FIELDS})

    @task
    @pipeline.fail_fast
    def evaluate(model_version_id: int) -> dict:
        return pipeline.evaluate_model(model_version_id)

    @task
    @pipeline.fail_fast
    def promote(model_version_id: int, params=None, dag_run=None) -> dict:
        run = pipeline.run_params(RETRAIN, dag_run.conf, params)
        return pipeline.promote_model(model_version_id, force=run["force_promote"])

    @task(outlets=[CHAMPION])
    def publish_champion(decision: dict, outlet_events=None) -> int:
        if not decision["promoted"]:
            raise AirflowSkipException(f"model version {decision['candidate_id']} not promoted: {decision['reason']}")
        outlet_events[CHAMPION].extra = {"model_version_id": decision["candidate_id"]}
        return decision["candidate_id"]

    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)  # not when `changes` skipped the run
    @pipeline.fail_fast
    def report(model_version_id: int) -> str:
        return pipeline.make_report(model_version_id)

    @task
    @pipeline.fail_fast
    def suggest(params=None, dag_run=None) -> dict:
        run = pipeline.run_params(RETRAIN, dag_run.conf, params)
        if not run["suggest"]:
            raise AirflowSkipException("the param suggest is off")
        return pipeline.suggest_vocabulary(run["groups_file"])

    vocab = vocabulary()
    changes() >> [vocab, suggest()]
    model = train(vocab)
    decision = promote(model)
    evaluate(model) >> decision
    publish_champion(decision) >> report(model)


instatag_retrain()
