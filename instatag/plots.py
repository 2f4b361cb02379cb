"""The report's figures, numbered as in the study; each function returns PNG bytes.

Only data goes in (frequency tables, arrays, rows): gathering it is ``report.py``'s job. matplotlib
is used through its object API with the Agg canvas (no pyplot, no global state, no display), so
figures can be drawn in Airflow workers and threads.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

DPI = 110
BLUE, ORANGE, GREEN, RED, GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#7f7f7f"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def _barh(ax, names: Sequence[str], values: Sequence[int], color, label: str | None = None, left=None):
    y = np.arange(len(names))
    bars = ax.barh(y, values, color=color, label=label, left=left, height=0.75)
    ax.set_yticks(y, names, fontsize=8)
    if not ax.yaxis_inverted():
        ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return bars


def _top(table: Mapping[str, int], n: int) -> tuple[list[str], list[int]]:
    items = sorted(table.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return [f"#{k}" if not k.startswith("#") else k for k, _ in items], [v for _, v in items]


# --------------------------------------------------------------------------- Figures 1-2
def raw_tag_distribution(raw: Mapping[str, int], lemmas: Mapping[str, int], labels: Mapping[str, int],
                         scrape: frozenset[str] = frozenset(), top: int = 25) -> bytes:
    """Figure 1: the most frequent raw hashtags (the scrape's search tags in grey), and the long tail
    before and after grouping."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    fig = _figure(10, max(4.2, 0.2 * min(top, len(raw)) + 1.2))
    ax, tail = fig.subplots(1, 2, width_ratios=[1.15, 1])
    names, values = _top(raw, top)
    _barh(ax, names, values, [GREY if n.lstrip("#") in scrape else BLUE for n in names])
    if scrape & {n.lstrip("#") for n in names}:
        ax.legend(handles=[Patch(color=BLUE, label="uploaders' hashtags"),
                           Patch(color=GREY, label="the scrape's search tags (never labels)")],
                  fontsize=8, loc="lower right")
    ax.set_xlabel("images")
    ax.set_title(f"Top {len(names)} of {len(raw):,} distinct raw hashtags", fontsize=10)
    for table, name, color in ((raw, "raw hashtags", BLUE), (lemmas, "lemmas", ORANGE), (labels, "labels", GREEN)):
        counts = sorted(table.values(), reverse=True)
        if counts:
            tail.plot(np.arange(1, len(counts) + 1), counts, color=color, lw=2, label=f"{name} ({len(counts):,})")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    tail.set_xscale("log")
    tail.set_yscale("log")
    tail.xaxis.set_major_formatter(plain)
    tail.yaxis.set_major_formatter(plain)
    tail.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "25" else ""))
    tail.set_xlabel("rank")
    tail.set_ylabel("images")
    tail.set_title("Rank against frequency (the long tail)", fontsize=10)
    tail.grid(alpha=0.3, which="both")
    tail.legend(fontsize=8)
    fig.suptitle("Figure 1. Hashtags before lemmatizing and grouping", fontsize=11, fontweight="bold")
    return _png(fig)


def label_distribution(labels: Mapping[str, int], train: Mapping[str, int] | None = None,
                       valid: Mapping[str, int] | None = None, top: int = 40) -> bytes:
    """Figure 2: images per label after lemmatizing and grouping (train and validation stacked)."""
    names, values = _top(labels, top)
    keys = [n.lstrip("#") for n in names]
    fig = _figure(8, max(3.0, 0.22 * len(names) + 1.2))
    ax = fig.subplots()
    if train and valid:
        tr = [train.get(k, 0) for k in keys]
        _barh(ax, keys, tr, BLUE, "train")
        _barh(ax, keys, [valid.get(k, 0) for k in keys], ORANGE, "validation", left=tr)
        ax.legend(fontsize=8, loc="lower right", frameon=True)
    else:
        _barh(ax, keys, values, GREEN)
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:,}", va="center", fontsize=7, color="#333")
    ax.set_xlim(0, max(values, default=1) * 1.12)
    ax.set_xlabel("images")
    shown = f"top {len(names)} of {len(labels)}" if len(labels) > len(names) else f"all {len(labels)}"
    ax.set_title(f"Figure 2. Labels after lemmatizing and grouping ({shown})", fontsize=11, fontweight="bold")
    return _png(fig)


