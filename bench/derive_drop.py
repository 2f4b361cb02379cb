"""Derive a drop from a food10 drop for the drift measurement in docs/drops.md.

Each chosen post's photo is written mirrored (left-right; a new content hash, so ingest sees a new
photo, of the same distribution: the models average every prediction with the mirror image) with
its caption; optionally only one dish's posts (food10's classes.csv), a random sample, and a
hashtag appended to a share of the captions (a new trend). Nothing is written to the source.

  python bench/derive_drop.py SRC DEST --sample 300 --seed 1                 # same mix
  python bench/derive_drop.py SRC DEST --dish apple_pie                      # one dish only
  python bench/derive_drop.py SRC DEST --sample 300 --seed 2 --trend airfryer 0.5
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path


def derive(src: Path, dest: Path, sample: int | None = None, seed: int = 0, dish: str | None = None,
           classes: Path | None = None, trend: tuple[str, float] | None = None) -> int:
    """Write the derived posts into ``dest``; the number of posts written."""
    from PIL import Image

    rng = random.Random(seed)
    posts = sorted(p.with_suffix("") for p in src.glob("*_UTC.txt") if p.with_suffix(".jpg").is_file())
    if dish:
        with (classes or src.parent / "classes.csv").open() as fh:
            wanted = {row["post"] for row in csv.DictReader(fh)
                      if row["drop"] == src.name and row["food101_class"] == dish}
        posts = [p for p in posts if p.name in wanted]
    if sample is not None and sample < len(posts):
        posts = sorted(rng.sample(posts, sample))
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for stem in posts:
        try:
            with Image.open(stem.with_suffix(".jpg")) as im:
                mirrored = im.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        except (OSError, Image.DecompressionBombError):
            continue  # food10's broken files stay out
        mirrored.save(dest / f"{stem.name}.jpg", quality=95)
        caption = stem.with_suffix(".txt").read_text(encoding="utf-8", errors="replace")
        if trend and rng.random() < trend[1]:
            caption += f" #{trend[0]}"
        (dest / f"{stem.name}.txt").write_text(caption, encoding="utf-8")
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="a food10 drop folder")
    parser.add_argument("dest", type=Path, help="the folder to write the derived drop into")
    parser.add_argument("--sample", type=int, help="this many posts, drawn at random")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dish", help="only the posts of this food10 class (classes.csv)")
    parser.add_argument("--classes", type=Path, help="classes.csv (default: next to the drop folder)")
    parser.add_argument("--trend", nargs=2, metavar=("TAG", "SHARE"), help="append #TAG to about SHARE of the captions")
    args = parser.parse_args(argv)
    trend = (args.trend[0].lstrip("#"), float(args.trend[1])) if args.trend else None
    n = derive(args.src, args.dest, args.sample, args.seed, args.dish, args.classes, trend)
    print(f"{n} posts written to {args.dest}")
    return 0 if n else 1


if __name__ == "__main__":
    sys.exit(main())
