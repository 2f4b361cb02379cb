"""The one set of builders of test data: photos, instaloader posts, image / post / vocabulary / model
rows, a tiny model's files, and readers of what the code under test wrote. Tests import them
(``from builders import ...``); the fixtures built on them (``tiny_model_dir``, ``groups_file``) are
in conftest.py.

Rows are inserted by hand, as ingest, ``vocab build``, ``train`` and ``evaluate`` would write them,
so a test of a later stage does not run the earlier ones.
"""

from __future__ import annotations

import collections
import hashlib
import io
import random
import shutil
import struct
import zlib
from pathlib import Path

from sqlalchemy import func, insert, select, update

from instatag import db, modelfile
from instatag import schema as t
from instatag.imagestore import original_path, resized_path
from instatag.sample import DISHES, draw

# --------------------------------------------------------------------------- photos and posts (files)


def photo_bytes(fmt="JPEG", mode="RGB", size=(64, 48), color=(200, 30, 30), **save) -> bytes:
    """One plain-coloured image file's bytes (``fmt``: a Pillow format; ``save``: its save options)."""
    from PIL import Image

    im = Image.new("RGB", size, color)
    im = im.convert(mode) if mode != "RGB" else im
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, kind, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width=20000, height=20000) -> bytes:
    """A few hundred bytes whose header claims width × height greyscale pixels (a decompression bomb)."""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + png_chunk(b"IEND", b""))


def write_post(folder: Path, stamp: str, caption: str, color=(200, 30, 30)) -> None:
    """One instaloader post: ``<stamp>_UTC.jpg`` (32 × 24, plain) and its caption ``<stamp>_UTC.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stamp}_UTC.jpg").write_bytes(photo_bytes(size=(32, 24), color=color))
    (folder / f"{stamp}_UTC.txt").write_text(caption, encoding="utf-8")


# --------------------------------------------------------------------------- rows as ingest writes them


def image_row(conn, sha256: str, post: str, *, source_path: str | None = None, fmt: str = "JPEG", width: int = 32,
              height: int = 24, resized: str | None = None, taken_at=None, caption=None, with_post: bool = True,
              post_source_path: str | None = None) -> int:
    """An ``images`` row (paths in the store by ``sha256``) and, ``with_post``, its first ``posts`` row;
    the image id."""
    source_path = source_path or f"/drop/{post}.jpg"
    image_id = conn.execute(insert(t.images).values(
        sha256=sha256, post=post, source_path=source_path, format=fmt, width=width, height=height,
        original_path=original_path(sha256, "jpg"), resized_path=resized or resized_path(sha256),
        taken_at=taken_at, caption=caption)).inserted_primary_key[0]
    if with_post:
        post_row(conn, image_id, post, post_source_path or source_path, taken_at)
    return image_id


def post_row(conn, image_id: int, post: str, source_path: str, taken_at=None) -> int:
    """A ``posts`` row of ``image_id``; its id."""
    return conn.execute(insert(t.posts).values(image_id=image_id, post=post, source_path=source_path,
                                               taken_at=taken_at)).inserted_primary_key[0]


#: (image key, post hashtags); an image key twice = the same photo posted twice
TAGGED_POSTS = [
    ("p1", ["recipe", "applepie", "dessert", "foodie"]),
    ("p2", ["recipes", "pies", "apples", "sweets"]),
    ("p3", ["recipe", "barbecue", "ribs"]),
    ("p4", ["recipe", "grill", "ribs", "yummy"]),
    ("p3", ["recipe", "bbq", "desserts"]),  # p3 re-posted: its labels are the union
    ("p5", ["recipe"]),  # nothing but the scrape tag: unlabelled
    ("p6", ["foodie", "yummy", "tofu"]),  # only generic tags and one rare label: unlabelled
    ("p7", ["recipe", "chocolatecake", "Cakes"]),
]

#: a grouping file for ``TAGGED_POSTS`` (the ``groups_file`` fixture)
GROUPS = """
scrape_tags: [recipe]
drop: [foodie, yummy]
min_count: 2
groups:
  sweets_sum: [dessert, sweet]
  bbq: [barbecue, grill]
