"""The read-only web pages of instatag: model versions, their reports, and a tag browser.

``create_app(settings)`` builds a FastAPI app; ``plugins/instatag_plugin.py`` mounts it in
Airflow's api-server under ``/instatag`` with a navigation entry. Every route requires a user
logged in to Airflow (the JWT in the ``Authorization`` header or the ``_token`` cookie, checked
by Airflow's own ``get_user`` dependency) who may see the Airflow UI.

Files are served only from two places, and never from a path given in the request:
thumbnails from the resized image store (looked up by image id in the database) and report
files from ``reports/<model_version_id>/`` (a plain file name; anything resolving elsewhere,
symlinks included, is refused).

Pages are small server-rendered HTML without external assets. The browser's queries run on the
``(model_version_id, label, probability)`` index of ``predictions``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse
from sqlalchemy import exists, func, select

from . import schema as t
from .settings import Settings, load_settings

PER_PAGE = 48
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


# --------------------------------------------------------------------------- queries
@dataclass(frozen=True)
class Card:
    image_id: int
    post: str
    tags: list[tuple[str, float]]


@dataclass(frozen=True)
class Page:
    model_version_id: int | None
    tag: str
    min_p: float
    page: int
    cards: list[Card]
    has_next: bool
    total: int | None  # matching images; counted only when filtering by tag (an index range)


def default_model(conn) -> int | None:
    """The champion, else the newest model version with predictions, else None."""
    champion = conn.execute(select(t.model_versions.c.id).where(t.model_versions.c.status == "champion")).scalar()
    if champion is not None:
        return int(champion)
    newest = conn.execute(select(func.max(t.predictions.c.model_version_id))).scalar()
    return None if newest is None else int(newest)


def model_labels(conn, model_version_id: int) -> list[tuple[str, int]]:
    """(label, images carrying it) of the model's vocabulary, alphabetical."""
    vocab = select(t.model_versions.c.vocab_version_id).where(t.model_versions.c.id == model_version_id)
    rows = conn.execute(
        select(t.vocab_labels.c.label, t.vocab_labels.c.count)
        .where(t.vocab_labels.c.vocab_version_id == vocab.scalar_subquery())
        .order_by(t.vocab_labels.c.label)
    )
    return [(r.label, r.count) for r in rows]


def browse_statement(model_version_id: int, tag: str, min_p: float, limit: int, offset: int):
    """Image ids of one page, newest first, or by probability of ``tag`` (highest first) when given."""
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
    newest = t.images.c.id.desc()
    return select(t.images.c.id.label("image_id")).where(scored).order_by(newest).limit(limit).offset(offset)


def count_statement(model_version_id: int, tag: str, min_p: float):
    p = t.predictions.c
    return select(func.count()).select_from(t.predictions).where(
        p.model_version_id == model_version_id, p.label == tag, p.probability >= min_p)


def browse(conn, model_version_id: int, tag: str = "", min_p: float = 0.0, page: int = 1,
           per_page: int = PER_PAGE) -> Page:
    """One page of the tag browser: images with all their predicted tags, most probable first."""
    offset = (page - 1) * per_page
    ids = [r.image_id for r in conn.execute(browse_statement(model_version_id, tag, min_p, per_page + 1, offset))]
    has_next, ids = len(ids) > per_page, ids[:per_page]
    tags: dict[int, list[tuple[str, float]]] = {i: [] for i in ids}
    posts: dict[int, str] = {}
    if ids:
        p = t.predictions.c
        rows = conn.execute(
            select(p.image_id, p.label, p.probability)
            .where(p.model_version_id == model_version_id, p.image_id.in_(ids))
            .order_by(p.image_id, p.rank)
        )
        for r in rows:
            tags[r.image_id].append((r.label, r.probability))
        posts = dict(conn.execute(select(t.images.c.id, t.images.c.post).where(t.images.c.id.in_(ids))).tuples().all())
    total = conn.execute(count_statement(model_version_id, tag, min_p)).scalar() if tag else None
    cards = [Card(i, posts.get(i, ""), tags[i]) for i in ids]
    return Page(model_version_id, tag, min_p, page, cards, has_next, total)


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
@functools.cache
def templates():
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("instatag", "templates"), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f}"
    env.filters["day"] = lambda v: "" if v is None else v.strftime("%Y-%m-%d %H:%M")
    return env


def _links(request: Request):
    root = request.scope.get("root_path", "").rstrip("/")

    def url(path: str, **params) -> str:
        query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
        return f"{root}{path}" + (f"?{query}" if query else "")

    return url


def _html(request: Request, template: str, **context) -> HTMLResponse:
    body = templates().get_template(template).render(url=_links(request), **context)
    return HTMLResponse(body, headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})


# --------------------------------------------------------------------------- the app
def create_app(settings: Settings | None = None) -> FastAPI:
    """The instatag pages as a FastAPI app; every route requires an Airflow user (``airflow_auth``)."""
    from . import db

    settings = settings or load_settings()
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
        return _html(request, "models.html", rows=rows, metric_names=MODEL_METRICS)

    @app.get("/models/{model_version_id}/report", name="report")
    def report(model_version_id: int):
        path = report_file(settings, model_version_id, "report.html")
        if path is None:
            raise HTTPException(404, f"model version {model_version_id} has no report yet: "
                                     f"run `instatag report {model_version_id}`")
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
        page: int = Query(1, ge=1, le=MAX_PAGE),
        model: int | None = Query(None, ge=1, description="model version (default: the champion)"),
        conn=Depends(connect),
    ):
        model = model or default_model(conn)
        labels = model_labels(conn, model) if model else []
        message = ""
        if model is None:
            message = "No predictions yet: train, evaluate and score a model first."
            result = None
        elif tag and tag not in {label for label, _ in labels}:
            message = f"“{tag}” is not a label of model version {model}."
            result = Page(model, tag, min_p, page, [], False, 0)
        else:
            result = browse(conn, model, tag, min_p, page)
        return _html(request, "browse.html", page=result, labels=labels, tag=tag, min_p=min_p, model=model,
                     message=message)

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

    return app

