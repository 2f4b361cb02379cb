"""People's corrections of labels: confirm or reject a label of an image, or add a missing one.

Every correction is a row of ``label_corrections`` (image, label, verdict, user, time, model
version shown), never updated or deleted: the history stays. The newest row per image and label
counts (view ``label_verdicts``; ``latest_verdicts``).

Precedence (docs/grouping.md): for an image with verdicts, the labels that count are the uploader's
labels, plus every label whose latest verdict is ``confirmed``, minus every label whose latest
verdict is ``rejected`` (``apply_verdicts``). The vocabulary build, evaluation on verified images and
``instatag feedback export/import`` all use this one rule.

CSV (``instatag feedback export/import``): a header line, columns ``image_id`` or ``sha256`` (one of
them), ``label``, ``verdict`` (confirmed | rejected) and ``user``; export writes both ids plus
``post``, ``created_at`` and ``model_version``. Import checks every row before writing any (image
known, label in the vocabulary, verdict valid, user given) and refuses a file with a bad row,
naming its line; two rows on the same image and label with different verdicts contradict each other
and refuse the file too, naming both lines (a file says one thing per image and label). A row equal
to the image and label's latest verdict is skipped, so importing the same file twice adds nothing.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

VERDICTS = ("confirmed", "rejected")
CSV_COLUMNS = ("image_id", "sha256", "post", "label", "verdict", "user", "created_at", "model_version")


def latest_verdicts(conn, image_ids=None) -> dict[int, dict[str, str]]:
    """{image_id: {label: verdict}}: the newest verdict per image and label (of ``image_ids`` when
    given, else of every image)."""
    from sqlalchemy import select

    from . import schema as t

    c = t.label_corrections.c
    q = select(c.image_id, c.label, c.verdict).order_by(c.id)
    if image_ids is not None:
        q = q.where(c.image_id.in_(list(image_ids)))
    out: dict[int, dict[str, str]] = defaultdict(dict)
    for r in conn.execute(q):
        out[r.image_id][r.label] = r.verdict  # later rows overwrite earlier ones
    return dict(out)


def apply_verdicts(labels, verdicts: dict[str, str]) -> set[str]:
    """The labels that count for one image: ``labels`` (the uploader's) with ``confirmed`` verdicts
    added and ``rejected`` ones removed."""
    return (set(labels) | {k for k, v in verdicts.items() if v == "confirmed"}) - {
        k for k, v in verdicts.items() if v == "rejected"}


def vocabulary(conn, model_version_id: int | None = None) -> set[str]:
    """The labels a correction may name: those of ``model_version_id``'s vocabulary version when
    given, else of the newest vocabulary version and of the champion's."""
    from sqlalchemy import func, select

    from . import registry
    from . import schema as t

    vl = t.vocab_labels.c
    if model_version_id is not None:
        versions = [registry.vocab_version_id(conn, model_version_id) if registry.exists(conn, model_version_id)
                    else None]
    else:
        champion = registry.champion_id(conn)
        versions = [conn.execute(select(func.max(t.vocab_versions.c.id))).scalar(),
                    None if champion is None else registry.vocab_version_id(conn, champion)]
    versions = [v for v in versions if v is not None]
    return set(conn.execute(select(vl.label).where(vl.vocab_version_id.in_(versions))).scalars())


def check(verdict: str, label: str, labels: set[str], user: str) -> str | None:
    """What is wrong with a correction, or None."""
    if verdict not in VERDICTS:
        return f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}"
    if not label:
        return "no label given"
    if label not in labels:
        return f"{label!r} is not a label of the vocabulary"
    if not user:
        return "no user given"
    return None


def record(conn, image_id: int, label: str, verdict: str, user: str, model_version_id: int | None) -> None:
    """Append one correction (already checked with ``check``)."""
    from sqlalchemy import insert

    from . import schema as t

    conn.execute(insert(t.label_corrections).values(image_id=image_id, label=label, verdict=verdict, user=user,
                                                    model_version_id=model_version_id))


# --------------------------------------------------------------------------- CSV
def export_csv(settings, path: Path) -> int:
    """Write the latest verdict of every image and label to ``path``; returns the rows written."""
    from sqlalchemy import select

    from . import db
    from . import schema as t

    c, im = t.label_corrections.c, t.images.c
    q = (select(c.id, c.image_id, im.sha256, im.post, c.label, c.verdict, c.user, c.created_at, c.model_version_id)
         .join(t.images, im.id == c.image_id).order_by(c.image_id, c.label, c.id))
    latest: dict[tuple[int, str], dict] = {}
    with db.get_engine(settings).connect() as conn:
        for r in conn.execute(q):
            latest[(r.image_id, r.label)] = {
                "image_id": r.image_id, "sha256": r.sha256, "post": r.post, "label": r.label, "verdict": r.verdict,
                "user": r.user, "created_at": r.created_at.isoformat() if r.created_at else "",
                "model_version": r.model_version_id or ""}
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        w.writeheader()
        w.writerows(latest.values())
    return len(latest)


