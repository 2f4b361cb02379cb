"""``instatag report [MODEL_VERSION]``: a model version's figures and one self-contained HTML page.

``build_report(settings, model_version_id)`` writes ``reports/<id>/`` under the data dir: the PNG
figures (numbered as in the study) and ``report.html``, which embeds them as data URIs and needs
no other file, no network, no external CSS or JS. Sections:

- label distributions before and after lemmatizing and grouping (Figures 1-2, from the
  vocabulary version's ``stats``);
- RandomResizedCrop samples of one image under the model's preprocessing contract (``imageprep``, Figure 3);
- the first convolution's filters and its activations for one image (Figures 4-5);
- the lr_find curve with the suggestion marked (Figure 6), the per-epoch tables of the frozen and
  the unfrozen phase (Figures 7-8: the study printed fastai's tables there; here HTML tables) and
  the loss across both phases against images processed (Figure 9), from ``training_runs`` and
  ``training_epochs``;
- model against the popularity baseline, the top-k metrics under both rankings (probability and
  dominant_first, from the evaluation), and the per-label table (``label_metrics``) with a
  threshold slider: precision and recall of every label at thresholds 0.05..0.95, counted on the
  validation split, travel in the page as JSON and a few lines of JS pick the slider's column;
- example validation images with the tags scoring would write for them, in the model's ranking,
  those under their tuned threshold marked, and their uploader's tags.
- heatmaps (``instatag.explain``, Grad-CAM): for the ``N_HEATMAP_LABELS`` labels given to most
  validation images, the image the model is surest of among those given the label (its best) and
  the one it is surest of among those not given it (its worst: its most confident wrong call).

A part whose data is missing (no lr_find because the learning rate was given, a model not yet
evaluated, a model file gone) is replaced by a sentence saying why; the rest is still written.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .errors import UserError
from .files import write_atomic

log = logging.getLogger(__name__)

#: slider positions: thresholds 0.05, 0.10, ..., 0.95
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
N_EXAMPLES = 12
#: labels shown in the heatmaps section (those given to most validation images)
N_HEATMAP_LABELS = 4
N_CROPS = 8
N_CHANNELS = 32
#: at most this many validation images are run through the model for the slider and the examples
MAX_VALID = 10_000
FIGURES = {
    "fig1": "fig1_raw_hashtags.png",
    "fig2": "fig2_labels.png",
    "fig3": "fig3_random_resized_crop.png",
    "fig4": "fig4_conv1_filters.png",
    "fig5": "fig5_conv1_activations.png",
    "fig6": "fig6_lr_find.png",
    "fig9": "fig9_loss.png",
}


@dataclass
class Figure:
    key: str
    title: str
    png: bytes | None = None
    #: why there is no figure, or a caption under it
    note: str = ""

    @property
    def filename(self) -> str:
        return FIGURES[self.key]

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode() if self.png else ""


@dataclass
class Validation:
    labels: list[str]
    image_ids: list[int]
    paths: list[Path]
    truth: list[tuple[str, ...]]
    y_true: np.ndarray
    probs: np.ndarray | None = None
    n_total: int = 0
    ranks: np.ndarray | None = None  # the model's ranking scores (Predictor.rank_scores)


@dataclass
class EpochTable:
    """Figures 7-8: one training phase's epochs, as fastai prints them."""

    key: str
    title: str
    columns: list[str]  # the metric names, after epoch, train_loss, valid_loss
    rows: list[dict]  # epoch (from 1, across both phases), train_loss, valid_loss, metrics, images_seen, seconds
    note: str = ""


@dataclass
class Context:
    """Everything the template shows."""

    model: dict
    vocab: dict | None
    figures: dict[str, Figure] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    summary: list[tuple[str, float | None, float | None]] = field(default_factory=list)
    #: (metric, {ranking: value}) for the top-k metrics under each ranking
    by_ranking: list[tuple[str, dict]] = field(default_factory=list)
    #: the model's own ranking (instatag.ranking)
    ranking: str = "probability"
    epoch_tables: list[EpochTable] = field(default_factory=list)
    label_rows: list[dict] = field(default_factory=list)
    curves: dict | None = None
    examples: list[dict] = field(default_factory=list)
    heatmaps: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------- model choice
