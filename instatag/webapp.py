"""The web pages of instatag: model versions, their reports, and a tag browser with corrections.

``create_app(settings)`` builds a FastAPI app; ``plugins/instatag_plugin.py`` mounts it in
Airflow's api-server under ``/instatag`` with a navigation entry. Every route requires a user
logged in to Airflow (the JWT in the ``Authorization`` header or the ``_token`` cookie, checked
by Airflow's own ``get_user`` dependency) who may see the Airflow UI.

Corrections (``POST /correct``, ``instatag.feedback``): a user the auth manager lets edit the
instatag DAGs (``is_authorized_dag(method="PUT")`` on each of ``params.DAG_IDS``; ``edit_rights``)
sees confirm/reject buttons on each predicted tag and a list to add a missing label; others see the
verdicts only, and their POST is refused (403). A POST must carry the form's token (an HMAC of the
user name with the api-server's secret key, ``[api] secret_key``) and must not come from another
site (``Origin`` and ``Sec-Fetch-Site``); the label must be in the model's vocabulary (400 with a
message otherwise).

Files are served only from three places, and never from a path given in the request:
thumbnails from the resized image store (looked up by image id in the database), report
files from ``reports/<model_version_id>/`` (a plain file name; anything resolving elsewhere,
symlinks included, is refused), and Grad-CAM heatmaps from the cache of ``instatag.explain``
(by model version, image id and a label of that model).

Pages are small server-rendered HTML without external assets. The browser's queries run on the
``(model_version_id, label, probability)`` index of ``predictions``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from sqlalchemy import exists, func, select

from . import feedback, registry
from . import schema as t
from .rendering import templates
from .settings import Settings, load_settings

PER_PAGE = 48
#: orderings of the tag browser (``order``): newest post first, or the review queue
ORDERS = ("newest", "review")
#: the browse page parameters a correction's redirect keeps
BACK_PARAMS = ("model", "tag", "min_p", "page", "order")
MAX_PAGE = 100_000
#: a report file name: no separators, no leading dot
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
#: the summary metrics on the models page, in this order
MODEL_METRICS = ("dominant_recall@1", "dominant_recall@2", "map")
#: what the report page may load: its own inline style and script, images embedded as data URIs
REPORT_CSP = ("default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
              "script-src 'unsafe-inline'; frame-ancestors 'self'")


# --------------------------------------------------------------------------- authentication
@functools.cache
def airflow_auth() -> Callable:
    """The dependency every route carries: the Airflow user, who must be allowed to see the UI.

    Airflow's ``get_user`` reads the JWT from ``Authorization: Bearer`` or the ``_token`` cookie
    (401 without one, 403 when invalid). Cached, so tests can override it by identity."""
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import get_user

    def require_airflow_user(user=Depends(get_user)):
        from airflow.api_fastapi.app import get_auth_manager

        if not get_auth_manager().is_authorized_view(access_view=AccessView.WEBSITE, user=user):
            raise HTTPException(status_code=403, detail="this user may not see the Airflow UI")
        return user

    return require_airflow_user


@functools.cache
def edit_rights() -> Callable:
    """The dependency telling whether the Airflow user may record corrections: the auth manager
    allows ``PUT`` on every instatag DAG (``params.DAG_IDS``; in the SimpleAuthManager the roles
    user, op and admin, not viewer). Cached, so tests can override it by identity."""
    from . import params

    def may_edit(user=Depends(airflow_auth())) -> bool:
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

        manager = get_auth_manager()
        return all(manager.is_authorized_dag(method="PUT", details=DagDetails(id=dag_id), user=user)
                   for dag_id in params.DAG_IDS)

    return may_edit


def user_name(user) -> str:
    """The Airflow user's name (``BaseUser.get_name``), else ``str(user)``."""
    get_name = getattr(user, "get_name", None)
    return str(get_name() if callable(get_name) else user)