# --------------------------------------------------------------------------- Figure 3
def crop_samples(original: np.ndarray, crops: Sequence[np.ndarray], size: int, min_scale: float) -> bytes:
    """Figure 3: one image and RandomResizedCrop samples of it, as the training loader sees them."""
    n = len(crops) + 1
    cols = min(n, 5)
    rows = math.ceil(n / cols)
    fig = _figure(2.0 * cols, 2.15 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    axes[0].imshow(original)
    axes[0].set_title(f"resized store {original.shape[1]}×{original.shape[0]}", fontsize=8)
    for i, (ax, crop) in enumerate(zip(axes[1:], crops, strict=False), 1):
        ax.imshow(crop, interpolation="nearest")
        ax.set_title(f"sample {i}", fontsize=8)
    fig.suptitle(f"Figure 3. RandomResizedCrop({size}, min_scale={min_scale:g}) samples of one image",
                 fontsize=11, fontweight="bold")
    return _png(fig)


# --------------------------------------------------------------------------- Figures 4-5
def _mosaic(tiles: np.ndarray, cols: int, pad: int = 1, fill: float = 1.0) -> np.ndarray:
    """``tiles`` [n, h, w, c] laid out ``cols`` to a row with ``pad`` pixels of ``fill`` between them."""
    n, h, w, c = tiles.shape
    rows = math.ceil(n / cols)
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), fill, dtype=np.float32)
    for i, tile in enumerate(tiles):
        r, k = divmod(i, cols)
        out[r * (h + pad):r * (h + pad) + h, k * (w + pad):k * (w + pad) + w] = tile
    return out


def _unit(x: np.ndarray, axes) -> np.ndarray:
    """Each item scaled to [0, 1] over ``axes``."""
    lo, hi = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
    return (x - lo) / (hi - lo + 1e-8)


def conv_filters(weight: np.ndarray, title: str = "conv1") -> bytes:
    """Figure 4: the first convolution's filters, each scaled to its own range (RGB when 3 inputs)."""
    w = np.asarray(weight, dtype=np.float32)
    out, inp, kh, kw = w.shape
    tiles = _unit(w, (1, 2, 3)).transpose(0, 2, 3, 1)
    if inp != 3:
        tiles = np.repeat(tiles.mean(axis=3, keepdims=True), 3, axis=3)
    cols = math.ceil(math.sqrt(out))
    mosaic = _mosaic(tiles, cols, pad=1)
    width = min(6.0, max(3.2, 0.09 * mosaic.shape[1]))  # small kernels make a small figure
    fig = _figure(width, width * mosaic.shape[0] / mosaic.shape[1] + 0.5)
    ax = fig.subplots()
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    fig.suptitle(f"Figure 4. {title} filters\n({out} × {inp} × {kh} × {kw})", fontsize=11, fontweight="bold")
    return _png(fig)