def resolve_model(conn, model_version_id: int | None = None) -> int:
    """The given version (checked), else the champion, else the newest version (``registry.resolve``)."""
    from . import registry

    if model_version_id is not None:
        return registry.resolve(conn, model_version_id)
    return registry.resolve(conn, "champion" if registry.champion_id(conn) is not None else "latest")


# --------------------------------------------------------------------------- data from the database
def _rows(conn, model_version_id: int) -> tuple[dict, dict | None, list[dict], list[dict], list[tuple[str, int]]]:
    """(model + run, vocabulary version, epochs, label_metrics rows, vocab labels with counts)."""
    from sqlalchemy import select

    from . import schema as t

    mv, tr = t.model_versions.c, t.training_runs.c
    model = conn.execute(
        select(t.model_versions, tr.lr_find, tr.device, tr.started_at, tr.finished_at,
               tr.params.label("run_params"))
        .select_from(t.model_versions.outerjoin(t.training_runs, tr.id == mv.training_run_id))
        .where(mv.id == model_version_id)).mappings().one()
    model = dict(model)
    vocab = conn.execute(select(t.vocab_versions).where(t.vocab_versions.c.id == model["vocab_version_id"])
                         ).mappings().first()
    epochs = [dict(r) for r in conn.execute(
        select(t.training_epochs).where(t.training_epochs.c.training_run_id == model["training_run_id"])
        .order_by(t.training_epochs.c.epoch)).mappings()] if model["training_run_id"] else []
    lm = t.label_metrics.c
    label_rows = [dict(r) for r in conn.execute(
        select(t.label_metrics).where(lm.model_version_id == model_version_id)
        .order_by(lm.support.desc(), lm.label)).mappings()]
    vl = t.vocab_labels.c
    vocab_labels = [(r.label, r.count) for r in conn.execute(
        select(vl.label, vl.count).where(vl.vocab_version_id == model["vocab_version_id"]).order_by(vl.idx))]
    return model, dict(vocab) if vocab else None, epochs, label_rows, vocab_labels


def _hashtags(conn, image_ids: list[int]) -> dict[int, list[str]]:
    """The uploaders' own hashtags of each image (all its posts; the scrape's search tags left out)."""
    from sqlalchemy import select

    from . import schema as t

    out: dict[int, list[str]] = {i: [] for i in image_ids}
    if not image_ids:
        return out
    rows = conn.execute(
        select(t.posts.c.image_id, t.post_hashtags.c.tag)
        .join(t.post_hashtags, t.post_hashtags.c.post_id == t.posts.c.id)
        .where(t.posts.c.image_id.in_(image_ids), t.post_hashtags.c.is_scrape_tag.is_(False))
        .order_by(t.posts.c.image_id, t.posts.c.id, t.post_hashtags.c.position))
    for image_id, tag in rows:
        if tag not in out[image_id]:
            out[image_id].append(tag)
    return out


def scrape_tags(conn) -> frozenset[str]:
    """The hashtags ingest recorded as the scrape's own search tags."""
    from sqlalchemy import select

    from . import schema as t

    ph = t.post_hashtags.c
    return frozenset(conn.execute(select(ph.tag).where(ph.is_scrape_tag.is_(True)).distinct()).scalars())


def validation_split(settings, model: dict) -> Validation:
    """The validation images of the model's vocabulary version (``evaluate.validation_set``), at most
    ``MAX_VALID`` of them, in image id order."""
    from . import evaluate

    _, labels, _, items, y_true = evaluate.validation_set(settings, model["id"])
    kept = items[:MAX_VALID]
    return Validation(labels, [it.image_id for it in kept], [Path(it.resized_path) for it in kept],
                      [tuple(it.labels) for it in kept], y_true[:MAX_VALID], n_total=len(items))