def server_secret() -> bytes:
    """The api-server's ``[api] secret_key`` (``AIRFLOW__API__SECRET_KEY``); outside Airflow a random
    key for this process."""
    try:
        from airflow.configuration import conf

        key = conf.get("api", "secret_key", fallback="")
    except Exception:  # noqa: BLE001 - no Airflow config: this process's own key
        key = ""
    return key.encode() if key else _process_secret()


@functools.cache
def _process_secret() -> bytes:
    return secrets.token_bytes(32)


def csrf_token(secret: bytes, user: str) -> str:
    """The token of ``user``'s correction forms: HMAC-SHA256 of the user name with the server secret."""
    return hmac.new(secret, b"instatag-correction\0" + user.encode(), hashlib.sha256).hexdigest()


def cross_site(request: Request) -> str | None:
    """Why a POST looks cross-site (``Sec-Fetch-Site`` other than same-origin/none, or an ``Origin``
    whose host is not this one), else None."""
    site = request.headers.get("sec-fetch-site")
    if site and site not in ("same-origin", "none"):
        return f"a {site} request"
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host", ""):
        return f"a request from {origin}"
    if origin == "null":
        return "a request from an opaque origin"
    return None


# --------------------------------------------------------------------------- queries
@dataclass(frozen=True)
class Card:
    image_id: int
    post: str  # the image's first post
    tags: list[tuple[str, float]]  # most probable first
    posted_at: datetime | None = None  # the time of that post
    uploader: tuple[str, ...] = ()  # the uploader's labels in the model's vocabulary version
    verdicts: dict | None = None  # {label: confirmed | rejected}, the latest per label
    disagreement: float | None = None  # the review score (order "review")

@dataclass(frozen=True)
class Page:
    model_version_id: int | None
    tag: str
    min_p: float
    page: int
    cards: list[Card]
    has_next: bool
    total: int | None  # matching images; counted only when filtering by tag (an index range)
    order: str = "newest"


def model_exists(conn, model_version_id: int) -> bool:
    return registry.exists(conn, model_version_id)


def model_ranking(conn, model_version_id: int) -> str:
    """The ranking a model version was trained with (``instatag.ranking``; ``params`` of
    ``model_versions``), "probability" for models from before rankings."""
    return (registry.row(conn, model_version_id)["params"] or {}).get("ranking") or "probability"


def default_model(conn) -> int | None:
    """The champion, else the newest model version with predictions, else None."""
    champion = registry.champion_id(conn)
    if champion is not None:
        return champion
    newest = conn.execute(select(func.max(t.predictions.c.model_version_id))).scalar()
    return None if newest is None else int(newest)


def model_labels(conn, model_version_id: int, later: dict[int, set[str]] | None = None) -> list[tuple[str, int]]:
    """(label, images whose uploaders gave it) of the model's vocabulary, alphabetical: the images of
    the vocabulary version the model was trained on, plus those of ``later`` (photos ingested after
    it, ``later_uploader_labels``)."""
    vocab = registry.vocab_version_id(conn, model_version_id)
    rows = conn.execute(
        select(t.vocab_labels.c.label, t.vocab_labels.c.count)
        .where(t.vocab_labels.c.vocab_version_id == vocab)
        .order_by(t.vocab_labels.c.label)
    )
    added = Counter(label for ls in (later or {}).values() for label in ls)
    return [(r.label, r.count + added.get(r.label, 0)) for r in rows]


#: {(database url, vocabulary version): labels.LabelPipeline}, and the labels they gave per state of the runs
_PIPELINES: dict = {}
_LATER: dict = {}


