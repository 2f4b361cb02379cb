"""The one settings object.

Every value comes, in order of precedence, from an ``INSTATAG_<NAME>`` environment
variable, then from the optional TOML file named by ``INSTATAG_CONFIG`` (keys are the
field names below, lower case), then from the default. Airflow deployments may give the
database as the Airflow connection ``instatag_db`` (``AIRFLOW_CONN_INSTATAG_DB``, or inside a
task one from Airflow's metadata database or secrets backend) instead of
``INSTATAG_DATABASE_URL``: ``airflow_connection_url`` is the one place that turns a connection
into a URL.

Only the standard library is imported here: DAG files read settings at parse time.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from . import imagestore

ENV_PREFIX = "INSTATAG_"


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


def _split_list(value: str) -> tuple[str, ...]:
    """Lists in the environment are comma separated (paths may also use os.pathsep)."""
    parts = value.replace(os.pathsep, ",").split(",")
    return tuple(p.strip() for p in parts if p.strip())


@dataclass(frozen=True)
class Settings:
    #: SQLAlchemy URL. Default: an embedded SQLite file under ``data_dir``.
    database_url: str = ""
    #: Image store, models, reports. Default ``./var``.
    data_dir: Path = Path("var")
    #: Folders the scraper fills; used by ``instatag ingest`` without arguments and the ingest DAG.
    drop_dirs: tuple[str, ...] = ()
    #: The scrape's own search tags: recorded, never labels.
    scrape_tags: tuple[str, ...] = ("recipe",)
    #: Grouping YAML file; empty means the packaged default.
    groups_file: str = ""
    #: Refuse images with more pixels than this (decompression bombs).
    max_pixels: int = 40_000_000
    #: Longest side of the training-ready copy kept in the image store.
    resized_side: int = 160
    #: ``link``: keep each original as a hard link to the scraped file when the drop folder and the
    #: data dir share a filesystem (no second copy on disk), else a copy; ``copy``: always a copy.
    store_originals: str = "link"
    #: Worker processes for decoding during ingest (0: one per core).
    ingest_workers: int = 0
    #: Also count the hashtags the uploader writes in their own first comment (instaloader's
    #: ``<post>_comments.json``, owner from the post's metadata); a stranger's comment never counts.
    owner_comment_tags: bool = False
    #: resnet18 ImageNet weights file (else torchvision's cache under TORCH_HOME).
    resnet18_weights: str = ""
    #: Expected sha256 of ``resnet18_weights`` (empty: the hash prefix in torchvision's file name).
    resnet18_sha256: str = ""
    #: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    device: str = "auto"
    #: Cron expression or preset for the ingest DAG.
    ingest_schedule: str = "@hourly"
    #: Cron expression or preset for the retrain DAG.
    retrain_schedule: str = "@daily"
    #: Training preset of the retrain DAG's scheduled runs (and its form's default).
    retrain_preset: str = "default"
    #: Number of shards the scoring DAG fans out to.
    score_shards: int = 4
    #: Promotion rule: ``no_worse`` (no label of the champion lost; dominant_recall@2 and mAP not worse) or ``always``.
    promotion_rule: str = "no_worse"
    #: The images the promotion rule compares on: ``uploader`` (the validation split, uploaders' labels) or
    #: ``verified`` (its images people corrected, once there are evaluate.MIN_VERIFIED_IMAGES; else uploader).
    promotion_set: str = "uploader"
    #: ``always``: every scheduled retrain runs; ``changed``: a scheduled retrain runs only when, since
    #: the champion's vocabulary was built, at least ``retrain_min_new_labelled`` new photos carry one of
    #: its labels or a drop was flagged (manual and drift-started runs always run).
    retrain_when: str = "always"
    #: New photos with a label in the champion's vocabulary that make a scheduled retrain worth it
    #: (``retrain_when = changed``).
    retrain_min_new_labelled: int = 100
    #: Start ``instatag_retrain`` (with the reason in its conf) when a drop is flagged.
    retrain_on_drift: bool = False
    #: Photos a drop needs (labelled photos, for the quality figure) before a figure is flagged.
    drift_min_images: int = 30
    #: Significance level of every drift test: a figure is flagged only when its p-value is below it.
    drift_p_value: float = 0.01
    #: Population stability index of the tag mix and of the top-1 labels at which a drop is flagged
    #: (by convention under 0.1 stable, over 0.25 a large shift).
    drift_psi: float = 0.2
    #: Kolmogorov-Smirnov D (0-1) of the highest probability, image size and brightness at which a drop is flagged.
    drift_ks: float = 0.2
    #: Rise of the share of photos with no label over its threshold (0-1) at which a drop is flagged.
    drift_no_label: float = 0.15
    #: Rise of the share of photos carrying a hashtag the champion's vocabulary does not know (0-1) at
    #: which a drop is flagged.
    drift_new_tag_share: float = 0.1
    #: Fall of the fresh-label dominant_recall@2 below the champion's validation figure (0-1) at which a
    #: drop is flagged.
    drift_quality_drop: float = 0.1

    # ------------------------------------------------------------------ derived paths
    @property
    def originals_dir(self) -> Path:
        return self.data_dir / imagestore.ORIGINALS

    @property
    def resized_dir(self) -> Path:
        return self.data_dir / imagestore.RESIZED

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)


#: Airflow connection id of the instatag database (``AIRFLOW_CONN_INSTATAG_DB``, or one made in the UI)
AIRFLOW_CONN_ID = "instatag_db"


def sqlalchemy_url(url: str) -> str:
    """A database URL as SQLAlchemy reads it: ``postgres://`` (Heroku's and many hosts' form, which
    SQLAlchemy no longer reads) becomes ``postgresql://``; anything else stays as it is."""
    return "postgresql://" + url[len("postgres://"):] if url.startswith("postgres://") else url