"""


def add_posts(settings, posts, scrape_flag=("recipe", "recipes")) -> dict[str, int]:
    """Images, posts and post_hashtags as ingest would write them (tags case-folded), without files:
    ``posts`` is [(image key, tags)]; an image key seen before (in the database too) adds a re-post.
    Returns {image key: image id}."""
    with db.get_engine(settings).begin() as conn:
        ids = dict(conn.execute(select(t.images.c.post, t.images.c.id)).all())
        n = conn.execute(select(func.count()).select_from(t.posts)).scalar_one()
        for key, tags in posts:
            if key not in ids:
                ids[key] = image_row(conn, hashlib.sha256(key.encode()).hexdigest(), key, fmt="jpeg", width=32,
                                     height=32, with_post=False)
            n += 1
            post_id = post_row(conn, ids[key], f"{key}-{n}", f"/drop/{key}-{n}.txt")
            if tags:
                conn.execute(insert(t.post_hashtags), [
                    {"post_id": post_id, "tag": tag.casefold(), "position": i, "is_scrape_tag": tag in scrape_flag}
                    for i, tag in enumerate(tags)])
    return ids


def plain_images(settings, conn, n: int, files: bool = True) -> list[int]:
    """``n`` images with a first post each; with ``files`` a small plain JPEG each in the resized store.
    Returns every image id, in order."""
    for i in range(n):
        sha = f"{i:064x}"
        if files:
            path = settings.data_dir / resized_path(sha)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(photo_bytes(size=(32, 24), color=(40 * (i % 6), 120, 200)))
        image_row(conn, sha, f"2026-11-01_06-{i // 60 % 60:02d}-{i % 60:02d}_UTC", source_path=f"/drop/{i}.jpg")
    return list(conn.execute(select(t.images.c.id).order_by(t.images.c.id)).scalars())


# --------------------------------------------------------------------------- labelled photos of dishes

#: the tiny model's labels, in model-output order, and those of each generated dish
LABELS = ["dessert", "cake", "soup", "salad", "tart", "tomato"]
DISH_LABELS = {
    "tomato_soup": ("soup", "tomato"),
    "green_salad": ("salad",),
    "chocolate_cake": ("cake", "dessert"),
    "lemon_tart": ("dessert", "tart"),
}
#: the tiny model's input size
SIZE = 32


def add_images(settings, n: int = 24, seed: int = 0, labelled: bool = True) -> list[tuple[int, str, tuple]]:
    """``n`` generated dish photos (48 px JPEG) in the resized store, table images and a post each:
    (id, sha256, labels; ``()`` unless ``labelled``)."""
    rng = random.Random(seed)
    dishes = [d for d in DISHES if d.name in DISH_LABELS]
    out = []
    with db.get_engine(settings).begin() as conn:
        before = conn.execute(select(func.count()).select_from(t.images)).scalar_one()
        for k in range(n):
            dish = dishes[k % len(dishes)]
            buf = io.BytesIO()
            draw(dish, rng, size=48).save(buf, "JPEG", quality=85)
            # unique per call, and the same in every run: the training/validation split (by hash) is fixed
            sha = hashlib.sha256(buf.getvalue() + f"{seed}/{before + k}".encode()).hexdigest()
            rel = resized_path(sha)
            path = settings.data_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(buf.getvalue())
            image_id = image_row(conn, sha, f"post-{seed}-{k}", source_path=f"/drop/{seed}-{k}.jpg", width=48,
                                 height=48, resized=rel, post_source_path=f"/drop/{seed}-{before + k}.jpg")
            out.append((image_id, sha, DISH_LABELS[dish.name] if labelled else ()))
    return out


# --------------------------------------------------------------------------- vocabularies and models


def vocab_row(conn, labels=(), counts=None, *, n_images: int = 1, stats=None, config=None,
              valid_pct: float = 0.2) -> int:
    """A ``vocab_versions`` row (validation share ``valid_pct``) and its ``vocab_labels`` in ``labels`` order
    (``counts``: one per label, default 10, 11, 12, ...); its id."""
    labels = list(labels)
    counts = list(counts) if counts is not None else [10 + i for i in range(len(labels))]
    vid = conn.execute(insert(t.vocab_versions).values(
        config=config if config is not None else {}, config_sha256="c" * 64, n_posts=n_images, n_images=n_images,
        n_unlabelled=0, n_raw_tags=max(1, len(labels)), n_lemmas=max(1, len(labels)), n_labels=max(1, len(labels)),
        stats=stats if stats is not None else {}, valid_pct=valid_pct)).inserted_primary_key[0]
    if labels:
        conn.execute(insert(t.vocab_labels), [{"vocab_version_id": vid, "label": label, "idx": i, "count": c,
                                               "members": [label]} for i, (label, c) in enumerate(zip(labels, counts,
                                                                                                   strict=True))])
    return vid


def unchecked_vocab(settings, groups_file=None, min_count=None) -> int:
    """A vocabulary version built and stored even though it cannot train a model (``vocab.build(...,
    check=False)``): for tests of how tags become labels on a handful of posts; its id."""
    from instatag.vocab import build

    return build(settings, groups_file, min_count, check=False).version_id


def add_vocab(settings, images, labels=LABELS, valid_pct: float = 0.5) -> int:
    """A vocabulary version over ``images`` (as ``add_images`` returns them), with their image_labels; its
    validation split ``valid_pct`` of them."""
    counts = {label: sum(label in lab for _, _, lab in images) for label in labels}
    with db.get_engine(settings).begin() as conn:
        vid = vocab_row(conn, labels, [counts[label] for label in labels], n_images=len(images),
                        stats={"train_counts": counts}, config={"grouping": {}}, valid_pct=valid_pct)
        rows = [{"vocab_version_id": vid, "image_id": i, "label": label} for i, _, lab in images for label in lab
                if label in labels]
        if rows:
            conn.execute(insert(t.image_labels), rows)
    return vid


def model_row(conn, vocab_id: int, status: str = "candidate", metrics=None, *, params=None,
              artifact_path: str = "models/x/model.safetensors", sha256: str = "0" * 64, run: bool = True) -> int:
    """A ``model_versions`` row (with a succeeded ``training_runs`` row unless not ``run``); its id."""
    run_id = conn.execute(insert(t.training_runs).values(vocab_version_id=vocab_id, params={}, status="succeeded",
                                                         device="cpu")).inserted_primary_key[0] if run else None
    return conn.execute(insert(t.model_versions).values(
        training_run_id=run_id, vocab_version_id=vocab_id, arch="resnet18", params=params or {}, metrics=metrics,
        artifact_path=artifact_path, sha256=sha256, status=status)).inserted_primary_key[0]


def save_tiny_model(folder: Path) -> Path:
    """A saved, untrained resnet18 (fastai head) for ``LABELS`` at ``SIZE``: files only, no database."""
    import torch

    from instatag import archs

    torch.manual_seed(0)
    net = archs.build("resnet18", len(LABELS), pretrained=False)
    mean, std = archs.stats("resnet18")
    modelfile.save(folder, net.state_dict(), {"arch": "resnet18", "size": SIZE, "mean": mean, "std": std,
                                              "labels": LABELS})
    return folder


def add_model(settings, vocab_id: int, model_dir: Path) -> int:
    """Register a copy of ``model_dir`` as a candidate model version of ``vocab_id``."""
    sha = hashlib.sha256((model_dir / modelfile.WEIGHTS).read_bytes()).hexdigest()
    with db.get_engine(settings).begin() as conn:
        mid = model_row(conn, vocab_id, artifact_path="", sha256=sha)
        rel = f"models/{mid}/{modelfile.WEIGHTS}"
        conn.execute(update(t.model_versions).where(t.model_versions.c.id == mid).values(artifact_path=rel))
    shutil.copytree(model_dir, settings.data_dir / "models" / str(mid))
    modelfile.update_meta(settings.data_dir / "models" / str(mid), vocab_version_id=vocab_id)
    return mid


def make_champion(settings, model_dir: Path, n: int = 24) -> tuple[int, list]:
    """Images, a vocabulary and an evaluated champion model: (model id, images)."""
    from instatag import evaluate, promote

    images = add_images(settings, n)
    mid = add_model(settings, add_vocab(settings, images), model_dir)
    evaluate.evaluate(settings, mid)
    promote.promote(settings, mid, reason="test")
    return mid, images


# --------------------------------------------------------------------------- reading back


def rows(settings, table) -> list[dict]:
    """Every row of ``table`` as a dict."""
    with db.get_engine(settings).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(table))]


def counts(settings) -> dict[str, int]:
    """Rows in each table ingest writes."""
    with db.get_engine(settings).connect() as conn:
        return {tb.name: conn.execute(select(func.count()).select_from(tb)).scalar_one()
                for tb in (t.images, t.posts, t.post_hashtags, t.ingest_errors)}


def tags_by_post(settings) -> dict[str, list[str]]:
    """{post name: its hashtags in caption order}."""
    ids = {r["id"]: r["post"] for r in rows(settings, t.posts)}
    out: dict[str, list[str]] = {p: [] for p in ids.values()}
    for r in sorted(rows(settings, t.post_hashtags), key=lambda r: r["position"]):
        out[ids[r["post_id"]]].append(r["tag"])
    return out


def errors_by_name(settings) -> dict[str, str]:
    """{file name: reason} of ``ingest_errors``."""
    return {Path(r["path"]).name: r["reason"] for r in rows(settings, t.ingest_errors)}


def prediction_rows(settings, model_id: int | None = None) -> list:
    """(model, image, label, probability, rank) of ``predictions`` (of ``model_id``), by image and rank."""
    p = t.predictions
    q = select(p.c.model_version_id, p.c.image_id, p.c.label, p.c.probability, p.c.rank).order_by(
        p.c.image_id, p.c.rank)
    if model_id is not None:
        q = q.where(p.c.model_version_id == model_id)
    with db.get_engine(settings).connect() as conn:
        return conn.execute(q).all()


def vocab_rows(settings, vid: int):
    """(labels rows (label, idx, count, members) in idx order, {image post key: labels}, the version's row)
    of a vocabulary version."""
    with db.get_engine(settings).connect() as conn:
        labels = [tuple(r) for r in conn.execute(
            select(t.vocab_labels.c.label, t.vocab_labels.c.idx, t.vocab_labels.c.count, t.vocab_labels.c.members)
            .where(t.vocab_labels.c.vocab_version_id == vid).order_by(t.vocab_labels.c.idx))]
        per_image = collections.defaultdict(set)
        for post, label in conn.execute(select(t.images.c.post, t.image_labels.c.label)
                                        .join(t.images, t.images.c.id == t.image_labels.c.image_id)
                                        .where(t.image_labels.c.vocab_version_id == vid)):
            per_image[post].add(label)
        row = conn.execute(select(t.vocab_versions).where(t.vocab_versions.c.id == vid)).one()
    return labels, dict(per_image), row


# --------------------------------------------------------------------------- doubles


class FakeClock:
    """Seconds that advance by ``step`` at every reading."""

    def __init__(self, step: float):
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


#: the web app's secret key in tests (``client_for``)
SECRET = b"test secret"


def client_for(settings, editor: bool = False, user: str = "tester"):
    """The web app's test client as ``user``, who may record corrections when ``editor`` (read-only by default)."""
    from fastapi.testclient import TestClient

    from instatag import webapp

    app = webapp.create_app(settings, secret_key=SECRET)
    app.dependency_overrides[webapp.airflow_auth()] = lambda: user
    app.dependency_overrides[webapp.edit_rights()] = lambda: editor
    return TestClient(app)


# --------------------------------------------------------------------------- training (test_train, test_fastfit)
#: the labels of the training tests, in model-output order
TRAIN_LABELS = ["dessert", "cake", "soup", "salad", "tart"]
TRAIN_DISH_LABELS = {"tomato_soup": ("soup",), "green_salad": ("salad",), "chocolate_cake": ("dessert", "cake"),
                     "lemon_tart": ("dessert", "tart")}
#: a training config small enough for a CPU test
TINY_TRAIN = dict(arch="resnet18", size=32, epochs=1, freeze_epochs=1, lr=1e-3, bs=8, pretrained=False)


def varied_photos(n: int, seed: int = 0):
    """(jpeg bytes, labels) of ``n`` generated photos of varied sizes (so an uncropped batch cannot collate)."""
    rng = random.Random(seed)
    dishes = [d for d in DISHES if d.name in TRAIN_DISH_LABELS]
    for k in range(n):
        dish = dishes[k % len(dishes)]
        buf = io.BytesIO()
        draw(dish, rng, size=96).resize((48 + 4 * (k % 5), 40 + 3 * (k % 4))).save(buf, "JPEG", quality=85)
        yield buf.getvalue(), TRAIN_DISH_LABELS[dish.name]


def photo_items(folder: Path, n: int = 24) -> list:
    """``n`` of ``varied_photos`` written to ``folder`` as ``labels.Item`` (ids from 1, labels in
    ``TRAIN_LABELS`` order): the training tests' items, without a database."""
    from instatag.labels import Item

    out = []
    for k, (data, labels) in enumerate(varied_photos(n)):
        path = folder / f"{k}.jpg"
        path.write_bytes(data)
        out.append(Item(k + 1, hashlib.sha256(data).hexdigest(), path,
                        tuple(sorted(labels, key=TRAIN_LABELS.index))))
    return out