# --------------------------------------------------------------------------- figures
def label_figures(vocab: dict | None, vocab_labels: list[tuple[str, int]],
                  scrape: frozenset[str] = frozenset()) -> list[Figure]:
    """Figures 1-2 from the vocabulary version's frequency tables."""
    from . import plots
    from .rendering import plural

    f1 = Figure("fig1", "Hashtags before lemmatizing and grouping")
    f2 = Figure("fig2", "Labels after lemmatizing and grouping")
    stats = (vocab or {}).get("stats") or {}
    labels = stats.get("labels") or dict(vocab_labels)
    if stats.get("raw_tags"):
        f1.png = plots.raw_tag_distribution(stats["raw_tags"], stats.get("lemmas") or {}, labels, scrape)
        f1.note = (f"{plural(vocab['n_raw_tags'], 'distinct hashtag')} became {plural(vocab['n_lemmas'], 'lemma')} "
                   f"(WordNet) and {plural(vocab['n_labels'], 'label')} (the grouping file, rare labels dropped).")
    else:
        f1.note = "The vocabulary version stores no hashtag frequency table."
    if labels:
        f2.png = plots.label_distribution(labels, stats.get("train_counts"), stats.get("valid_counts"))
        rare = stats.get("dropped_rare") or {}
        f2.note = (f"{plural(len(labels), 'label')}; {plural(len(rare), 'candidate label')} on too few images "
                   f"{'was' if len(rare) == 1 else 'were'} dropped." if rare else f"{plural(len(labels), 'label')}.")
    else:
        f2.note = "The vocabulary version has no label."
    return [f1, f2]


def crop_figure(path: Path, prep, seed: int = 0) -> Figure:
    """Figure 3: training crops of one image of the resized store under the model's preprocessing contract
    (``imageprep.Preprocessing``, as model.json records it): the boxes both data paths draw from."""
    from . import imageprep, plots

    img = np.asarray(imageprep.open_rgb(path))
    crops = prep.sample_crops(img, N_CROPS, seed)
    lo, hi = prep.ratio
    fig = Figure("fig3", "RandomResizedCrop samples of one image")
    fig.png = plots.crop_samples(img, list(crops), prep.size, prep.min_scale)
    fig.note = (f"Each training epoch sees a different crop of the whole image: {prep.min_scale:.0%} to "
                f"{prep.max_scale:.0%} of its area, width/height {lo:.2f} to {hi:.2f}, resized to "
                f"{prep.size}×{prep.size}; flips, rotation (up to {prep.max_rotate:g}°) and lighting come on top. "
                "Both training data paths (files on the CPU, memory on the GPU) draw crops from this distribution.")
    return fig


def first_conv(net):
    """(name, module) of the first Conv2d in the network."""
    import torch

    for name, module in net.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            return name, module
    raise UserError("the network has no Conv2d layer")


def conv_figures(predictor, path: Path) -> list[Figure]:
    """Figures 4-5: the first convolution's filters, and its activations for one preprocessed image."""
    import torch

    from . import plots
    name, conv = first_conv(predictor.net)
    weight = conv.weight.detach().float().cpu().numpy()
    title = "conv1"
    f4 = Figure("fig4", "The first layer's filters", plots.conv_filters(weight, title),
                f"The {weight.shape[0]} filters of the network's first convolution (module {name}), each scaled to its "
                "own range: what the first layer looks for in the pixels.")
    array = predictor.prep.load_array(path)
    x = predictor.inputs(torch.from_numpy(array.copy()).permute(2, 0, 1)[None])
    captured = {}
    hook = conv.register_forward_hook(lambda _m, _i, out: captured.setdefault("out", out.detach().float().cpu()))
    try:
        with torch.inference_mode():
            predictor.net(x)
    finally:
        hook.remove()
    maps = captured["out"][0].numpy()
    f5 = Figure("fig5", "The first layer's activations", plots.activation_maps(array, maps, title, N_CHANNELS),
                f"The image as the model sees it ({predictor.size}×{predictor.size} centre crop) and "
                f"{_channels(len(maps))} the first convolution makes of it, each scaled to its own range.")
    return [f4, f5]


def _channels(n: int) -> str:
    return f"all {n} channels" if n <= N_CHANNELS else f"the first {N_CHANNELS} of the {n} channels"


def lr_find_figure(model: dict) -> Figure:
    from . import plots

    fig = Figure("fig6", "Learning rate finder")
    curve = model.get("lr_find") or {}
    params = model.get("params") or {}
    if curve.get("lrs") and curve.get("losses"):
        fig.png = plots.lr_find(curve["lrs"], curve["losses"], curve.get("suggested"))
        fig.note = (f"fastai's lr_find over {len(curve['lrs'])} mini-batches; the {curve.get('method', 'valley')} "
                    f"suggestion {curve.get('suggested', 0):.2e} became the base learning rate.")
    else:
        lr = params.get("base_lr", params.get("lr"))
        fig.note = (f"This run did not use lr_find: the learning rate was given explicitly ({lr})."
                    if lr not in (None, "auto") else "This run recorded no lr_find curve.")
    return fig