def connection_url(conn_type: str, host: str | None = None, login: str | None = None, password: str | None = None,
                   port: int | str | None = None, schema: str | None = None, query: str = "") -> str:
    """The SQLAlchemy URL of an Airflow connection's fields (login and password percent-encoded).

    A ``postgres`` or ``postgresql`` connection gives ``postgresql://``: SQLAlchemy's default
    PostgreSQL driver, psycopg 3 under SQLAlchemy 2.x, the form users write. A type that names a
    driver (``postgresql+psycopg2``, from a URI such as ``postgresql+psycopg2://...``) keeps it, so
    psycopg2 is still chosen by writing it. Any other type is written as ``<type>://...`` for
    ``db.get_engine`` to accept or refuse. ``query``: the URI's query string, kept (e.g.
    ``sslmode=require``)."""
    from urllib.parse import quote

    scheme = "postgresql" if conn_type in ("postgres", "postgresql") else conn_type
    auth = ""
    if login:
        auth = quote(login, safe="") + (f":{quote(password, safe='')}" if password else "") + "@"
    netloc = f"{auth}{host or ''}{f':{port}' if port else ''}"
    url = f"{scheme}://{netloc}/{quote(schema or '', safe='')}"
    return f"{url}?{query}" if query else url


def _connection_from_env(value: str) -> str:
    """``AIRFLOW_CONN_<ID>``: Airflow's URI form (``postgres://user:pw@host:5432/db?sslmode=require``,
    parts percent-encoded) or its JSON form (``{"conn_type": "postgres", "login": ..., "host": ...,
    "port": ..., "schema": ...}``), as a SQLAlchemy URL (``connection_url``)."""
    value = value.strip()
    if value.startswith("{"):
        import json

        try:
            c = json.loads(value)
        except ValueError as exc:
            raise SettingsError(f"AIRFLOW_CONN_{AIRFLOW_CONN_ID.upper()} is neither a URI nor JSON ({exc})") from None
        return connection_url(c.get("conn_type") or "postgres", c.get("host"), c.get("login"), c.get("password"),
                              c.get("port"), c.get("schema"))
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(value)
    if not parts.scheme.startswith("postgres"):
        return value  # sqlite:///..., or anything db.get_engine will refuse with the forms it takes
    try:
        port = parts.port
    except ValueError as exc:
        raise SettingsError(f"AIRFLOW_CONN_{AIRFLOW_CONN_ID.upper()}: {exc}") from None
    return connection_url(parts.scheme, unquote(parts.hostname or ""), unquote(parts.username or ""),
                          unquote(parts.password or ""), port, unquote(parts.path.lstrip("/")), parts.query)


def airflow_connection_url(env=None, conn_id: str = AIRFLOW_CONN_ID) -> str | None:
    """The SQLAlchemy URL of the Airflow connection ``conn_id``; None when there is none.

    ``AIRFLOW_CONN_<CONN_ID>`` in ``env`` (default ``os.environ``) is read here, in any process.
    Without it, inside an Airflow task (``AIRFLOW_CTX_DAG_ID`` is set) the connection is asked of
    Airflow (``airflow.sdk.Connection.get``: the metadata database or a secrets backend); outside a
    task Airflow is never imported. Both go through ``connection_url``."""
    env = os.environ if env is None else env
    value = env.get(f"AIRFLOW_CONN_{conn_id.upper()}", "").strip()
    if value:
        return _connection_from_env(value)
    if not env.get("AIRFLOW_CTX_DAG_ID"):
        return None
    try:
        from airflow.sdk import Connection
        from airflow.sdk.exceptions import AirflowNotFoundException
    except ImportError:
        return None
    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None
    return connection_url(conn.conn_type, conn.host, conn.login, conn.password, conn.port, conn.schema)


