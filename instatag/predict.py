"""Turning probabilities into tags, and ``instatag predict FILE...`` for ad-hoc photos.

``predict_tags`` is the study's ``my_predict_func``: the ``request_number`` first-ranked labels of
each image, optionally only those at or over their threshold. ``tags_for_scoring`` is what batch
scoring writes, and what ``instatag predict`` prints: every label at or over its threshold, and at
least ``request_number`` labels.
Both list labels in the model's ranking (``ranks``, from ``Predictor.rank_scores``; without it, and
for every model trained with the default ``ranking``: most probable first, see ``instatag.ranking``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import UserError

Tags = list[tuple[str, float]]


def _thresholds_row(thresholds, n_labels: int) -> np.ndarray:
    t = np.asarray(thresholds, dtype=np.float64)
    row = np.full(n_labels, float(t)) if t.ndim == 0 else t
    if row.shape != (n_labels,):
        raise ValueError(f"{row.shape[0]} thresholds for {n_labels} labels")
    return row


def _ranked(probs, ranks=None) -> tuple[np.ndarray, np.ndarray]:
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    r = p if ranks is None else np.atleast_2d(np.asarray(ranks, dtype=np.float64))
    if r.shape != p.shape:
        raise ValueError(f"ranks {r.shape} and probs {p.shape} differ in shape")
    return p, np.argsort(-r, axis=1, kind="stable")


def predict_tags(probs, labels: Sequence[str], request_number: int = 2, thresholds=None, ranks=None) -> list[Tags]:
    """Per image, the ``request_number`` first-ranked (label, probability) pairs, first-ranked first
    (ties by output order); with ``thresholds`` (one per label, or one for all) only those whose
    probability is at least their threshold."""
    if request_number < 1:
        raise UserError(f"request number must be at least 1, not {request_number}")
    p, order = _ranked(probs, ranks)
    t = None if thresholds is None else _thresholds_row(thresholds, p.shape[1])
    out = []
    for row, idx in zip(p, order[:, :request_number], strict=True):
        out.append([(labels[j], float(row[j])) for j in idx if t is None or row[j] >= t[j]])
    return out


def tags_for_scoring(probs, labels: Sequence[str], thresholds, request_number: int = 2, ranks=None) -> list[Tags]:
    """Per image, every label whose probability is at least its threshold, and at least the
    ``request_number`` first-ranked ones; in ranking order (the list position is the rank)."""
    if request_number < 1:
        raise UserError(f"request number must be at least 1, not {request_number}")
    p, order = _ranked(probs, ranks)
    keep = p >= _thresholds_row(thresholds, p.shape[1])
    np.put_along_axis(keep, order[:, :request_number], True, axis=1)
    return [[(labels[j], float(row[j])) for j in idx if k[j]] for row, idx, k in zip(p, order, keep, strict=True)]


# --------------------------------------------------------------------------- CLI
def load_image(path: Path, side: int = 160, max_pixels: int = 40_000_000):
    """An ad-hoc photo turned into what ingest stores as its resized copy: upright (EXIF orientation),
    RGB, longest side at most ``side``, through the same JPEG encoding; so it gets the tags it would get
    after ingest and scoring."""
    import io

    from PIL import Image

    from . import imagestore

    try:
        data = Path(path).read_bytes()
        im = imagestore._open(data, max_pixels)
        buf = io.BytesIO()
        imagestore.resize(im, side).save(buf, "JPEG", quality=imagestore.RESIZED_QUALITY)
        return Image.open(buf).convert("RGB")
    except (FileNotFoundError, IsADirectoryError):
        raise UserError(f"{path}: no such file") from None
    except imagestore.Rejected as exc:
        raise UserError(f"{path}: not a usable image ({exc})") from None


def predict_files(settings, files: Sequence[Path], model: str | int = "champion", request_number: int = 2,
                  use_thresholds: bool = True, problems: dict[Path, str] | None = None
                  ) -> tuple[int, list[Tags | None]]:
    """(model version id, tags per file) for ad-hoc image files; writes nothing to the database.

    The tags are those ``instatag score`` writes for the same model (``tags_for_scoring``: every
    label at or over its threshold, and at least ``request_number``); with ``use_thresholds=False``
    (or a model without thresholds) the ``request_number`` first-ranked ones. A file that cannot be
    used raises ``UserError``; with ``problems`` (a dict) it is recorded there and its tags are None."""
    from . import db, registry
    from .inference import Predictor

    model_id = registry.find(settings, model)
    predictor = Predictor.for_version(settings, model_id)
    images: dict[int, object] = {}
    for i, f in enumerate(files):
        try:
            images[i] = load_image(Path(f), settings.resized_side, settings.max_pixels)
        except UserError as exc:
            if problems is None:
                raise
            problems[Path(f)] = str(exc)
    out: list[Tags | None] = [None] * len(files)
    if not images:
        return model_id, out
    probs = predictor.predict_images(list(images.values()))
    thresholds = None
    if use_thresholds:
        with db.get_engine(settings).connect() as conn:
            thresholds = registry.threshold_row(conn, model_id, predictor.labels)
    ranks = predictor.rank_scores(probs)
    if thresholds is None:
        tags = predict_tags(probs, predictor.labels, request_number, None, ranks)
    else:
        tags = tags_for_scoring(probs, predictor.labels, thresholds, request_number, ranks)
    for i, row in zip(images, tags, strict=True):
        out[i] = row
    return model_id, out


def _predict_cmd(args, settings) -> int:
    problems: dict[Path, str] = {}
    model_id, tags = predict_files(settings, args.files, args.model, args.request_number, not args.no_thresholds,
                                   problems)
    for message in problems.values():  # each names its file
        print(f"instatag predict: {message}", file=sys.stderr)
    if args.json:
        out = [{"file": str(f), "model_version": model_id, "tags": [{"label": lab, "probability": round(p, 4)}
                                                                    for lab, p in row]}
               if row is not None else {"file": str(f), "model_version": model_id, "error": problems[Path(f)]}
               for f, row in zip(args.files, tags, strict=True)]
        json.dump(out, sys.stdout, indent=2)
        print()
    else:
        for f, row in zip(args.files, tags, strict=True):
            if row is not None:
                print(f"{f}\t" + "  ".join(f"#{lab} {p:.2f}" for lab, p in row))
        print(f"(model version {model_id})", file=sys.stderr)
    if problems:
        print(f"instatag predict: {len(problems)} of {len(args.files)} files could not be used", file=sys.stderr)
        return 2
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="print the predicted tags of image files (champion model); writes nothing",
        description="Predict the hashtags of ad-hoc image files with the champion model (or --model "
        "VERSION). Prints the tags `instatag score` writes to predicted_tags for the same model: every "
        "tag at or over its tuned threshold, and at least the --request-number first-ranked ones, most "
        "probable first (unless the model was trained with ranking dominant_first: then the tag most "
        "likely to be the uploader's most frequent one comes first). A file that cannot be used is "
        "reported on stderr and the others are still predicted (exit status 2). Nothing is written to "
        "the database.",
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="image files (JPEG, PNG, ...)")
    p.add_argument("--model", default="champion", help="'champion' (default), 'latest' or a model version number")
    p.add_argument("--request-number", type=int, default=2, metavar="N",
                   help="at least N tags per image (default 2), more when more pass their thresholds")
    p.add_argument("--no-thresholds", action="store_true",
                   help="print exactly the N first-ranked tags, whatever their probability")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.set_defaults(handler=_predict_cmd)