def later_uploader_labels(settings: Settings, conn, vocab_version_id: int | None) -> dict[int, set[str]]:
    """{image id: uploader labels} of the photos ingested after vocabulary version ``vocab_version_id``
    was built, mapped through that version's label pipeline exactly as drop grading maps them
    (``drops.labels_since``): the vocabulary's ``image_labels`` predate these photos. Cached per
    database, vocabulary version and the posts of the ingest runs since; {} when there are none or
    WordNet is missing (logged)."""
    import logging

    from . import drops
    from .errors import UserError
    from .labels import LabelPipeline

    if vocab_version_id is None:
        return {}
    created = conn.execute(select(t.vocab_versions.c.created_at)
                           .where(t.vocab_versions.c.id == vocab_version_id)).scalar()
    if created is None:
        return {}
    runs = drops.runs_since(conn, drops._utc(created))
    if not runs:
        return {}
    posts = tuple(conn.execute(select(t.posts.c.ingest_run_id, func.count()).where(t.posts.c.ingest_run_id.in_(runs))
                               .group_by(t.posts.c.ingest_run_id).order_by(t.posts.c.ingest_run_id)).tuples())
    key = (settings.database_url, vocab_version_id)
    if _LATER.get(key, (None,))[0] != posts:
        try:
            if key not in _PIPELINES:
                _PIPELINES[key] = LabelPipeline.for_version(settings, vocab_version_id)
            _LATER[key] = (posts, drops.labels_since(conn, _PIPELINES[key], drops._utc(created)))
        except UserError as exc:
            logging.getLogger(__name__).warning("uploader labels of photos newer than vocabulary version %d: %s",
                                                vocab_version_id, exc)
            return {}
    return _LATER[key][1]


def browse_statement(model_version_id: int, tag: str, min_p: float, limit: int, offset: int):
    """Image ids of one page: by probability of ``tag`` (highest first) when given, else newest post
    first (``images.taken_at``, the time of the image's first post; images without one last, then by
    id), on the index ``ix_images_taken_at``."""
    p = t.predictions.c
    if tag:
        return (
            select(p.image_id)
            .where(p.model_version_id == model_version_id, p.label == tag, p.probability >= min_p)
            .order_by(p.probability.desc(), p.image_id.desc())
            .limit(limit)
            .offset(offset)
        )
    scored = exists().where(p.model_version_id == model_version_id, p.image_id == t.images.c.id,
                            p.probability >= min_p)
    newest = (t.images.c.taken_at.desc().nulls_last(), t.images.c.id.desc())
    return select(t.images.c.id.label("image_id")).where(scored).order_by(*newest).limit(limit).offset(offset)


def review_queue(conn, model_version_id: int, vocab_version_id: int, tag: str = "", min_p: float = 0.0,
                 later: dict[int, set[str]] | None = None) -> list[tuple[int, float]]:
    """The review queue: (image id, disagreement) of every image the model scored (with a prediction at
    or over ``min_p``, of ``tag`` when given), in review order.

    An image's disagreement (0..1) is the largest of: the probability of a label the uploader did not
    give, and 1 - the probability of a label the uploader gave. The probabilities are the full
    per-label ones scoring stores (``image_probabilities``, ``drops.load_probabilities``); an image
    without them falls back to its stored predictions (tags over threshold and the top 2), where a
    label not stored counts as probability 0. The uploader's labels are those of the vocabulary
    version (``image_labels``) and, for photos ingested after it was built, ``later``
    (``later_uploader_labels``). Order: images nobody has corrected first; then disagreement, highest
    first; ties newest post first (``images.taken_at``, none last), then highest image id."""
    import numpy as np

    from . import drops

    p, il, im = t.predictions.c, t.image_labels.c, t.images.c
    q = select(p.image_id, p.label, p.probability).where(p.model_version_id == model_version_id)
    shown = t.predictions.alias("shown")
    q = q.where(exists().where(shown.c.model_version_id == model_version_id, shown.c.image_id == p.image_id,
                               shown.c.probability >= min_p, *([shown.c.label == tag] if tag else [])))
    predicted: dict[int, dict[str, float]] = {}
    for r in conn.execute(q):
        predicted.setdefault(r.image_id, {})[r.label] = r.probability
    if not predicted:
        return []
    ids = sorted(predicted)
    labels = conn.execute(select(t.vocab_labels.c.label).where(t.vocab_labels.c.vocab_version_id == vocab_version_id)
                          .order_by(t.vocab_labels.c.idx)).scalars().all()
    probs = drops.load_probabilities(conn, model_version_id, ids)
    given: dict[int, set[str]] = {i: set() for i in ids}
    taken: dict[int, datetime | None] = {}
    reviewed: set[int] = set()
    for chunk in (ids[k:k + 500] for k in range(0, len(ids), 500)):
        for r in conn.execute(select(il.image_id, il.label).where(il.vocab_version_id == vocab_version_id,
                                                                  il.image_id.in_(chunk))):
            given[r.image_id].add(r.label)
        taken.update(conn.execute(select(im.id, im.taken_at).where(im.id.in_(chunk))).tuples().all())
        reviewed.update(conn.execute(select(t.label_corrections.c.image_id).distinct()
                                     .where(t.label_corrections.c.image_id.in_(chunk))).scalars())
    for i, ls in (later or {}).items():
        if i in given:
            given[i] |= set(ls)
    index = {label: j for j, label in enumerate(labels)}
    scores = []
    for i in ids:
        row = probs.get(i)
        if row is None or len(row) != len(labels):
            row = np.zeros(len(labels), dtype=np.float32)
            for label, value in predicted[i].items():
                if label in index:
                    row[index[label]] = value
        mask = np.zeros(len(labels), dtype=bool)
        mask[[index[label] for label in given[i] if label in index]] = True
        missed = float(row[~mask].max()) if (~mask).any() else 0.0
        lost = float((1.0 - row[mask]).max()) if mask.any() else 0.0
        scores.append((i, max(missed, lost)))

    def key(item):
        i, d = item
        when = taken.get(i)
        return (i in reviewed, -round(d, 6), when is None, -(when.timestamp() if when else 0.0), -i)

    return sorted(scores, key=key)


