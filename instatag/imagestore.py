"""The content-addressed image store under the data dir.

``store/originals/ab/<sha256>.<ext>`` keeps each accepted photo byte for byte (a hard link to the
scraped file when the ingest passes its ``source`` and both are on one filesystem, else a copy);
``store/resized/ab/<sha256>.jpg`` is its training-ready copy: RGB JPEG (quality 90), longest
side at most ``resized_side``, EXIF orientation applied. Training, evaluation and scoring read
only the resized copies. Files are written atomically (temporary file + rename): a killed
ingest leaves no half file, and a resized copy already present for a hash is reused.

``store_image`` checks the header before decoding anything, so a decompression bomb costs a
few kilobytes of reading; JPEGs are decoded at reduced scale (``draft``), which is where most
of the ingest speed comes from. A JPEG that lacks only its end marker is accepted when every
pixel decodes from its own data (``decode_without_end_marker``).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from .files import link_or_copy, write_atomic

#: store folders relative to the data dir, POSIX separators (as the paths in the database)
STORE = "store"
ORIGINALS = f"{STORE}/originals"
RESIZED = f"{STORE}/resized"
RESIZED_QUALITY = 90
#: PIL filter for the resized copy (antialiased when shrinking); BICUBIC is PIL's default
RESAMPLE = 3  # PIL.Image.Resampling.BICUBIC

#: formats accepted, with the extension their original keeps in the store
FORMAT_EXT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}

# EXIF orientation → the transpose that shows the image upright (as PIL.ImageOps.exif_transpose)
_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
              6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}


class Rejected(Exception):
    """A file the store refuses; ``reason`` is a stable snake_case string."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Stored:
    sha256: str
    format: str
    #: size of the original as displayed (after EXIF orientation)
    width: int
    height: int
    #: relative to the data dir
    original_path: str
    resized_path: str
    #: the original's bytes were written (a copy); False when hard-linked or already in the store
    copied: bool = True


def original_path(sha256: str, ext: str) -> str:
    """Where the original with this hash lives, relative to the data dir (POSIX separators)."""
    return f"{ORIGINALS}/{sha256[:2]}/{sha256}.{ext}"


def resized_path(sha256: str) -> str:
    """Where the training-ready copy lives, relative to the data dir (POSIX separators)."""
    return f"{RESIZED}/{sha256[:2]}/{sha256}.jpg"


