"""The bare loop's work on one photo file (bench/ingest.py's limit), in a module of its own:
its worker processes (``instatag.procpool``, as the ingest's) import this and
``instatag.imagestore``, as an ingest worker imports ``instatag.ingest``."""

from __future__ import annotations

from instatag.imagestore import RESAMPLE, fit, to_rgb


def bare_decode_resize(path: str, side: int, max_pixels: int) -> tuple[int, int]:
    """What the limit does to one file: open, draft-decode, RGB (``to_rgb``: no copy when it is RGB
    already, as in the store), resize."""
    from PIL import Image

    try:
        im = Image.open(path)
        if im.width * im.height > max_pixels:
            return (0, 0)
        target = fit(*im.size, side)
        im.draft("RGB", target)
        return to_rgb(im).resize(target, Image.Resampling(RESAMPLE)).size
    except Exception:  # noqa: BLE001 - the broken files of drop 3 are skipped, as the ingest rejects them
        return (0, 0)
