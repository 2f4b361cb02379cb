"""The one settings object.

Every value comes, in order of precedence, from an ``INSTATAG_<NAME>`` environment
variable, then from the optional TOML file named by ``INSTATAG_CONFIG`` (keys are the
field names below, lower case), then from the default. Airflow deployments may give the
database as the connection ``AIRFLOW_CONN_INSTATAG_DB`` instead of
``INSTATAG_DATABASE_URL``.

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

    # ------------------------------------------------------------------ derived paths
    @property
    def store_dir(self) -> Path:
        return self.data_dir / imagestore.STORE

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

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)


def _airflow_conn_url() -> str:
    """``AIRFLOW_CONN_INSTATAG_DB`` in Airflow's URI form, as a SQLAlchemy URL."""
    uri = os.environ.get("AIRFLOW_CONN_INSTATAG_DB", "").strip()
    if not uri:
        return ""
    if uri.startswith("{"):
        import json

        c = json.loads(uri)
        user = c.get("login") or ""
        pw = f":{c['password']}" if c.get("password") else ""
        auth = f"{user}{pw}@" if user else ""
        port = f":{c['port']}" if c.get("port") else ""
        return f"postgresql+psycopg2://{auth}{c.get('host', '')}{port}/{c.get('schema', '')}"
    for prefix in ("postgres://", "postgresql://"):
        if uri.startswith(prefix):
            return "postgresql+psycopg2://" + uri[len(prefix):]
    return uri


def _coerce(name: str, typ, raw):
    try:
        if typ in ("Path", Path):
            return Path(raw)
        if typ in ("int", int):
            return int(raw)
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
        url = _airflow_conn_url() if env is os.environ else ""
        s = s.replace(database_url=url or f"sqlite:///{(s.data_dir / 'instatag.db').absolute()}")
    if s.device not in ("auto", "cpu", "cuda"):
        raise SettingsError(f"INSTATAG_DEVICE must be auto, cpu or cuda, not {s.device!r}")
    if s.store_originals not in ("link", "copy"):
        raise SettingsError(f"INSTATAG_STORE_ORIGINALS must be link or copy, not {s.store_originals!r}")
    if s.promotion_rule not in ("no_worse", "always"):
        raise SettingsError(f"INSTATAG_PROMOTION_RULE must be no_worse or always, not {s.promotion_rule!r}")
    return s


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
        out.append((ENV_PREFIX + f.name.upper(), str(default), docs.get(f.name, "")))
    return out