def epoch_tables(epochs: list[dict]) -> list[EpochTable]:
    """Figures 7-8: the epochs of the frozen phase, then of the unfrozen one (``training_epochs``);
    a phase the run did not have gets a note instead of rows."""
    names = {"frozen": "Epochs with the pretrained body frozen", "unfrozen": "Epochs with every layer training"}
    out = []
    for key, phase in (("fig7", "frozen"), ("fig8", "unfrozen")):
        rows = [e for e in epochs if e.get("phase") == phase]
        columns = sorted({name for e in rows for name in (e.get("metrics") or {})})
        table = EpochTable(key, names[phase], columns, [
            {"epoch": e["epoch"] + 1, "train_loss": e.get("train_loss"), "valid_loss": e.get("valid_loss"),
             "metrics": e.get("metrics") or {}, "images_seen": e.get("images_seen"), "seconds": e.get("seconds")}
            for e in rows])
        if not rows:
            table.note = f"This run had no {phase} epoch." if epochs else "This run recorded no epochs."
        out.append(table)
    return out


def loss_figure(epochs: list[dict]) -> Figure:
    from . import plots

    fig = Figure("fig9", "Loss across both phases")
    usable = [e for e in epochs if e.get("images_seen") is not None]
    if usable:
        fig.png = plots.loss_curves(usable)
        frozen = sum(e["phase"] == "frozen" for e in usable)
        unfrozen = len(usable) - frozen
        fig.note = (f"{frozen} epoch{'s' * (frozen != 1)} with the pretrained body frozen, then {unfrozen} with every "
                    f"layer training; {usable[-1]['images_seen']:,} training images processed in all.")
    else:
        fig.note = "This run recorded no epochs."
    return fig


# --------------------------------------------------------------------------- metrics, slider, examples
SUMMARY_METRICS = ("dominant_recall@1", "dominant_recall@2", "map", "micro_f1", "macro_f1",
                   "precision@1", "recall@1", "precision@2", "recall@2")


def summary_rows(metrics: dict | None) -> list[tuple[str, float | None, float | None]]:
    if not metrics or "model" not in metrics:
        return []
    return [(k, metrics["model"].get(k), (metrics.get("baseline") or {}).get(k)) for k in SUMMARY_METRICS]


def ranking_rows(metrics: dict | None) -> list[tuple[str, dict]]:
    """(metric, {ranking: value}) of the top-k metrics under both rankings (``model_by_ranking`` of
    the evaluation); empty for a model evaluated before it was stored."""
    from .metrics import RANKED_METRICS

    by = (metrics or {}).get("model_by_ranking") or {}
    return [(k, {name: values.get(k) for name, values in by.items()}) for k in RANKED_METRICS] if by else []