def count_statement(model_version_id: int, tag: str, min_p: float):
    p = t.predictions.c
    return select(func.count()).select_from(t.predictions).where(
        p.model_version_id == model_version_id, p.label == tag, p.probability >= min_p)


def browse(conn, model_version_id: int, tag: str = "", min_p: float = 0.0, page: int = 1,
           per_page: int = PER_PAGE, order: str = "newest", later: dict[int, set[str]] | None = None) -> Page:
    """One page of the tag browser: images with all their predicted tags, most probable first
    (whatever the model's ranking: ``predictions.rank`` only breaks ties), their uploader's labels
    and people's verdicts. ``order`` "review": the review queue (``review_queue``). ``later``: the
    uploader labels of photos ingested after the model's vocabulary version
    (``later_uploader_labels``)."""
    offset = (page - 1) * per_page
    vocab = registry.vocab_version_id(conn, model_version_id)
    if order == "review":
        queue = review_queue(conn, model_version_id, vocab, tag, min_p, later)[offset:offset + per_page + 1]
        scores = dict(queue)
        ids = [i for i, _ in queue]
    else:
        scores = {}
        ids = [r.image_id for r in conn.execute(browse_statement(model_version_id, tag, min_p, per_page + 1,
                                                                 offset))]
    has_next, ids = len(ids) > per_page, ids[:per_page]
    total = conn.execute(count_statement(model_version_id, tag, min_p)).scalar() if tag else None
    cards = make_cards(conn, model_version_id, vocab, ids, scores, later)
    return Page(model_version_id, tag, min_p, page, cards, has_next, total, order)


