"""``instatag train``: fine-tune on a vocabulary version and register the run.

``train(settings, config)`` wraps ``fitting.fit`` (the fastai glue) with the bookkeeping: a
``training_runs`` row (running -> succeeded | failed), a ``training_epochs`` row per epoch, and at
the end, in one transaction, the model files moved to ``models/<id>/`` and the ``model_versions``
row (candidate). A failure marks the run failed with its error and registers nothing (SIGTERM
included: ``instatag train`` turns it into an exception). A process killed outright (``kill -9``, a
lost machine) cannot, so every run records its process (``pid``, ``host``) and a heartbeat (start,
lr_find, every epoch), and each new training first marks the runs left ``running`` by dead processes
failed, with the reason (``mark_stale_runs``, ``stale_reason``). The configuration and presets live
in ``instatag.trainconfig``; docs/training.md explains the choices.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import traceback
import uuid
from datetime import UTC, datetime, timedelta

from . import trainconfig
from .errors import UserError
from .fitting import EpochRecord, fit
from .settings import Settings

# the configuration's names, for the callers that take them from here (the DAGs, pipeline, params, bench)
from .trainconfig import LIMITS, LR_RANGE, PRESETS, TrainConfig, config_from, config_from_args

__all__ = ["LIMITS", "LR_RANGE", "PRESETS", "TrainConfig", "add_cli", "config_from", "epochs_table",
           "mark_stale_runs", "stale_reason", "train"]

log = logging.getLogger(__name__)

#: a running run with no heartbeat for this long is taken as dead even when its process cannot be looked up (it
#: ran on another host, or its pid was reused); the heartbeat comes at least once per epoch
STALE_AFTER = timedelta(hours=6)


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _aware(value: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (SQLite gives naive UTC ones)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def stale_reason(row, now: datetime | None = None, host: str | None = None) -> str | None:
    """Why a ``training_runs`` row still ``running`` is dead, else None (it may still run; any other status:
    None). Dead: its process (``pid`` on ``host``, this machine) is gone; or, wherever it ran, it gave no
    heartbeat (``heartbeat_at``, else ``started_at``) for ``STALE_AFTER``."""
    if row["status"] != "running":
        return None
    now, host = now or datetime.now(UTC), host or socket.gethostname()
    if row["pid"] and row["host"] == host and not _alive(row["pid"]):
        return f"its process {row['pid']} on {host} is gone (killed?)"
    last = _aware(row["heartbeat_at"] or row["started_at"])
    if last is not None and now - last > STALE_AFTER:
        return (f"no sign of life since {last:%Y-%m-%d %H:%M} UTC, over {STALE_AFTER.total_seconds() / 3600:g} h: "
                "its process was killed or lost")
    return None


def mark_stale_runs(settings: Settings) -> list[tuple[int, str]]:
    """Mark failed, with the reason as their error, the training runs left ``running`` by a dead process
    (``stale_reason``); returns (run id, reason) of each. Every training calls it first."""
    from sqlalchemy import func, select, update

    from . import db
    from .schema import training_runs as tr

    marked = []
    with db.get_engine(settings).begin() as conn:
        for row in conn.execute(select(tr).where(tr.c.status == "running").order_by(tr.c.id)).mappings().all():
            why = stale_reason(row)
            if why:
                conn.execute(update(tr).where(tr.c.id == row["id"], tr.c.status == "running").values(
                    status="failed", error=f"marked failed by a later training: {why}", finished_at=func.now()))
                marked.append((row["id"], why))
                log.warning("training run %d was left running: %s; marked failed", row["id"], why)
    return marked


def _device_name(device: str) -> str:
    if device != "cuda":
        return device
    import torch

    return f"cuda {torch.cuda.get_device_name()}"[:64]


def _prefetch(items, config: TrainConfig, settings: Settings, valid_pct: float):
    """Start decoding the images for the memory data path before torch is imported (``memdata.Prefetch``),
    where that path is likely: CUDA may be there and the config asks neither for files nor for fastai;
    else None."""
    from . import memdata
    from .fitting import valid_indices

    if config.data_path == "files" or config.engine == "fastai" or not memdata.may_have_cuda(settings.device):
        return None
    try:
        valid_idx = valid_indices(items, config, valid_pct)
    except UserError:
        return None  # fit raises it, with the run on record
    n_valid = len(valid_idx)
    if config.data_path == "auto" and memdata.nbytes(len(items) - n_valid, n_valid, config.size,
                                                     settings.resized_side) > memdata.MAX_BYTES:
        return None  # too big for the memory path: fit takes the files path
    return memdata.Prefetch(items, valid_idx, config.size, settings.resized_side)


def train(settings: Settings, config: TrainConfig, vocab_version_id: int | None = None) -> int:
    """Train on a vocabulary version (the newest when None); returns the new model version's id."""
    from sqlalchemy import func, insert, update

    from . import db, modelfile
    from .inference import resolve_device
    from .labels import LabelPipeline
    from .schema import model_versions, training_epochs, training_runs

    config.validate()
    pipeline = LabelPipeline.for_version(settings, vocab_version_id)
    items = pipeline.items(settings)
    if not pipeline.labels or not items:
        raise UserError(f"vocabulary version {pipeline.version_id} has no labelled image: nothing to train on")
    if config.pretrained:  # fail before registering a run when the weights are missing
        from . import weights

        weights.resolve(config.arch, settings)
    prefetch = _prefetch(items, config, settings, pipeline.valid_pct)
    engine = db.get_engine(settings)
    params = config.to_dict()
    mark_stale_runs(settings)
    with engine.begin() as conn:
        run_id = conn.execute(insert(training_runs).values(
            vocab_version_id=pipeline.version_id, params=params, status="running",
            device=_device_name(resolve_device(settings.device)), pid=os.getpid(), host=socket.gethostname()[:255],
            heartbeat_at=datetime.now(UTC))).inserted_primary_key[0]
    log.info("training run %d: %s on vocabulary version %d (%d labels, %d images)", run_id, config.arch,
             pipeline.version_id, len(pipeline.labels), len(items))

    def write_epoch(rec: EpochRecord) -> None:
        with engine.begin() as conn:
            conn.execute(insert(training_epochs).values(
                training_run_id=run_id, epoch=rec.epoch, phase=rec.phase, train_loss=rec.train_loss,
                valid_loss=rec.valid_loss, metrics=rec.metrics, images_seen=rec.images_seen, seconds=rec.seconds))
            conn.execute(update(training_runs).where(training_runs.c.id == run_id).values(
                heartbeat_at=datetime.now(UTC)))

    def write_lr_find(curve: dict) -> None:
        with engine.begin() as conn:
            conn.execute(update(training_runs).where(training_runs.c.id == run_id).values(
                lr_find=curve, heartbeat_at=datetime.now(UTC)))

    staging = settings.models_dir / f".run-{run_id}-{uuid.uuid4().hex[:8]}"
    final = None
    try:
        result = fit(items, pipeline.labels, config, settings, sink=write_epoch, on_lr_find=write_lr_find,
                     counts=pipeline.counts, prefetch=prefetch, valid_pct=pipeline.valid_pct)
        meta = {**result.meta, "vocab_version_id": pipeline.version_id, "training_run_id": run_id}
        sha = modelfile.save(staging, result.state_dict, meta)
        last = result.epochs[-1] if result.epochs else None
        summary = {**params, "base_lr": result.meta["base_lr"], "n_train": result.meta["n_train"],
                   "n_valid": result.meta["n_valid"], "seconds": round(result.seconds, 1),
                   "final_epoch": dataclasses.asdict(last) if last else None}
        with engine.begin() as conn:
            model_id = conn.execute(insert(model_versions).values(
                training_run_id=run_id, vocab_version_id=pipeline.version_id, arch=config.arch, params=summary,
                artifact_path="(moving)", sha256=sha, status="candidate")).inserted_primary_key[0]
            final = settings.models_dir / str(model_id)
            if final.exists():  # left by an attempt whose registration rolled back: never registered
                log.warning("removing %s, an unregistered leftover", final)
                shutil.rmtree(final)
            os.replace(staging, final)
            rel = (final / modelfile.WEIGHTS).relative_to(settings.data_dir).as_posix()
            conn.execute(update(model_versions).where(model_versions.c.id == model_id).values(artifact_path=rel))
            conn.execute(update(training_runs).where(training_runs.c.id == run_id).values(
                status="succeeded", finished_at=func.now()))
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if final is not None:
            shutil.rmtree(final, ignore_errors=True)
        error = f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}"[-20000:]
        with engine.begin() as conn:
            conn.execute(update(training_runs).where(training_runs.c.id == run_id).values(
                status="failed", error=error, finished_at=func.now()))
        log.error("training run %d failed: %s", run_id, exc)
        raise
    log.info("training run %d: model version %d (%s) in %.0fs", run_id, model_id, final, result.seconds)
    return int(model_id)