def threshold_curves(y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """Per label, true positives, false positives and false negatives at every slider threshold."""
    from . import metrics

    out = {label: {"tp": [], "fp": [], "fn": []} for label in labels}
    for th in THRESHOLDS:
        tp, fp, fn = metrics.label_counts(y_true, probs, th)
        for j, label in enumerate(labels):
            out[label]["tp"].append(int(tp[j]))
            out[label]["fp"].append(int(fp[j]))
            out[label]["fn"].append(int(fn[j]))
    return {"thresholds": list(THRESHOLDS), "labels": out}


def computed_label_rows(v: Validation, counts, thresholds) -> list[dict]:
    """The per-label table computed here, for a model not yet evaluated."""
    from . import metrics

    res = metrics.evaluate_predictions(v.y_true, v.probs, v.labels, counts, thresholds)
    rows = [{"label": label, **r} for label, r in res["per_label"].items()]
    return sorted(rows, key=lambda r: (-r["support"], r["label"]))


def examples(conn, v: Validation, thresholds, n: int = N_EXAMPLES) -> list[dict]:
    """``n`` validation images spread over the split, with predicted tags (as scoring writes them:
    every label at or over its threshold, at least the two first-ranked, in the model's ranking) and
    the uploader's labels and hashtags. Each predicted tag is a dict: label, p, given (by the
    uploader), threshold (the label's tuned one) and over (``p >= threshold``)."""
    from .predict import tags_for_scoring

    if not v.image_ids:
        return []
    picks = sorted({int(i) for i in np.linspace(0, len(v.image_ids) - 1, min(n, len(v.image_ids)))})
    predicted = tags_for_scoring(v.probs[picks], v.labels, thresholds,
                                 ranks=None if v.ranks is None else v.ranks[picks])
    hashtags = _hashtags(conn, [v.image_ids[i] for i in picks])
    row = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(v.labels),))
    cut = dict(zip(v.labels, row.tolist(), strict=True))
    out = []
    for i, tags in zip(picks, predicted, strict=True):
        truth = set(v.truth[i])
        out.append({
            "image_id": v.image_ids[i],
            "src": "data:image/jpeg;base64," + base64.b64encode(v.paths[i].read_bytes()).decode(),
            "predicted": [{"label": label, "p": p, "given": label in truth, "threshold": cut[label],
                           "over": p >= cut[label]} for label, p in tags],
            "truth": sorted(truth),
            "hashtags": hashtags.get(v.image_ids[i], []),
        })
    return out


def heatmaps(predictor, v: Validation, n_labels: int = N_HEATMAP_LABELS) -> list[dict]:
    """For the ``n_labels`` labels given to most validation images (ties: label order), the best and worst
    validation image with their Grad-CAM heatmaps: best, the highest-probability image among those given
    the label; worst, the highest-probability image among those not given it (the model's most confident
    wrong call). Each entry: label, support (images given it) and ``cases``, a list of dicts with kind
    ("best" / "worst"), image_id, p, crop and heatmap (PNG data URIs of the model's input crop and the
    overlay). A label every image has, or none has, lacks the missing case."""
    from PIL import Image

    from . import explain

    if v.probs is None or not v.image_ids:
        return []
    support = v.y_true.sum(axis=0)
    order = sorted((j for j in range(len(v.labels)) if support[j] > 0), key=lambda j: (-support[j], j))
    out = []
    for j in order[:n_labels]:
        cases = []
        for kind, mask in (("best", v.y_true[:, j] > 0), ("worst", v.y_true[:, j] == 0)):
            if not mask.any():
                continue
            i = int(np.flatnonzero(mask)[np.argmax(v.probs[mask, j])])
            with Image.open(v.paths[i]) as img:
                heat = explain.explain(predictor, img, v.labels[j])
            cases.append({"kind": kind, "image_id": v.image_ids[i], "p": heat.probability,
                          "crop": _png_uri(heat.crop), "heatmap": "data:image/png;base64,"
                          + base64.b64encode(heat.png()).decode()})
        out.append({"label": v.labels[j], "support": int(support[j]), "cases": cases})
    return out


