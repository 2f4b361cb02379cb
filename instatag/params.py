"""The DAGs' run parameters: what the Airflow trigger form shows, and the one rule a run's conf must pass.

Each DAG's params are declared once, here (``specs``). ``airflow_params`` turns them into Airflow
``Param`` objects: the JSON schema the trigger form renders and Airflow checks each value against.
``check_conf`` applies the same declarations in Python: keys that are not params, types, ranges and,
for ``instatag_retrain``, the whole training configuration (``instatag.train.config_from``, whose
``LIMITS`` and ``LR_RANGE`` the training params' limits come from). ``check_conf`` runs twice:

- on the api-server, before a run is created (``instatag.trigger_guard``, registered by
  ``plugins/instatag_plugin.py``): HTTP 400 from the REST API, a message in the trigger form;
- in each run's first task, so a run created another way (``airflow dags trigger``,
  TriggerDagRunOperator, an api-server without the plugin) fails at once with the same message.

Why Airflow's own validation is not enough (Airflow 3.3, ``SerializedDAG.create_dagrun``): it checks
each param's value against that param's schema, but a conf key that is no param is added to the run's
params unchecked (``SerializedParamsDict.deep_merge``), and a JSON schema can neither compare fields
(``epochs + freeze_epochs >= 1``) nor range-check a number written as a string (``lr: "0"``).

How the trigger form renders a schema (airflow/ui FlexibleForm): a ``type`` without ``"null"`` marks the
field required, and a required field left empty (``""``) disables Trigger; ``enum`` gives a dropdown
labelled by ``values_display`` (key ``"null"`` for the empty choice), which shows a selected boolean as
nothing, so tri-state flags use the strings ``"true"``/``"false"``; a string type listed before
``"number"`` with ``examples`` gives a one-line input. The number input clamps what is typed into
``minimum``/``maximum`` without a word (-1 became 1), so whole-number limits go into the schema as
``exclusiveMinimum``/``exclusiveMaximum`` one beyond the limit, which the form ignores: a bad number
reaches the check and gets a message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError

INGEST, RETRAIN, SCORE = "instatag_ingest", "instatag_retrain", "instatag_score"
DAG_IDS = (INGEST, RETRAIN, SCORE)
#: the retrain params handed to instatag.train as TrainConfig fields (None keeps the preset's)
TRAIN_FIELDS = ("arch", "size", "epochs", "freeze_epochs", "lr", "bs", "pretrained")
#: a learning rate written as a string: "auto" or a plain decimal number (1e-3, 0.01, .5)
LR_PATTERN = r"^(auto|[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?)$"


@dataclass(frozen=True)
class Spec:
    """One run parameter. ``kind`` decides its JSON schema and its check:

    - ``int``: a whole number within ``limits`` (``(low, high)``, high None: no upper limit);
    - ``choice``: one of ``choices``;
    - ``lr``: ``"auto"`` or a number strictly between ``LR_RANGE``, as a number or a string;
    - ``flag``: true or false;
    - ``tristate``: the strings ``"true"`` or ``"false"`` (a dropdown in the form), checked to a bool;
    - ``text``: a string, blank counts as empty;
    - ``paths``: a list of strings; blank entries are dropped, an empty list counts as empty;
    - ``min_count``: a whole number of images or a share ``"5%"`` (``grouping.parse_min_count``), as a
      number or a string.

    ``optional``: empty (None) is allowed and means "not given" (the description says what then).
    """

    kind: str
    title: str
    description: str
    default: Any = None
    optional: bool = True
    limits: tuple[int, int | None] | None = None
    choices: tuple[str, ...] = ()
    display: dict[str, str] = field(default_factory=dict)

    def schema(self) -> dict:
        """The JSON schema of the value (Airflow ``Param`` keywords, ``title`` included)."""
        kinds = {"int": "integer", "choice": "string", "lr": "string", "flag": "boolean", "tristate": "string",
                 "text": "string", "paths": "array", "min_count": "string"}
        types = [kinds[self.kind]] + {"lr": ["number"], "min_count": ["integer"]}.get(self.kind, [])
        schema: dict[str, Any] = {"type": ["null", *types] if self.optional else types[0], "title": self.title}
        if self.kind == "int":
            low, high = self.limits
            schema["exclusiveMinimum"] = low - 1
            if high is not None:
                schema["exclusiveMaximum"] = high + 1
        elif self.kind in ("choice", "tristate"):
            schema["enum"] = [None, *self._choices()] if self.optional else list(self._choices())
            if self.display:
                schema["values_display"] = dict(self.display)
        elif self.kind == "lr":
            from .train import LR_RANGE

            schema.update(pattern=LR_PATTERN, exclusiveMinimum=LR_RANGE[0], exclusiveMaximum=LR_RANGE[1],
                          examples=["auto", "0.01", "0.001"])
        elif self.kind == "paths":
            schema["items"] = {"type": "string"}
        elif self.kind == "min_count":
            from .grouping import MIN_COUNT_PATTERN

            schema.update(pattern=MIN_COUNT_PATTERN, exclusiveMinimum=0, examples=["5%", "95"])
        return schema

    def _choices(self) -> tuple[str, ...]:
        return ("true", "false") if self.kind == "tristate" else self.choices

    def check(self, value: Any) -> Any:
        """The value as the tasks use it (numbers as int/float, tri-states as bool, blank as None);
        ValueError saying what is expected."""
        if (self.kind == "text" and isinstance(value, str) and not value.strip()) or (
                self.kind == "paths" and isinstance(value, list) and all(_blank(v) for v in value)):
            value = None  # blank: as good as empty
        if value is None:
            if self.optional:
                return None
            raise ValueError("a value is required")
        return getattr(self, f"_check_{self.kind}")(value)

    def _check_int(self, value):
        low, high = self.limits
        ok = isinstance(value, int | float) and not isinstance(value, bool) and float(value).is_integer()
        within = f"from {low} to {high}" if high is not None else f"of at least {low}"
        if isinstance(value, str):  # "3": a number typed as text (a quoted JSON value)
            number = _number(value)
            if number is not None and number.is_integer() and low <= number and (high is None or number <= high):
                raise ValueError(f"{_show(value)} is text: give the number {int(number)}")
            raise ValueError(f"{_show(value)} is text: give a whole number {within}")
        if not ok or value < low or (high is not None and value > high):
            raise ValueError(f"{_show(value)} is not a whole number {within}")
        return int(value)

    def _check_choice(self, value):
        if value not in self.choices:
            raise ValueError(f"{_show(value)} is not one of {', '.join(self.choices)}")
        return value

    def _check_tristate(self, value):
        if value not in ("true", "false"):
            raise ValueError(f'{_show(value)} is not one of the strings "true", "false" (empty: the preset\'s)')
        return value == "true"

    def _check_lr(self, value):
        from .train import LR_RANGE

        if value == "auto":
            return value
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and re.match(LR_PATTERN, value):
            number = float(value)
        if number is None or not math.isfinite(number) or not LR_RANGE[0] < number < LR_RANGE[1]:
            raise ValueError(f'{_show(value)} is not "auto" or a number between {LR_RANGE[0]} and {LR_RANGE[1]} '
                             "(both excluded), e.g. 0.001")
        return number

    def _check_min_count(self, value):
        from .grouping import parse_min_count

        if isinstance(value, float) and value.is_integer():  # JSON has one number type: 95.0 is 95
            value = int(value)
        try:
            return parse_min_count(value)
        except UserError:
            raise ValueError(f"{_show(value)} is not {MIN_COUNT_RANGE}") from None

    def _check_flag(self, value):
        if not isinstance(value, bool):
            raise ValueError(f"{_show(value)} is not true or false")
        return value

    def _check_text(self, value):
        if not isinstance(value, str):
            raise ValueError(f"{_show(value)} is not a text")
        return value.strip()

    def _check_paths(self, value):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{_show(value)} is not a list of paths")
        return [v.strip() for v in value if not _blank(v)]


#: what ``min_count`` takes, with its range (``grouping.parse_min_count`` is the rule)
MIN_COUNT_RANGE = ("a whole number of images of at least 1 (95) or a share of the images with a candidate label "
                   "above 0% and at most 100% (5%)")


def _number(text: str) -> float | None:
    try:
        number = float(text.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _blank(value) -> bool:
    return isinstance(value, str) and not value.strip()


def _show(value) -> str:
    import json

    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def specs(dag_id: str, retrain_preset: str | None = None) -> dict[str, Spec]:
    """The run parameters of one of instatag's DAGs, in the form's order. ``retrain_preset``: the default
    preset (default: the setting ``INSTATAG_RETRAIN_PRESET``). KeyError for another DAG."""
    if dag_id == INGEST:
        return {"sources": Spec("paths", "Sources", "Scrape folders or manifest files (.csv, .jsonl) to ingest, one "
                                "per line; empty: the drop folders of INSTATAG_DROP_DIRS.")}
    if dag_id == SCORE:
        return {
            "shards": Spec("int", "Shards", "Parallel scoring tasks, 1 to 256; empty: INSTATAG_SCORE_SHARDS.",
                           limits=(1, 256)),
            "all_images": Spec("flag", "All images", "Score every image again, replacing the champion's earlier "
                               "rows.", default=False, optional=False),
        }
    if dag_id != RETRAIN:
        raise KeyError(dag_id)
    from . import archs
    from .train import LIMITS, PRESETS

    if retrain_preset is None:
        from .settings import load_settings

        retrain_preset = load_settings().retrain_preset

    def preset_values(name: str) -> str:
        def show(v):
            return {True: "yes", False: "no"}.get(v, v) if isinstance(v, bool) else v
        return "; ".join(f"{p}: {show(getattr(c, name))}" for p, c in PRESETS.items())

    def whole(name: str, title: str, what: str) -> Spec:
        low, high = LIMITS[name]
        return Spec("int", title, f"{what}, {low} to {high}; empty: the preset's ({preset_values(name)}).",
                    limits=(low, high))

    return {
        "preset": Spec("choice", "Preset", "Starting training configuration; the fields below override it.",
                       default=retrain_preset, optional=False, choices=tuple(PRESETS)),
        "arch": Spec("choice", "Architecture", f"Network; empty: the preset's ({preset_values('arch')}).",
                     choices=tuple(archs.names()), display={"null": "the preset's"}),
        "size": whole("size", "Input size (px)", "Side of the square training crop in pixels"),
        "epochs": whole("epochs", "Epochs", "Epochs with the whole network trained (0: only frozen epochs)"),
        "freeze_epochs": whole("freeze_epochs", "Frozen epochs", "Epochs with the pretrained body frozen, first"),
        "lr": Spec("lr", "Learning rate", "'auto' (lr_find's suggestion) or a base learning rate such as 0.001; "
                   f"empty: the preset's ({preset_values('lr')})."),
        "bs": whole("bs", "Batch size", "Images per training step"),
        "pretrained": Spec("tristate", "Pretrained weights", "Start from ImageNet weights; empty: the preset's "
                           f"({preset_values('pretrained')}).",
                           display={"null": "the preset's", "true": "yes: ImageNet weights",
                                    "false": "no: random initial weights"}),
        "groups_file": Spec("text", "Grouping file", "Path of a grouping YAML for the vocabulary, as the workers "
                            "see it; empty: INSTATAG_GROUPS_FILE or the packaged one."),
        "min_count": Spec("min_count", "Minimum images per label", "Labels on fewer images are dropped: a number "
                          "of images (95) or a share of the images with a candidate label (5%); empty: the grouping "
                          "file's min_count."),
        "force_promote": Spec("flag", "Force promotion", "Make the new model the champion even when it is worse.",
                              default=False, optional=False),
        "suggest": Spec("flag", "Suggest a grouping", "Also measure grouping suggestions for the grouping file "
                        "(drops, groups, min_count, with evidence); shown on the instatag page, never applied.",
                        default=False, optional=False),
        "reason": Spec("text", "Reason", "Why this run was started: instatag_score sets it when a drop crossed a "
                       "drift threshold (INSTATAG_RETRAIN_ON_DRIFT); a run with a reason is never skipped by "
                       "INSTATAG_RETRAIN_WHEN. Empty: a scheduled or manual run."),
    }


def airflow_params(dag_id: str, retrain_preset: str | None = None) -> dict:
    """The DAG's ``params``: one ``airflow.sdk.Param`` per spec (needs Airflow)."""
    from airflow.sdk import Param

    return {name: Param(s.default, description=s.description, **s.schema())
            for name, s in specs(dag_id, retrain_preset).items()}


