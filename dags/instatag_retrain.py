"""### instatag_retrain

Retrains the hashtag model on everything ingested so far:

1. `vocabulary`: build the grouped label vocabulary (or reuse the identical newest version);
2. `train`: fine-tune the CNN: queue `gpu`, pool `gpu` (one slot: one training at a time);
3. `evaluate`: metrics on the validation split, against the popularity baseline;
4. `promote`: the candidate becomes champion only when it is not worse (or `force_promote`);
5. `rescore`: when promoted, updates the Asset `instatag_champion`, so `instatag_score` writes
   the new champion's predictions; skipped otherwise;
6. `report`: plots and an HTML report of the candidate.

With the param `suggest` on, the task `suggest` (beside the others, needing none of them) also
measures grouping suggestions for the same grouping file (`instatag vocab suggest`) and stores the
report, shown on the instatag page's Suggestions tab; nothing is applied: a person accepts them there
(or with `instatag vocab suggest --accept ... --write FILE`) and passes the file as `groups_file`.

Scheduled runs (`INSTATAG_RETRAIN_SCHEDULE`, default daily; `none` for manual runs only) use
the preset `INSTATAG_RETRAIN_PRESET`. A manual run may override any param; empty values keep
the preset's. Bad values are refused when the run is triggered.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Asset, Param, TriggerRule, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from instatag import pipeline
from instatag.grouping import MIN_COUNT_PATTERN
from instatag.settings import load_settings

SETTINGS = load_settings()
CHAMPION = Asset(pipeline.CHAMPION_ASSET)
#: a training that takes longer is stopped (and retried once)
TRAIN_TIMEOUT = timedelta(hours=6)
#: training params handed to instatag.train (None keeps the preset's value)
TRAIN_PARAMS = ("arch", "size", "epochs", "freeze_epochs", "lr", "bs", "pretrained")


def _optional_int(minimum: int, maximum: int, description: str) -> Param:
    return Param(None, type=["null", "integer"], minimum=minimum, maximum=maximum, description=description)


PARAMS = {
    "preset": Param(SETTINGS.retrain_preset, type="string", enum=pipeline.presets(), title="Preset",
                    description="Starting training configuration; the values below override it."),
    "arch": Param(None, type=["null", "string"], enum=[None, *pipeline.arch_names()], title="Architecture",
                  description="Network; empty: the preset's."),
    "size": _optional_int(16, 1024, "Input side in pixels; empty: the preset's."),
    "epochs": _optional_int(1, 500, "Epochs with the whole network trained; empty: the preset's."),
    "freeze_epochs": _optional_int(0, 500, "Epochs with the pretrained body frozen; empty: the preset's."),
    "lr": Param(None, type=["null", "string", "number"], pattern=r"^(auto|[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?)$",
                exclusiveMinimum=0, exclusiveMaximum=10, title="Learning rate",
                description="'auto' (lr_find) or a base learning rate such as 1e-3; empty: the preset's."),
    "bs": _optional_int(2, 4096, "Batch size; empty: the preset's."),
    "pretrained": Param(None, type=["null", "boolean"], title="Pretrained",
                        description="Start from ImageNet weights; empty: the preset's."),
    "groups_file": Param("", type="string", title="Grouping file",
                         description="Grouping YAML for the vocabulary; empty: INSTATAG_GROUPS_FILE or the "
                         "packaged one."),
    "min_count": Param(None, type=["null", "integer", "string"], minimum=1, pattern=MIN_COUNT_PATTERN,
                       title="min_count",
                       description="Drop labels on fewer images: a number of images (95) or a share of the "
                       "images with a candidate label (5%); empty: the grouping file's."),
    "force_promote": Param(False, type="boolean", title="Force promotion",
                           description="Make the new model the champion even when it is worse."),
    "suggest": Param(False, type="boolean", title="Suggest a grouping",
                     description="Also measure grouping suggestions for the grouping file (drops, groups, "
                     "min_count, with evidence); shown on the instatag page, never applied."),
}


@dag(
    dag_id="instatag_retrain",
    schedule=pipeline.schedule(SETTINGS.retrain_schedule),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["instatag"],
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2)},
    params=PARAMS,
)
def instatag_retrain():
    @task
    @pipeline.fail_fast
    def vocabulary(params=None, dag_run=None) -> int:
        pipeline.reject_unknown(dag_run.conf, params)
        return pipeline.build_vocabulary(params["groups_file"] or None, params["min_count"])

    @task(queue="gpu", pool="gpu", execution_timeout=TRAIN_TIMEOUT, retries=1, retry_delay=timedelta(minutes=5))
    @pipeline.fail_fast
    def train(vocab_version_id: int, params=None) -> int:
        return pipeline.train_model(vocab_version_id, preset=params["preset"],
                                    **{k: params[k] for k in TRAIN_PARAMS})

    @task
    @pipeline.fail_fast
    def evaluate(model_version_id: int) -> dict:
        return pipeline.evaluate_model(model_version_id)

    @task
    @pipeline.fail_fast
    def promote(model_version_id: int, params=None) -> dict:
        return pipeline.promote_model(model_version_id, force=params["force_promote"])

    @task(outlets=[CHAMPION])
    def rescore(decision: dict, outlet_events=None) -> int:
        if not decision["promoted"]:
            raise AirflowSkipException(f"model version {decision['candidate_id']} not promoted: {decision['reason']}")
        outlet_events[CHAMPION].extra = {"model_version_id": decision["candidate_id"]}
        return decision["candidate_id"]

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    @pipeline.fail_fast
    def report(model_version_id: int) -> str:
        return pipeline.make_report(model_version_id)

    @task
    @pipeline.fail_fast
    def suggest(params=None) -> dict:
        if not params["suggest"]:
            raise AirflowSkipException("the param suggest is off")
        return pipeline.suggest_vocabulary(params["groups_file"] or None)

    suggest()
    model = train(vocabulary())
    decision = promote(model)
    evaluate(model) >> decision
    rescore(decision) >> report(model)


instatag_retrain()