def make_cards(conn, model_version_id: int, vocab_version_id: int | None, ids: list[int],
               scores: dict[int, float] | None = None, later: dict[int, set[str]] | None = None) -> list[Card]:
    """The cards of images ``ids`` (in that order; unknown ids give empty cards): the model's predicted
    tags most probable first, the uploader's labels (``image_labels`` of the vocabulary version, and
    ``later``), the latest verdicts and the review ``scores``."""
    uploader: dict[int, list[str]] = {i: [] for i in ids}
    verdicts = feedback.latest_verdicts(conn, ids) if ids else {}
    tags: dict[int, list[tuple[str, float]]] = {i: [] for i in ids}
    posts: dict[int, tuple[str, datetime | None]] = {}
    if ids:
        p = t.predictions.c
        rows = conn.execute(
            select(p.image_id, p.label, p.probability)
            .where(p.model_version_id == model_version_id, p.image_id.in_(ids))
            .order_by(p.image_id, p.probability.desc(), p.rank)
        )
        for r in rows:
            tags[r.image_id].append((r.label, r.probability))
        im = t.images.c
        posts = {r.id: (r.post, r.taken_at) for r in conn.execute(
            select(im.id, im.post, im.taken_at).where(im.id.in_(ids)))}
        il = t.image_labels.c
        for r in conn.execute(select(il.image_id, il.label)
                              .where(il.vocab_version_id == vocab_version_id, il.image_id.in_(ids))
                              .order_by(il.image_id, il.label)):
            uploader[r.image_id].append(r.label)
        for i in ids:
            uploader[i] = sorted(set(uploader[i]) | set((later or {}).get(i, ())))
    return [Card(i, posts.get(i, ("", None))[0], tags[i], posts.get(i, ("", None))[1], tuple(uploader[i]),
                 verdicts.get(i, {}), (scores or {}).get(i)) for i in ids]


def model_rows(conn) -> list[dict]:
    """Every model version, newest first, with its run's device and timings, its vocabulary's label
    count (``n_labels``) and its training/validation set sizes (``n_train``, ``n_valid``: images, from
    ``model_versions.params``; None when the model was registered without them)."""
    mv, tr, vv = t.model_versions.c, t.training_runs.c, t.vocab_versions.c
    rows = conn.execute(
        select(mv.id, mv.arch, mv.vocab_version_id, mv.status, mv.created_at, mv.promoted_at, mv.metrics,
               mv.params, tr.device, tr.started_at, tr.finished_at, vv.n_labels)
        .select_from(t.model_versions.outerjoin(t.training_runs, tr.id == mv.training_run_id)
                     .join(t.vocab_versions, vv.id == mv.vocab_version_id))
        .order_by(mv.id.desc())
    ).mappings()
    return [{**r, "n_train": (r["params"] or {}).get("n_train"), "n_valid": (r["params"] or {}).get("n_valid")}
            for r in rows]


def run_rows(conn, limit: int = 20) -> list[dict]:
    """The newest ``limit`` training runs that registered no model version (running or failed), newest
    first, with ``reason``: the first line of a failed run's error, or why a run still ``running`` looks
    dead (``train.stale_reason``; the next training marks it failed)."""
    from .train import stale_reason

    tr, mv = t.training_runs.c, t.model_versions.c
    rows = conn.execute(select(tr.id, tr.vocab_version_id, tr.status, tr.error, tr.device, tr.started_at,
                               tr.finished_at, tr.pid, tr.host, tr.heartbeat_at)
                        .where(~exists().where(mv.training_run_id == tr.id))
                        .order_by(tr.id.desc()).limit(limit)).mappings().all()
    out = []
    for r in rows:
        row = dict(r)
        stale = stale_reason(row)
        row["stale"] = stale
        row["reason"] = stale or (r["error"] or "").strip().split("\n", 1)[0]
        out.append(row)
    return out


# --------------------------------------------------------------------------- files
def safe_file(base: Path, *parts: str) -> Path | None:
    """``base/parts`` when it is a regular file that resolves (symlinks followed) inside ``base``."""
    root = base.resolve()
    try:
        path = root.joinpath(*parts).resolve()
    except (OSError, RuntimeError):  # symlink loops
        return None
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def thumbnail_path(settings: Settings, conn, image_id: int) -> Path | None:
    rel = conn.execute(select(t.images.c.resized_path).where(t.images.c.id == image_id)).scalar()
    if not rel or Path(rel).is_absolute():
        return None
    path = safe_file(settings.data_dir, rel)
    return path if path and path.is_relative_to(settings.resized_dir.resolve()) else None