def check_conf(dag_id: str, conf: Mapping | None, defaults: Mapping | None = None) -> dict:
    """Check a run's conf for one of instatag's DAGs; every param's value as the tasks use it.

    ``conf``: the run's conf as given (REST body, ``dag_run.conf``); ``defaults``: values for the params
    it leaves out (a task passes Airflow's ``params``, which hold the DAG's defaults); else the specs'.
    UserError naming every problem: keys that are not params, each bad value as
    ``Invalid input for param NAME: ...`` (Airflow's own wording), and for the retrain DAG the training
    configuration the values make (``instatag.train.config_from``)."""
    defaults = defaults or {}
    table = specs(dag_id, defaults.get("preset") if dag_id == RETRAIN else None)
    conf = dict(conf or {})
    out, problems = {}, []
    unknown = sorted(map(str, set(conf) - set(table)))
    if unknown:
        problems.append(f"Unknown param(s) {', '.join(unknown)}: {dag_id} takes {', '.join(table)}")
    for name, spec in table.items():
        value = conf[name] if name in conf else defaults.get(name, spec.default)
        try:
            out[name] = spec.check(value)
        except ValueError as exc:
            problems.append(f"Invalid input for param {name}: {exc}")
    if problems:
        raise UserError("; ".join(problems))
    if dag_id == RETRAIN:
        from .train import config_from

        try:
            config_from(out["preset"], **{k: out[k] for k in TRAIN_FIELDS})
        except UserError as exc:
            raise UserError(f"Invalid training configuration: {exc}") from None
    return out