def activation_maps(image: np.ndarray, maps: np.ndarray, title: str = "conv1", n: int = 32) -> bytes:
    """Figure 5: one preprocessed image and the first ``n`` channels the first convolution makes of it,
    each channel scaled to its own range (viridis: dark low, yellow high)."""
    from matplotlib import colormaps

    maps = np.asarray(maps, dtype=np.float32)[:n]
    k, h, w = maps.shape
    cols = 8
    tiles = colormaps["viridis"](_unit(maps, (1, 2)))[..., :3]
    pad = max(1, h // 12)
    grid = _mosaic(tiles, cols, pad=pad)
    ratio = grid.shape[1] / grid.shape[0]
    side = min(3.4, 10.5 / (1 + ratio))
    fig = _figure(side * (1 + ratio) + 0.4, side + 0.7)
    left, right = fig.subplots(1, 2, width_ratios=[1, ratio])
    left.imshow(image)
    left.set_title(f"input {image.shape[1]}×{image.shape[0]}", fontsize=9)
    left.axis("off")
    right.imshow(grid, interpolation="nearest")
    for i in range(k):
        r, c = divmod(i, cols)
        right.text(c * (w + pad) + 1, r * (h + pad) + 1, str(i), color="white", fontsize=7, va="top",
                   bbox={"facecolor": "black", "alpha": 0.45, "pad": 0.8, "edgecolor": "none"})
    right.set_title(f"channels 0–{k - 1}", fontsize=9)
    right.axis("off")
    fig.suptitle(f"Figure 5. {title} activations of one image", fontsize=11, fontweight="bold")
    return _png(fig)


# --------------------------------------------------------------------------- Figure 6
def lr_find(lrs: Sequence[float], losses: Sequence[float], suggested: float | None, skip_end: int = 5) -> bytes:
    """Figure 6: loss against learning rate (log scale) with the suggestion marked; the last
    ``skip_end`` points, where the loss diverges, are left out as fastai does."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    if len(lrs) > 3 * skip_end:
        lrs, losses = lrs[:-skip_end], losses[:-skip_end]
    fig = _figure(7, 4)
    ax = fig.subplots()
    ax.plot(lrs, losses, color=BLUE, lw=2)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3, which="both")
    if suggested:
        y = float(np.interp(np.log(suggested), np.log(lrs), losses))
        ax.axvline(suggested, color=RED, ls="--", lw=1)
        ax.plot([suggested], [y], "o", color=RED, ms=8, label=f"suggested {suggested:.2e}")
        ax.legend()
    ax.set_title("Figure 6. Learning rate finder", fontsize=11, fontweight="bold")
    return _png(fig)


# --------------------------------------------------------------------------- Figure 9
def loss_curves(epochs: Sequence[Mapping]) -> bytes:
    """Figure 9: train and valid loss against images processed, across the frozen and unfrozen phases.

    ``epochs``: rows with ``images_seen`` (cumulative), ``phase``, ``train_loss``, ``valid_loss``."""
    rows = sorted(epochs, key=lambda r: r["images_seen"])
    x = np.array([r["images_seen"] for r in rows], dtype=float)
    fig = _figure(8, 4.2)
    ax = fig.subplots()
    start = 0.0
    for phase, color in (("frozen", "#e8eef7"), ("unfrozen", "#eef7ea")):
        xs = [r["images_seen"] for r in rows if r["phase"] == phase]
        if xs:
            ax.axvspan(start, max(xs), color=color, zorder=0)
            label = f"{phase} ({len(xs)} epoch{'s' if len(xs) > 1 else ''})"
            ax.text((start + max(xs)) / 2, 1.0, label, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=8, color="#444")
            start = max(xs)
    for key, name, color in (("train_loss", "train loss", BLUE), ("valid_loss", "valid loss", ORANGE)):
        y = np.array([np.nan if r[key] is None else r[key] for r in rows], dtype=float)
        ax.plot(x, y, "-o", color=color, lw=2, ms=3, label=name)
    ax.set_xlim(0, x.max() if len(x) else 1)
    ax.set_xlabel("images processed")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Figure 9. Loss across both training phases", fontsize=11, fontweight="bold", pad=16)
    return _png(fig)


# --------------------------------------------------------------------------- Drops (instatag.drops)
def _drop_axis(ax, rows: Sequence[Mapping]) -> np.ndarray:
    """x positions of the graded drops, labelled with their id and day."""
    x = np.arange(len(rows))
    ax.set_xticks(x, [f"{r['id']}\n{r['started_at']:%m-%d}" for r in rows], fontsize=7)
    ax.set_xlabel("drop (ingest run) and day")
    ax.grid(alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return x


def _nothing(fig, ax, text: str) -> bytes:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color=GREY)
    ax.set_axis_off()
    return _png(fig)


def drop_quality(rows: Sequence[Mapping]) -> bytes:
    """The champion on each drop's fresh labels: dominant_recall@2 and mAP per drop (one line per model)
    beside its validation figure (dashed) and the popularity baseline (grey). ``rows``:
    ``drops.drop_rows``; drops not graded are left out."""
    rows = [r for r in rows if r.get("model_version_id") is not None]
    fig = _figure(9, 3.8)
    if not rows:
        return _nothing(fig, fig.subplots(), "no graded drop yet")
    axes = fig.subplots(1, 2, sharex=True)
    colors = [BLUE, ORANGE, GREEN, RED, "#9467bd", "#8c564b"]
    for ax, key, title in ((axes[0], "dominant_recall_2", "dominant_recall@2"), (axes[1], "map", "mAP")):
        x = _drop_axis(ax, rows)
        for k, model in enumerate(sorted({r["model_version_id"] for r in rows})):
            mine = np.array([r["model_version_id"] == model for r in rows])
            color = colors[k % len(colors)]
            fresh = np.array([np.nan if r[key] is None else r[key] for r in rows], dtype=float)
            ax.plot(x[mine], fresh[mine], "-o", color=color, lw=2, ms=4, label=f"model {model}, fresh labels")
            valid = [r[f"valid_{key}"] for r in rows
                     if r["model_version_id"] == model and r[f"valid_{key}"] is not None]
            if valid:
                ax.hlines(valid[0], x[mine].min() - 0.3, x[mine].max() + 0.3, colors=color, linestyles="--", lw=1,
                          label=f"model {model}, validation")
            flagged = mine & np.array([bool(r["flagged"]) for r in rows])
            ax.plot(x[flagged], fresh[flagged], "o", mfc="none", mec=RED, ms=10, mew=1.5)
        if key == "dominant_recall_2":
            base = np.array([np.nan if r["baseline_dominant_recall_2"] is None else r["baseline_dominant_recall_2"]
                             for r in rows], dtype=float)
            ax.plot(x, base, "-", color=GREY, lw=1, label="popularity baseline")
        ax.set_ylim(0, 1)
        ax.set_title(f"{title} on each drop's fresh labels", fontsize=10)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("The champion on every new drop (red rings: drops flagged)", fontsize=11, fontweight="bold")
    return _png(fig)


#: (figure name, title) of the drift panels, as instatag.drift names them
DRIFT_PANELS = (("tag_mix", "tag mix (PSI)"), ("new_tags", "fastest new tag (share rise)"),
                ("top1_labels", "top-1 labels (PSI)"), ("max_probability", "max probability (KS D)"),
                ("no_label", "no label over threshold (share rise)"), ("image_size", "image size (KS D)"),
                ("brightness", "brightness (KS D)"), ("quality", "dominant_recall@2 fall"))


def drop_drift(rows: Sequence[Mapping]) -> bytes:
    """Each drift figure per drop with its threshold (dashed); flagged drops in red; hollow markers for
    figures on fewer photos than the drift tests need (``untested``, set by ``drops.drop_rows``: never
    flagged, whatever their size). ``rows``: ``drops.drop_rows`` (their ``figures``)."""
    rows = [r for r in rows if r.get("model_version_id") is not None]
    fig = _figure(11, 5.6)
    if not rows:
        return _nothing(fig, fig.subplots(), "no graded drop yet")
    axes = fig.subplots(2, 4, sharex=True).ravel()
    for ax, (name, title) in zip(axes, DRIFT_PANELS, strict=True):
        x = _drop_axis(ax, rows)
        figs = [r["figures"].get(name) or {} for r in rows]
        y = np.array([np.nan if f.get("value") is None else f["value"] for f in figs], dtype=float)
        flagged = np.array([bool(f.get("flagged")) for f in figs])
        small = np.array([bool(f.get("untested")) for f in figs])
        ax.plot(x, y, "-", color=BLUE, lw=1.5)
        ax.plot(x[~small], y[~small], "o", color=BLUE, ms=3)
        ax.plot(x[small], y[small], "o", mfc="white", mec=GREY, ms=6, mew=1.2)
        ax.plot(x[flagged], y[flagged], "o", color=RED, ms=6)
        thresholds = [f["threshold"] for f in figs if f.get("threshold") is not None]
        if thresholds:
            ax.axhline(thresholds[-1], color=RED, ls="--", lw=1)
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        if ax not in axes[4:]:
            ax.set_xlabel("")
    fig.suptitle("Drift of every drop against the champion's data (dashed: threshold; red: flagged; hollow: too "
                 "few photos to test)", fontsize=11, fontweight="bold")
    return _png(fig)