# --------------------------------------------------------------------------- CLI
def _or_nan(x) -> float:
    return float("nan") if x is None else float(x)


def epochs_table(settings: Settings, run_id: int) -> str:
    from sqlalchemy import select

    from . import db
    from .schema import training_epochs

    with db.get_engine(settings).connect() as conn:
        rows = conn.execute(select(training_epochs).where(training_epochs.c.training_run_id == run_id)
                            .order_by(training_epochs.c.epoch)).mappings().all()
    names = sorted({k for r in rows for k in (r["metrics"] or {})})
    out = ["epoch  phase     train_loss  valid_loss  " + "  ".join(names) + "  images  seconds"]
    for r in rows:
        mets = "  ".join(f"{_or_nan((r['metrics'] or {}).get(n)):>{len(n)}.4f}" for n in names)
        out.append(f"{r['epoch'] + 1:>5}  {r['phase']:<8}  {_or_nan(r['train_loss']):>10.4f}  "
                   f"{_or_nan(r['valid_loss']):>10.4f}  {mets}  {r['images_seen']:>6}  {r['seconds']:>7.1f}")
    return "\n".join(out)


def _train_cmd(args, settings: Settings) -> int:
    import signal

    from sqlalchemy import select

    from . import db
    from .schema import model_versions

    def terminated(signum, frame):  # SIGTERM as an exception: train() records the run failed
        raise SystemExit(128 + signum)

    config = config_from_args(args)
    signal.signal(signal.SIGTERM, terminated)
    model_id = train(settings, config, args.vocab_version)
    with db.get_engine(settings).connect() as conn:
        row = conn.execute(select(model_versions).where(model_versions.c.id == model_id)).mappings().one()
    print(epochs_table(settings, row["training_run_id"]))
    print(f"model version {model_id} (candidate), training run {row['training_run_id']}: "
          f"{(settings.data_dir / row['artifact_path']).parent}  sha256 {row['sha256'][:16]}…")
    print(f"next: instatag evaluate {model_id}, then instatag promote {model_id}")
    return 0


def add_cli(sub) -> None:
    presets = "; ".join(f"{name}: {c.arch} size {c.size}, {c.freeze_epochs}+{c.epochs} epochs, lr {c.lr}"
                        for name, c in PRESETS.items())
    p = sub.add_parser(
        "train",
        help="fine-tune a pretrained CNN on the newest vocabulary version (registers a candidate model)",
        description="Fine-tune a pretrained CNN with fastai's recipe on a vocabulary version's labelled images "
        "(the resized store): lr_find (with --lr auto), then fine_tune(epochs, lr, freeze_epochs); through fastai "
        "on a CPU, through the same schedule in plain PyTorch with CUDA graphs on a GPU (--set engine=fastai|fast). "
        "Records every epoch in training_epochs and registers the model files (safetensors + JSON) "
        f"as a candidate model version. Presets: {presets}. Explicit flags override the preset.",
    )
    trainconfig.add_arguments(p)
    p.add_argument("--vocab-version", type=int, help="vocabulary version to train on (default: the newest)")
    p.set_defaults(handler=_train_cmd)