_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _coerce(name: str, typ, raw):
    try:
        if typ in ("Path", Path):
            return Path(raw)
        if typ in ("int", int):
            return int(raw)
        if typ in ("float", float):
            return float(raw)
        if typ in ("bool", bool):
            if isinstance(raw, bool):
                return raw
            value = str(raw).strip().lower()
            if value not in _BOOLS:
                raise ValueError(f"use one of {', '.join(sorted(_BOOLS))}")
            return _BOOLS[value]
        if typ in ("tuple[str, ...]",):
            return _split_list(raw) if isinstance(raw, str) else tuple(str(x) for x in raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"setting {name}: cannot use {raw!r} ({exc})") from None


def load_settings(env: dict[str, str] | None = None, **overrides) -> Settings:
    """Read the settings from the environment (and ``INSTATAG_CONFIG``), then apply overrides."""
    env = os.environ if env is None else env
    file_values: dict = {}
    config_path = env.get(ENV_PREFIX + "CONFIG")
    if config_path:
        path = Path(config_path)
        if not path.is_file():
            raise SettingsError(f"INSTATAG_CONFIG names {path}, which is not a file")
        with path.open("rb") as fh:
            file_values = tomllib.load(fh)
    known = {f.name: f for f in fields(Settings)}
    unknown = sorted(set(file_values) - set(known))
    if unknown:
        raise SettingsError(f"{config_path}: unknown settings {unknown}; known: {sorted(known)}")
    values = {}
    for name, f in known.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is None:
            raw = file_values.get(name)
        if raw is not None:
            values[name] = _coerce(name, f.type, raw)
    values.update(overrides)
    s = Settings(**values)
    if not s.database_url:
        url = airflow_connection_url(env) if env is os.environ else None
        s = s.replace(database_url=url or f"sqlite:///{(s.data_dir / 'instatag.db').absolute()}")
    s = s.replace(database_url=sqlalchemy_url(s.database_url))
    if s.device not in ("auto", "cpu", "cuda"):
        raise SettingsError(f"INSTATAG_DEVICE must be auto, cpu or cuda, not {s.device!r}")
    if s.store_originals not in ("link", "copy"):
        raise SettingsError(f"INSTATAG_STORE_ORIGINALS must be link or copy, not {s.store_originals!r}")
    if s.promotion_rule not in ("no_worse", "always"):
        raise SettingsError(f"INSTATAG_PROMOTION_RULE must be no_worse or always, not {s.promotion_rule!r}")
    if s.promotion_set not in ("uploader", "verified"):
        raise SettingsError(f"INSTATAG_PROMOTION_SET must be uploader or verified, not {s.promotion_set!r}")
    if s.retrain_when not in ("always", "changed"):
        raise SettingsError(f"INSTATAG_RETRAIN_WHEN must be always or changed, not {s.retrain_when!r}")
    for name in ("drift_p_value", "drift_ks", "drift_no_label", "drift_new_tag_share", "drift_quality_drop"):
        if not 0 < getattr(s, name) <= 1:
            raise SettingsError(f"{ENV_PREFIX}{name.upper()} must be over 0 and at most 1, not {getattr(s, name)}")
    if s.drift_psi <= 0 or s.drift_min_images < 0 or s.retrain_min_new_labelled < 0:
        raise SettingsError("INSTATAG_DRIFT_PSI must be over 0; INSTATAG_DRIFT_MIN_IMAGES and "
                            "INSTATAG_RETRAIN_MIN_NEW_LABELLED at least 0")
    return s


def misspelt_variables(env=None) -> list[tuple[str, str]]:
    """(variable, the setting's variable it is close to) for each ``INSTATAG_*`` variable of ``env``
    (default ``os.environ``) that names no setting but is spelt almost like one (difflib ratio of the
    part after ``INSTATAG_`` at least 0.8: ``INSTATAG_DATA_DIRS`` → ``INSTATAG_DATA_DIR``). Other
    ``INSTATAG_*`` names (``INSTATAG_CONFIG``, the deployment's and the tests' own) are left alone."""
    import difflib

    env = os.environ if env is None else env
    known = [f.name.upper() for f in fields(Settings)]
    out = []
    for name in sorted(env):
        suffix = name[len(ENV_PREFIX):]
        if not name.startswith(ENV_PREFIX) or suffix in known or suffix == "CONFIG":
            continue
        close = difflib.get_close_matches(suffix, known, n=1, cutoff=0.8)
        if close:
            out.append((name, ENV_PREFIX + close[0]))
    return out


def describe() -> list[tuple[str, str, str]]:
    """(environment variable, default, meaning) for every setting: the README table and `instatag config`."""
    import inspect

    src = inspect.getsource(Settings).splitlines()
    docs, pending = {}, []
    for line in src:
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
        elif ":" in stripped and pending and not stripped.startswith(("def", "@", "#")):
            docs[stripped.split(":")[0]] = " ".join(pending)
            pending = []
        else:
            pending = []
    out = []
    for f in fields(Settings):
        default = f.default
        if isinstance(default, tuple):
            default = ",".join(default)
        elif isinstance(default, bool):
            default = str(default).lower()
        out.append((ENV_PREFIX + f.name.upper(), str(default), docs.get(f.name, "")))
    return out