def report_file(settings: Settings, model_version_id: int, filename: str) -> Path | None:
    if not SAFE_NAME.match(filename):
        return None
    return safe_file(settings.reports_dir / str(model_version_id), filename)


def suggestion_report(settings: Settings, name: str = ""):
    """(file name, report) of a stored suggestion report (``name``: a plain file name in the suggestions
    folder; empty: the newest), or (name, None) when there is none or the name is not a report's."""
    from . import suggest
    from .errors import UserError

    if not name:
        files = suggest.report_files(settings)
        name = files[0].name if files else ""
    path = safe_file(suggest.reports_dir(settings), name) if name and SAFE_NAME.match(name) else None
    if path is None or path.suffix != ".json":
        return name, None
    try:
        return name, suggest.load_report(path)
    except UserError:
        return name, None


# --------------------------------------------------------------------------- rendering
def _links(request: Request):
    root = request.scope.get("root_path", "").rstrip("/")

    def url(path: str, **params) -> str:
        query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
        return f"{root}{path}" + (f"?{query}" if query else "")

    return url


def _html(request: Request, template: str, status_code: int = 200, **context) -> HTMLResponse:
    body = templates().get_template(template).render(url=_links(request), **context)
    return HTMLResponse(body, status_code=status_code,
                        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})


def _not_found(request: Request, title: str, message: str, command: str = "") -> HTMLResponse:
    """A 404 page in the app's layout, with a way back to the model versions."""
    return _html(request, "notfound.html", status_code=404, title=title, message=message, command=command)


