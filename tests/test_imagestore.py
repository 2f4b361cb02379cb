"""The content-addressed image store: decoding guards, colour modes, orientation, reuse of stored files."""

from __future__ import annotations

import io
import resource
import time

import pytest
from builders import huge_png, photo_bytes
from PIL import Image

from instatag.imagestore import Rejected, store_image


def test_decompression_bomb_refused_fast_and_small(tmp_path):
    data = huge_png()
    assert len(data) < 1000
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    with pytest.raises(Rejected) as exc:
        store_image(data, tmp_path, 160, 40_000_000)
    assert exc.value.reason == "too_many_pixels"
    assert time.monotonic() - start < 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50_000  # KiB
    with pytest.raises(Rejected) as exc:  # just over the limit (PIL only warns up to 2x its own limit)
        store_image(huge_png(2001, 2000), tmp_path, 160, 4_000_000)
    assert exc.value.reason == "too_many_pixels"
    assert not list(tmp_path.rglob("*"))


@pytest.mark.parametrize("fmt,mode,expected", [
    ("JPEG", "CMYK", (200, 30, 30)),
    ("PNG", "L", (81, 81, 81)),
    ("PNG", "P", (200, 30, 30)),
    ("PNG", "LA", (81, 81, 81)),
    ("WEBP", "RGB", (200, 30, 30)),
    ("TIFF", "I;16", (128, 128, 128)),
])
def test_colour_modes_become_rgb(tmp_path, fmt, mode, expected):
    if mode == "I;16":
        buf = io.BytesIO()
        Image.new("I;16", (300, 200), 32896).save(buf, fmt)
        data = buf.getvalue()
    else:
        data = photo_bytes(fmt, mode, (300, 200), **({} if fmt == "PNG" else {"quality": 95}))
    stored = store_image(data, tmp_path, 160, 40_000_000)
    small = Image.open(tmp_path / stored.resized_path)
    assert (small.mode, small.size, stored.width, stored.height) == ("RGB", (160, 107), 300, 200)
    assert small.getpixel((80, 50)) == pytest.approx(expected, abs=6)


def test_transparency_over_white_and_exif_orientation(tmp_path):
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 20, 40))
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (0, 0, 20, 40))
    for im, extra in ((rgba, {}), (palette, {"transparency": 0})):
        buf = io.BytesIO()
        im.save(buf, "PNG", **extra)
        small = Image.open(tmp_path / store_image(buf.getvalue(), tmp_path, 160, 10**8).resized_path)
        assert small.getpixel((5, 20)) == pytest.approx((0, 0, 255), abs=8)
        assert small.getpixel((35, 20)) == pytest.approx((255, 255, 255), abs=8)

    # stored 300x200, left half red, right half blue, EXIF "rotate 90° clockwise to view" (6)
    im = Image.new("RGB", (300, 200), (255, 0, 0))
    im.paste((0, 0, 255), (150, 0, 300, 200))
    exif = im.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif, quality=95)
    stored = store_image(buf.getvalue(), tmp_path, 160, 10**8)
    assert (stored.width, stored.height) == (200, 300)
    small = Image.open(tmp_path / stored.resized_path)
    assert small.size == (107, 160)
    assert small.getpixel((50, 20)) == pytest.approx((255, 0, 0), abs=30)  # red on top once upright
    assert small.getpixel((50, 140)) == pytest.approx((0, 0, 255), abs=30)


def test_store_files_are_reused(tmp_path):
    data = photo_bytes(size=(320, 200))
    one = store_image(data, tmp_path, 160, 10**8)
    mtime = (tmp_path / one.resized_path).stat().st_mtime_ns
    assert store_image(data, tmp_path, 160, 10**8) == one
    assert (tmp_path / one.resized_path).stat().st_mtime_ns == mtime  # not decoded again
    assert Image.open(tmp_path / one.resized_path).size == (160, 100)