@dataclass(frozen=True)
class Imported:
    added: int
    unchanged: int


def import_csv(settings, path: Path) -> Imported:
    """Append the corrections of a CSV file (module docstring); ``UserError`` naming every bad line
    (up to 20), nothing written, when any row is bad."""
    from sqlalchemy import select

    from . import db
    from . import schema as t

    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = set(reader.fieldnames or ())
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc
    missing = {"label", "verdict", "user"} - header
    if missing or not header & {"image_id", "sha256"}:
        need = sorted(missing) + ([] if header & {"image_id", "sha256"} else ["image_id or sha256"])
        raise UserError(f"{path}: the header lacks {', '.join(need)} (columns: image_id or sha256, label, verdict, "
                        "user)")
    engine = db.get_engine(settings)
    with engine.connect() as conn:
        labels = vocabulary(conn)
        by_sha = dict(conn.execute(select(t.images.c.sha256, t.images.c.id)).all())
    ids = set(by_sha.values())
    errors, good = [], []
    first: dict[tuple[int, str], tuple[int, str]] = {}  # (image, label) -> (line, verdict) of its first row
    for line, row in rows:
        row = {k: (v or "").strip() for k, v in row.items() if k}
        image_id = None
        if row.get("image_id"):
            image_id = int(row["image_id"]) if row["image_id"].isdigit() else None
            if image_id not in ids:
                errors.append(f"line {line}: no image with id {row['image_id']!r}")
                continue
        elif row.get("sha256"):
            image_id = by_sha.get(row["sha256"].lower())
            if image_id is None:
                errors.append(f"line {line}: no image with sha256 {row['sha256']!r}")
                continue
        else:
            errors.append(f"line {line}: neither image_id nor sha256 given")
            continue
        problem = check(row["verdict"].lower(), row["label"], labels, row["user"])
        if problem:
            errors.append(f"line {line}: {problem}")
            continue
        verdict = row["verdict"].lower()
        seen = first.setdefault((image_id, row["label"]), (line, verdict))
        if seen[1] != verdict:
            errors.append(f"line {line}: {verdict} contradicts line {seen[0]} ({seen[1]}) for image {image_id} and "
                          f"label {row['label']!r}")
            continue
        good.append((image_id, row["label"], verdict, row["user"]))
    if errors:
        more = f" ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise UserError(f"{path}: {len(errors)} bad row{'s' * (len(errors) != 1)}, nothing imported:\n  "
                        + "\n  ".join(errors[:20]) + more)
    added = 0
    with engine.begin() as conn:
        current = latest_verdicts(conn, {g[0] for g in good}) if good else {}
        for image_id, label, verdict, user in good:
            if current.get(image_id, {}).get(label) == verdict:
                continue
            record(conn, image_id, label, verdict, user, None)
            current.setdefault(image_id, {})[label] = verdict
            added += 1
    return Imported(added, len(good) - added)


# --------------------------------------------------------------------------- CLI
def _feedback_cmd(args, settings) -> int:
    if args.action == "export":
        n = export_csv(settings, args.file)
        print(f"wrote {n} verdict{'s' * (n != 1)} to {args.file}")
    else:
        res = import_csv(settings, args.file)
        print(f"imported {res.added} correction{'s' * (res.added != 1)} from {args.file}; "
              f"{res.unchanged} already recorded")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser(
        "feedback",
        help="export or import people's label corrections (CSV)",
        description="export: write the latest verdict per image and label to FILE (CSV). import: append the "
        "corrections in FILE (columns image_id or sha256, label, verdict = confirmed|rejected, user); every row is "
        "checked first (image known, label in the vocabulary, no two rows with different verdicts on the same image "
        "and label) and a file with a bad row is refused, naming its line(s); rows equal to the latest verdict are "
        "skipped, so a re-import adds nothing. The next `instatag vocab "
        "build` uses the verified labels in place of the uploaders' (docs/grouping.md).",
    )
    p.add_argument("action", choices=("export", "import"))
    p.add_argument("file", type=Path, metavar="FILE.csv")
    p.set_defaults(handler=_feedback_cmd)
