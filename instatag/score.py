"""``instatag score``: write a model's predicted tags for the images into ``predictions``.

Shards: image ``id % n == i`` belongs to shard ``i`` of ``n``; the n shards partition the images,
so Airflow can map one task per shard. A shard predicts all its images first (batched, from the
resized store, decoding overlapped with inference), then writes every row in ONE transaction
(PostgreSQL: ``db.copy_rows`` into a temporary table, then one INSERT ... SELECT; SQLite: executemany). A
shard that fails or is killed midway leaves none of its rows; running it again completes the job,
and the primary key (model, image, label) with ON CONFLICT DO NOTHING rules out duplicates.

``new`` (default) scores the shard's images without a prediction from the model; ``all`` scores
every image of the shard and replaces the model's earlier rows for them (after a promotion).
Every label's probability of each image goes to ``image_probabilities`` too (``drops.store_probabilities``,
chunk by chunk before the shard's tags), for grading drops without running the model again.
Each image gets every label at or over its tuned threshold, and at least ``request_number``
labels, in the model's ranking (rank 1 = first: the most probable label, unless the model was trained
with ranking ``dominant_first``; ``instatag.ranking``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice

from .errors import UserError
from .progress import Meter

log = logging.getLogger(__name__)

BATCH_SIZE = 256
#: images predicted per call to the predictor (bounds memory on big shards)
CHUNK_BATCHES = 32
#: rows per COPY / executemany call inside the shard's transaction
WRITE_CHUNK = 50_000


@dataclass
class ScoreReport:
    model_version_id: int
    shard: tuple[int, int]
    mode: str  # new | all
    n_images: int
    n_rows: int
    n_missing: int  # images whose resized file is gone (skipped)
    seconds: float
    #: seconds per phase: select, load (model), predict (decode + inference), write
    timings: dict = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.n_images / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "shard": list(self.shard), "images_per_s": self.images_per_s}

    def __str__(self) -> str:
        i, n = self.shard
        missing = f", {self.n_missing} skipped (resized file missing)" if self.n_missing else ""
        return (f"model version {self.model_version_id}, shard {i}/{n} ({self.mode}): {self.n_images} images scored, "
                f"{self.n_rows} rows written in {self.seconds:.1f} s ({self.images_per_s:.0f} images/s){missing}")


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard takes I/N (e.g. 0/4), not {text!r}") from None
    return check_shard((i, n))


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise UserError(f"shard {i}/{n}: need 0 <= I < N")
    return int(i), int(n)


def shard_images(settings, model_version_id: int, shard: tuple[int, int], new: bool) -> list[tuple[int, str]]:
    """(image id, resized path relative to the data dir) of the shard's images, by id; with ``new`` only
    those without a prediction from the model."""
    from sqlalchemy import exists, select

    from . import db
    from . import schema as t

    i, n = check_shard(shard)
    im, p = t.images, t.predictions
    q = select(im.c.id, im.c.resized_path).where(im.c.id % n == i).order_by(im.c.id)
    if new:
        q = q.where(~exists().where(p.c.model_version_id == model_version_id, p.c.image_id == im.c.id))
    with db.get_engine(settings).connect() as conn:
        return [(int(r.id), r.resized_path) for r in conn.execute(q)]


def rows_for(image_ids: Iterable[int], tags: Iterable[list[tuple[str, float]]]) -> Iterator[tuple]:
    """(image_id, label, probability, rank) rows, rank 1 = first-ranked."""
    for image_id, row in zip(image_ids, tags, strict=True):
        for rank, (label, prob) in enumerate(row, 1):
            yield image_id, label, prob, rank


def _chunks(it: Iterable, size: int) -> Iterator[list]:
    it = iter(it)
    while chunk := list(islice(it, size)):
        yield chunk


def score(settings, model: str | int = "champion", new: bool = True, shard: tuple[int, int] = (0, 1),
          request_number: int = 2, batch_size: int = BATCH_SIZE) -> ScoreReport:
    """Predict and store the tags of one shard's images (see the module docstring)."""
    from . import registry
    from .drops import store_probabilities
    from .inference import Predictor
    from .predict import tags_for_scoring

    started = time.monotonic()
    if request_number < 1:
        raise UserError(f"--request-number must be at least 1, not {request_number}")
    shard = check_shard(shard)
    model_id = registry.find(settings, model)
    images = shard_images(settings, model_id, shard, new)
    timings = {"select": time.monotonic() - started}
    data_dir = settings.data_dir.absolute()
    present = [(image_id, data_dir / rel) for image_id, rel in images if (data_dir / rel).is_file()]
    if len(present) < len(images):
        log.warning("%d images of shard %d/%d have no resized file and are skipped", len(images) - len(present), *shard)
    if present:  # a shard with nothing to do does not load the model
        mark = time.monotonic()
        predictor = Predictor.for_version(settings, model_id)  # refuses a file whose hash does not match
        thresholds = registry.require_thresholds(settings, model_id, predictor.labels)
        timings["load"] = time.monotonic() - mark
        log.info("shard %d/%d: %d images to score with model version %d (loaded in %.1fs)", *shard, len(present),
                 model_id, timings["load"])
    mark = time.monotonic()
    image_ids: list[int] = []
    tags: list = []
    step = batch_size * CHUNK_BATCHES
    with Meter(f"scoring shard {shard[0]}/{shard[1]}", len(present), unit="images") as meter:
        for chunk in (present[k:k + step] for k in range(0, len(present), step)):
            probs = predictor.predict_paths([path for _, path in chunk], batch_size=batch_size, meter=meter)
            store_probabilities(settings, model_id, [image_id for image_id, _ in chunk], probs)  # for drops.grade
            image_ids += [image_id for image_id, _ in chunk]
            tags += tags_for_scoring(probs, predictor.labels, thresholds, request_number, predictor.rank_scores(probs))
    timings["predict"] = time.monotonic() - mark
    mark = time.monotonic()
    n_rows = write(settings, model_id, image_ids, rows_for(image_ids, tags), replace=not new)
    timings["write"] = time.monotonic() - mark
    report = ScoreReport(model_id, shard, "new" if new else "all", len(image_ids), n_rows,
                         len(images) - len(present), time.monotonic() - started,
                         {k: round(v, 3) for k, v in timings.items()})
    log.info("%s", report)
    return report