# --------------------------------------------------------------------------- the app
def create_app(settings: Settings | None = None, secret_key: bytes | None = None) -> FastAPI:
    """The instatag pages as a FastAPI app; every route requires an Airflow user (``airflow_auth``).
    ``secret_key``: the key of the correction forms' tokens (default: ``server_secret``)."""
    from . import db

    settings = settings or load_settings()

    def secret() -> bytes:
        return secret_key or server_secret()

    app = FastAPI(title="instatag", description=__doc__, dependencies=[Depends(airflow_auth())],
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings

    def connect():
        with db.get_engine(settings).connect() as conn:
            yield conn

    @app.get("/", response_class=HTMLResponse, name="models")
    def models(request: Request, conn=Depends(connect)):
        rows = model_rows(conn)
        for row in rows:
            row["has_report"] = report_file(settings, row["id"], "report.html") is not None
        return _html(request, "models.html", rows=rows, metric_names=MODEL_METRICS, runs=run_rows(conn))

    @app.get("/models/{model_version_id}/report", name="report")
    def report(request: Request, model_version_id: int, conn=Depends(connect)):
        if not model_exists(conn, model_version_id):
            return _not_found(request, "No such model version",
                              f"There is no model version {model_version_id}.")
        path = report_file(settings, model_version_id, "report.html")
        if path is None:
            return _not_found(request, "No report yet", f"Model version {model_version_id} has no report yet.",
                              f"instatag report {model_version_id}")
        return FileResponse(path, media_type="text/html",
                            headers={"Content-Security-Policy": REPORT_CSP, "X-Content-Type-Options": "nosniff"})

    @app.get("/reports/{model_version_id}/{filename}", name="report_file")
    def report_asset(model_version_id: int, filename: str):
        if not SAFE_NAME.match(filename):
            raise HTTPException(400, "not a report file name")
        path = report_file(settings, model_version_id, filename)
        if path is None:
            raise HTTPException(404, "no such report file")
        headers = {"X-Content-Type-Options": "nosniff"}
        if path.suffix == ".html":
            headers["Content-Security-Policy"] = REPORT_CSP
        return FileResponse(path, headers=headers)

    @app.get("/browse", response_class=HTMLResponse, name="browse")
    def browse_page(
        request: Request,
        tag: str = Query("", max_length=255, description="only images predicted with this tag"),
        min_p: float = Query(0.0, ge=0.0, le=1.0, description="minimum probability"),
        page: int = Query(1, description=f"page number, clamped to 1..{MAX_PAGE}"),
        model: int | None = Query(None, ge=1, description="model version (default: the champion)"),
        order: str = Query("newest", pattern=f"^({'|'.join(ORDERS)})$", description=" | ".join(ORDERS)),
        conn=Depends(connect),
        user=Depends(airflow_auth()),
        editor: bool = Depends(edit_rights()),
    ):
        if model is not None and not model_exists(conn, model):
            return _not_found(request, "No such model version", f"There is no model version {model}.")
        page = min(max(page, 1), MAX_PAGE)
        model = model or default_model(conn)
        vocab = registry.vocab_version_id(conn, model) if model else None
        later = later_uploader_labels(settings, conn, vocab)
        labels = model_labels(conn, model, later) if model else []
        message = ""
        if model is None:
            message = "No predictions yet: train, evaluate and score a model first."
            result = None
        elif tag and tag not in {label for label, _ in labels}:
            message = f"“{tag}” is not a label of model version {model}."
            result = Page(model, tag, min_p, page, [], False, 0)
        else:
            result = browse(conn, model, tag, min_p, page, order=order, later=later)
        saved = request.query_params.get("saved", "")
        saved_card = None
        if model and saved.isdigit() and conn.execute(select(t.images.c.id).where(t.images.c.id == int(saved))
                                                      ).first():
            (saved_card,) = make_cards(conn, model, vocab, [int(saved)], later=later)
            if result is not None:  # shown once, at the top: the grid leaves it out
                result = replace(result, cards=[c for c in result.cards if c.image_id != saved_card.image_id])
        return _html(request, "browse.html", page=result, labels=labels, tag=tag, min_p=min_p, model=model,
                     message=message, vocab=vocab, ranking=model_ranking(conn, model) if model else "probability",
                     order=order, editor=editor, csrf=csrf_token(secret(), user_name(user)) if editor else "",
                     saved=saved, saved_card=saved_card, nolabel=request.query_params.get("nolabel", ""),
                     back=urlencode([(k, v) for k, v in request.query_params.multi_items() if k in BACK_PARAMS]))

    @app.post("/correct", name="correct")
    def correct(
        request: Request,
        image_id: int = Form(..., ge=1),
        model: int = Form(..., ge=1),
        action: str = Form(..., max_length=300, description="confirmed:LABEL or rejected:LABEL; confirmed: adds label"),
        label: str = Form("", max_length=255, description="the label to add (with action=confirmed:)"),
        csrf: str = Form("", max_length=128),
        back: str = Form("", max_length=2000, description="the browse page's query string"),
        conn=Depends(connect),
        user=Depends(airflow_auth()),
        editor: bool = Depends(edit_rights()),
    ):
        why = cross_site(request)
        if why:
            raise HTTPException(403, f"refused: {why}; corrections are accepted from the tag browser only")
        if not editor:
            raise HTTPException(403, "this user may not correct labels: it needs edit rights on the instatag DAGs")
        if not hmac.compare_digest(csrf, csrf_token(secret(), user_name(user))):
            raise HTTPException(403, "refused: the form's token is missing or wrong; reload the tag browser")
        verdict, _, chosen = action.partition(":")
        chosen = chosen or label
        keep = {k: v for k, v in parse_qsl(back.lstrip("?")) if k in BACK_PARAMS}
        if verdict == "confirmed" and not chosen:  # "add" with no label chosen: back to the page, which says so
            target = _links(request)("/browse", **{**keep, "nolabel": image_id})
            return RedirectResponse(f"{target}#image-{image_id}", status_code=303)
        problem = (None if model_exists(conn, model) else f"there is no model version {model}")
        if problem is None and not conn.execute(select(t.images.c.id).where(t.images.c.id == image_id)).first():
            problem = f"there is no image {image_id}"
        problem = problem or feedback.check(verdict, chosen, feedback.vocabulary(conn, model), user_name(user))
        if problem:
            return _html(request, "notfound.html", status_code=400, title="Correction refused",
                         message=f"Correction refused: {problem}. Nothing was stored.")
        feedback.record(conn, image_id, chosen, verdict, user_name(user), model)
        conn.commit()
        target = _links(request)("/browse", **{**keep, "saved": image_id})
        return RedirectResponse(f"{target}#image-{image_id}", status_code=303)

    @app.get("/suggestions", response_class=HTMLResponse, name="suggestions")
    def suggestions_page(request: Request, report: str = Query("", max_length=200,
                                                                description="a stored report (default: the newest)")):
        from . import suggest

        name, found = suggestion_report(settings, report)
        cut = found and next((s.evidence["images"] for s in found.suggestions if s.kind == "min_count"), None)
        others = [p.name for p in suggest.report_files(settings) if p.name != name]
        return _html(request, "suggestions.html", report=found, name=name, others=others, cut=cut)

    @app.get("/suggestions/grouping.yaml", name="suggested_grouping")
    def suggested_grouping(report: str = Query("", max_length=200), accept: list[str] = Query([])):
        from fastapi.responses import PlainTextResponse

        from . import suggest
        from .errors import UserError

        name, found = suggestion_report(settings, report)
        if found is None:
            raise HTTPException(404, "no such suggestion report")
        try:
            text = suggest.grouping_text(found, accept)
        except UserError as exc:
            raise HTTPException(400, str(exc)) from None
        return PlainTextResponse(text, media_type="application/yaml", headers={
            "Content-Disposition": f'attachment; filename="groups-{name.removesuffix(".json")}.yaml"',
            "X-Content-Type-Options": "nosniff"})

    @app.get("/thumb/{image_id}", name="thumb")
    def thumb(image_id: int, conn=Depends(connect)):
        path = thumbnail_path(settings, conn, image_id)
        if path is None:
            raise HTTPException(404, "no such image")
        return FileResponse(path, media_type="image/jpeg",
                            headers={"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"})

    @app.get("/heatmap/{image_id}", name="heatmap")
    def heatmap(
        image_id: int,
        label: str = Query(..., min_length=1, max_length=255, description="the label to explain"),
        model: int = Query(..., ge=1, description="model version"),
        conn=Depends(connect),
    ):
        """The Grad-CAM overlay (PNG, the model's input size) of ``label`` over an image's centre crop
        (``instatag.explain``): computed on the first request, then served from its cache."""
        from . import explain
        from .errors import UserError

        if not model_exists(conn, model):
            raise HTTPException(404, f"there is no model version {model}")
        if label not in {lab for lab, _ in model_labels(conn, model)}:
            raise HTTPException(404, f"{label!r} is not a label of model version {model}")
        path = thumbnail_path(settings, conn, image_id)
        sha = conn.execute(select(t.images.c.sha256).where(t.images.c.id == image_id)).scalar()
        if path is None or sha is None:
            raise HTTPException(404, "no such image")
        try:
            png = explain.cached_png(settings, model, path, sha, label)
        except UserError as exc:
            raise HTTPException(503, f"no heatmap: {exc}") from None
        return FileResponse(png, media_type="image/png",
                            headers={"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"})

    @app.get("/drops", response_class=HTMLResponse, name="drops")
    def drops_page(request: Request, conn=Depends(connect)):
        return _html(request, "drops.html", **drops_context(conn))

    return app


def drops_context(conn) -> dict:
    """The Drops page: one row per drop and model that graded it (``drops.drop_rows``), and the time
    series as base64 PNGs (``plots.drop_quality``, ``plots.drop_drift``) once a drop is graded."""
    import base64

    from . import drops, plots

    rows = drops.drop_rows(conn)
    graded = [r for r in rows if r.get("model_version_id") is not None]
    charts = []
    if graded:
        charts = [("The champion on each drop's fresh labels", plots.drop_quality(rows)),
                  ("Drift figures per drop", plots.drop_drift(rows))]
    return {"rows": list(reversed(rows)), "figure_names": drops.FIGURES,
            "plots": [(title, base64.b64encode(png).decode()) for title, png in charts]}