def _png_uri(array: np.ndarray) -> str:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# --------------------------------------------------------------------------- the report
def build_report(settings, model_version_id: int | None = None) -> Path:
    """Write ``reports/<id>/`` (PNGs and the self-contained ``report.html``) for a model version
    (default: the champion, else the newest); returns the path of ``report.html``."""
    from . import archs, db, imageprep, registry

    engine = db.get_engine(settings)
    with engine.connect() as conn:
        mid = resolve_model(conn, model_version_id)
        model, vocab, epochs, label_rows, vocab_labels = _rows(conn, mid)
        scrape = scrape_tags(conn)
    ctx = Context(model=model, vocab=vocab)
    figures = label_figures(vocab, vocab_labels, scrape)
    params = model.get("params") or {}
    mean, std = archs.stats(model["arch"])  # the model file's contract replaces this when it loads
    prep = imageprep.Preprocessing.from_meta({"size": int(params.get("size") or 64), "params": params,
                                              "mean": mean, "std": std})

    valid = None
    try:
        valid = validation_split(settings, model)
    except UserError as exc:
        ctx.notes["valid"] = str(exc)
    predictor = None
    try:
        from .inference import Predictor

        predictor = Predictor.for_version(settings, mid)
        prep = predictor.prep
    except (UserError, FileNotFoundError, OSError) as exc:
        ctx.notes["model"] = f"The model file could not be loaded: {exc}"

    image = valid.paths[0] if valid and valid.paths else None
    if image is not None:
        figures.append(crop_figure(image, prep))
    else:
        figures.append(Figure("fig3", "RandomResizedCrop samples of one image", note="No validation image to show."))
    if predictor is not None and image is not None:
        figures += conv_figures(predictor, image)
    else:
        why = ctx.notes.get("model") or "No validation image to show."
        figures += [Figure("fig4", "The first layer's filters", note=why),
                    Figure("fig5", "The first layer's activations", note=why)]
    figures += [lr_find_figure(model), loss_figure(epochs)]
    ctx.figures = {f.key: f for f in figures}
    ctx.epoch_tables = epoch_tables(epochs)
    ctx.summary = summary_rows(model.get("metrics"))
    ctx.by_ranking = ranking_rows(model.get("metrics"))
    ctx.ranking = ((model.get("metrics") or {}).get("ranking") or (model.get("params") or {}).get("ranking")
                   or "probability")

    if predictor is not None and valid is not None and valid.image_ids:
        if list(predictor.labels) != valid.labels:
            ctx.notes["model"] = "The model file's labels differ from its vocabulary version's."
        else:
            valid.probs = predictor.predict_paths(valid.paths)
            valid.ranks = predictor.rank_scores(valid.probs)
            ctx.ranking = predictor.ranking
            with engine.connect() as conn:
                thresholds = registry.threshold_row(conn, mid, valid.labels)
            if thresholds is None:
                thresholds = np.full(len(valid.labels), 0.5)
                ctx.notes["thresholds"] = "The model is not evaluated yet: predictions use the threshold 0.5."
            ctx.curves = threshold_curves(valid.y_true, valid.probs, valid.labels)
            if not label_rows:
                counts = [((vocab or {}).get("stats") or {}).get("train_counts", {}).get(lb, 0) for lb in valid.labels]
                label_rows = computed_label_rows(valid, counts, thresholds)
                ctx.notes["labels"] = ("The model is not evaluated yet (run `instatag evaluate`): the table is "
                                       "computed here, on the same validation split.")
            with engine.connect() as conn:
                ctx.examples = examples(conn, valid, thresholds)
            ctx.heatmaps = heatmaps(predictor, valid)
    ctx.label_rows = label_rows
    return write(settings, mid, ctx, valid)


def write(settings, model_version_id: int, ctx: Context, valid: Validation | None) -> Path:
    """The PNGs (stale ones of figures missing now removed) and report.html, written atomically."""
    from .rendering import templates

    folder = settings.reports_dir / str(model_version_id)
    folder.mkdir(parents=True, exist_ok=True)
    for fig in ctx.figures.values():
        path = folder / fig.filename
        if fig.png:
            write_atomic(path, fig.png)
        else:
            path.unlink(missing_ok=True)
    curves = json.dumps(ctx.curves or {}, separators=(",", ":")).replace("<", "\\u003c")
    body = templates().get_template("report.html").render(
        ctx=ctx, model=ctx.model, vocab=ctx.vocab, figures=ctx.figures, curves_json=curves,
        valid=valid, generated=datetime.now(UTC), thresholds=THRESHOLDS, version=_version(),
        default_index=THRESHOLDS.index(0.5))
    out = folder / "report.html"
    write_atomic(out, body.encode())
    log.info("report of model version %d: %s", model_version_id, out)
    return out


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("instatag")
    except PackageNotFoundError:
        return "dev"


# --------------------------------------------------------------------------- CLI
def _report_cmd(args, settings) -> int:
    print(build_report(settings, args.model_version))
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser(
        "report",
        help="write a model version's plots and self-contained HTML report",
        description="Write reports/<MODEL_VERSION>/ under the data dir: the study's figures as PNG files and "
        "report.html, which embeds them (open it in any browser, offline): label distributions, augmentation, "
        "first-layer filters and activations, lr_find, loss curves, per-label metrics against the popularity "
        "baseline with a threshold slider, and example images. Prints the path of report.html.",
    )
    p.add_argument("model_version", nargs="?", type=int, metavar="MODEL_VERSION",
                   help="model version id (default: the champion, else the newest)")
    p.set_defaults(handler=_report_cmd)