# --------------------------------------------------------------------------- writing, one transaction
def write(settings, model_id: int, image_ids: list[int], rows: Iterable[tuple], replace: bool) -> int:
    """Insert the rows in one transaction; with ``replace`` first delete the model's rows for
    ``image_ids``. Returns the number of rows given."""
    from . import db

    engine = db.get_engine(settings)
    if not image_ids:
        return 0
    if engine.dialect.name == "postgresql":
        return _write_postgres(engine, model_id, rows, replace)
    return _write_sqlite(engine, model_id, image_ids, rows, replace)


def _scored_table():
    """The temporary table a PostgreSQL shard's rows are copied into, dropped at commit."""
    from sqlalchemy import Column, MetaData, Table

    from . import schema as t

    p = t.predictions.c
    return Table("scored", MetaData(), *(Column(c.name, c.type) for c in (p.image_id, p.label, p.probability, p.rank)),
                 prefixes=["TEMPORARY"], postgresql_on_commit="DROP")


def _write_postgres(engine, model_id: int, rows: Iterable[tuple], replace: bool) -> int:
    """COPY the rows (``db.copy_rows``) into the ``scored`` temporary table, then, in the same
    transaction, one DELETE (``replace``) and one INSERT ... SELECT ... ON CONFLICT DO NOTHING."""
    from sqlalchemy import text

    from . import db

    scored, n = _scored_table(), 0
    with engine.begin() as conn:
        scored.create(conn)
        for chunk in _chunks(rows, WRITE_CHUNK):
            n += db.copy_rows(conn, scored, chunk)
        conn.execute(text("ANALYZE scored"))  # planner statistics for the joins below
        if replace:
            conn.execute(text("DELETE FROM predictions p USING (SELECT DISTINCT image_id FROM scored) s "
                              "WHERE p.model_version_id = :model AND p.image_id = s.image_id"), {"model": model_id})
        conn.execute(text("INSERT INTO predictions (model_version_id, image_id, label, probability, rank) "
                          "SELECT :model, image_id, label, probability, rank FROM scored "
                          "ON CONFLICT (model_version_id, image_id, label) DO NOTHING"), {"model": model_id})
    return n


def _write_sqlite(engine, model_id: int, image_ids: list[int], rows: Iterable[tuple], replace: bool) -> int:
    from sqlalchemy import delete, insert

    from . import schema as t

    p = t.predictions
    n = 0
    with engine.begin() as conn:
        if replace:
            for ids in _chunks(image_ids, 500):
                conn.execute(delete(p).where(p.c.model_version_id == model_id, p.c.image_id.in_(ids)))
        stmt = insert(p).prefix_with("OR IGNORE")
        for chunk in _chunks(rows, WRITE_CHUNK):
            conn.execute(stmt, [{"model_version_id": model_id, "image_id": i, "label": label, "probability": prob,
                                 "rank": r} for i, label, prob, r in chunk])
            n += len(chunk)
    return n


# --------------------------------------------------------------------------- CLI
def _score_cmd(args, settings) -> int:
    report = score(settings, model=args.model, new=not args.all, shard=parse_shard(args.shard),
                   request_number=args.request_number, batch_size=args.batch_size)
    print(report)
    return 0


def add_cli(sub) -> None:
    from .cli import positive_int

    p = sub.add_parser(
        "score",
        help="write predicted tags of the stored images into the predictions table",
        description="Predict the tags of the stored images with a model (default: the champion) and write them "
        "to the predictions table (the predicted_tags view shows the champion's). Each image gets every label "
        "at or over its tuned threshold and at least --request-number labels, with probability and rank. "
        "--shard I/N scores the images whose id % N == I; each shard commits atomically and a re-run adds "
        "no duplicates.",
    )
    p.add_argument("--model", default="champion", help="'champion' (default), 'latest' or a model version number")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--new", action="store_true", default=True,
                      help="score images without a prediction from this model (default)")
    mode.add_argument("--all", action="store_true", help="score every image again, replacing this model's rows")
    p.add_argument("--shard", default="0/1", metavar="I/N", help="score only shard I of N (default 0/1: everything)")
    p.add_argument("--request-number", type=int, default=2, metavar="N",
                   help="at least N labels per image (default 2), more when more pass their thresholds")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE,
                   help=f"inference batch size (default {BATCH_SIZE})")
    p.set_defaults(handler=_score_cmd)