def fit(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) scaled so the longest side is at most ``side``; never enlarged."""
    longest = max(width, height)
    if longest <= side:
        return width, height
    return max(1, round(width * side / longest)), max(1, round(height * side / longest))


def to_rgb(im):
    """``im`` as RGB: transparency over white, 16-bit greyscale scaled, CMYK/palette/grey converted."""
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode.startswith("I"):  # 16/32-bit greyscale (PNG): scale to 8 bits, do not clip
        im = im.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or im.has_transparency_data:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")


def _orientation(im) -> int:
    try:
        value = int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - broken EXIF: show the pixels as stored
        return 1
    return value if value in _TRANSPOSE else 1


def _broken(exc: Exception, where: str = "") -> Rejected:
    detail = f"{where}{str(exc) or type(exc).__name__}"
    return Rejected("truncated_image" if "truncated" in detail.lower() else "corrupt_image", detail)


def _open(data: bytes, max_pixels: int):
    """Open lazily (header only) and refuse what cannot or must not be decoded."""
    from PIL import Image, UnidentifiedImageError

    pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Rejected("too_many_pixels", f"over the limit of {max_pixels} pixels ({exc})") from None
    except UnidentifiedImageError:
        raise Rejected("not_an_image", "no image format recognised") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds on a broken header
        raise _broken(exc, "header: ") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    if im.format not in FORMAT_EXT:
        raise Rejected("unsupported_format", f"{im.format} images are not accepted")
    w, h = im.size
    if w * h > max_pixels:
        raise Rejected("too_many_pixels", f"{w}x{h} is over the limit of {max_pixels} pixels")
    if w < 1 or h < 1:
        raise Rejected("corrupt_image", f"size {w}x{h}")
    return im


def resize(im, side: int):
    """Decode ``im`` (opened, not loaded) to an upright RGB image whose longest side is ≤ ``side``."""
    from PIL import Image

    target = fit(*im.size, side)
    if im.format in ("JPEG", "MPO"):
        im.draft("RGB", target)  # decode at 1/2, 1/4 or 1/8 scale: most of the speed
    try:
        im.load()
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError...
        raise _broken(exc) from None
    orientation = _orientation(im)
    try:
        im = to_rgb(im)
    except Exception as exc:  # noqa: BLE001
        raise Rejected("unsupported_format", f"cannot convert mode {im.mode} to RGB: {exc}") from None
    if im.size != target:
        im = im.resize(target, Image.Resampling(RESAMPLE))
    if orientation != 1:
        im = im.transpose(getattr(Image.Transpose, _TRANSPOSE[orientation]))
    return im


_EOI = b"\xff\xd9"
#: what is put between a JPEG's data and the end marker added to it: where the data ends early,
#: libjpeg decodes zeros (no filler), then these bits, and the pixels differ
_FILLERS = (b"", b"\x55" * 16, b"\xaa" * 16)


def decode_without_end_marker(data: bytes, max_pixels: int):
    """A JPEG that lacks only its end marker (EOI; some phones and interrupted-then-resumed
    downloads write these), decoded at full size; None when it is really truncated.

    libjpeg needs the marker to finish, so ``data`` is decoded three times with an end marker
    added, after no filler, after ``0x55`` bytes and after ``0xAA`` bytes. Where the entropy-coded
    data is complete the fillers are never decoded and the three images are equal; where it ends
    early, libjpeg decodes the fillers (or zeros) into the missing blocks and they differ. So a
    photo is accepted only when every pixel comes from its own data; a progressive JPEG cut
    between two scans is the one kind that passes with less detail than its full data."""
    first = None
    for filler in _FILLERS:
        im = _open(data + filler + _EOI, max_pixels)
        try:
            im.load()
        except Exception:  # noqa: BLE001 - the data itself is broken
            return None
        if first is None:
            first, pixels = im, im.tobytes()
        elif im.tobytes() != pixels:
            return None
    return first


def store_image(data: bytes, data_dir: Path, side: int, max_pixels: int,
                source: tuple[str, os.stat_result] | None = None) -> Stored:
    """Validate ``data``, keep the original and its resized copy in the store; raise ``Rejected``.

    ``source``: the file ``data`` was read from and its ``fstat`` then; the original is kept as
    a hard link to it where possible (``files.link_or_copy``), else written."""
    if not data:
        raise Rejected("empty_file", "0 bytes")
    sha = hashlib.sha256(data).hexdigest()
    im = _open(data, max_pixels)
    fmt = im.format
    w, h = im.size
    rel_orig, rel_resized = original_path(sha, FORMAT_EXT[fmt]), resized_path(sha)
    root = os.fspath(data_dir)
    resized_file = f"{root}/{rel_resized}"
    if not os.path.exists(resized_file):  # else decoded before: same bytes, same result
        try:
            small = resize(im, side)
        except Rejected as exc:
            whole = (exc.reason == "truncated_image" and fmt == "JPEG" and not data.endswith(_EOI)
                     and decode_without_end_marker(data, max_pixels))
            if not whole:
                raise
            small = resize(whole, side)
        buf = io.BytesIO()
        small.save(buf, "JPEG", quality=RESIZED_QUALITY)
        write_atomic(resized_file, buf.getvalue())
    orientation = _orientation(im)
    if source is None:
        write_atomic(f"{root}/{rel_orig}", data)
        copied = True
    else:
        copied = link_or_copy(f"{root}/{rel_orig}", data, *source)
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return Stored(sha, fmt, w, h, rel_orig, rel_resized, copied)
