"""Which image files we read, and how: Pillow's own formats; HEIC/HEIF (iPhones since iOS 11) through
the pillow-heif plugin; AVIF through Pillow (built in since 11.3) or pillow-heif; camera RAW through
rawpy (LibRaw), from the embedded JPEG preview when there is one, else demosaiced at half size.

pillow-heif and rawpy are optional extras (pyproject: heif, raw, photos; README: Searching your photos). Without one, its files are still
found, so that a run can say once which extra to install instead of skipping them unseen.
Every decoder here applies the photo's orientation, so callers get the image as it is shown.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO, Union

from PIL import Image, ImageOps, features

try:  # optional extras (pyproject: heif, raw); imported, not registered: no side effect at import
    import pillow_heif
except ImportError:
    pillow_heif = None
try:
    import rawpy
except ImportError:
    rawpy = None

PIL_EXT = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
HEIF_EXT = (".heic", ".heif", ".hif")
AVIF_EXT = (".avif",)
RAW_EXT = (
    ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2",
    ".pef", ".srw", ".3fr", ".iiq", ".erf", ".kdc", ".mos", ".mrw", ".x3f", ".raw", ".rwl",
)  # fmt: skip
IMAGE_EXT = PIL_EXT + HEIF_EXT + AVIF_EXT + RAW_EXT
MAX_PIXELS = 178_956_970  # PIL's own decompression-bomb limit (2x its warning threshold)
MAX_ASPECT = 50  # a 1 x 20000 strip would resize to 224 x 4.5 million pixels

EXTRAS = {
    "heif": "pip install 'mlx-aimv2[heif]' (pillow-heif)",
    "raw": "pip install 'mlx-aimv2[raw]' (rawpy)",
}
_HEIF: dict = {}


class MissingExtra(Exception):
    """The file's format needs an optional package that is not installed."""


class ImageSizeError(ValueError):
    pass


def check_image_size(w: int, h: int) -> None:
    """From the header, before decoding: refuse decompression bombs, extreme strips and empty images."""
    if w < 1 or h < 1:
        raise ImageSizeError(f"{w}x{h} holds no pixels")
    if w * h > MAX_PIXELS:
        raise ImageSizeError(
            f"{w}x{h} is over the {MAX_PIXELS:,}-pixel limit (a possible decompression bomb); downscale it first"
        )
    if max(w, h) > MAX_ASPECT * max(min(w, h), 1):
        raise ImageSizeError(f"{w}x{h} is a strip over {MAX_ASPECT}:1, which no encoder input can hold; crop it first")


def _heif_registered() -> bool:
    """Register pillow-heif's HEIF (and, where Pillow lacks it, AVIF) openers once; False without it."""
    if "ok" not in _HEIF:
        if pillow_heif is not None:
            pillow_heif.register_heif_opener()
            if not features.check("avif") and hasattr(pillow_heif, "register_avif_opener"):
                pillow_heif.register_avif_opener()
        _HEIF["ok"] = pillow_heif is not None
    return _HEIF["ok"]


def needs(ext: str) -> str | None:
    """The extra a file extension needs and lacks (a key of EXTRAS), else None."""
    ext = ext.lower()
    if ext in HEIF_EXT or (ext in AVIF_EXT and not features.check("avif")):
        return None if _heif_registered() else "heif"
    if ext in RAW_EXT and rawpy is None:
        return "raw"
    return None


def open_image(src: Union[str, os.PathLike, BinaryIO], ext: str, draft: int | None = None) -> Image.Image:
    """A loaded PIL image, oriented as shown. ext: the file's extension (it picks the decoder).
    draft: for a JPEG, decode at a reduced size whose sides stay >= draft. Raises MissingExtra, or the
    decoder's own exception for a bad file (the caller words it)."""
    ext = ext.lower()
    extra = needs(ext)
    if extra:
        raise MissingExtra(f"{ext[1:].upper()} files need an optional package: {EXTRAS[extra]}")
    if ext in RAW_EXT:
        return _open_raw(src)
    with Image.open(src) as im:
        check_image_size(*im.size)
        if draft and im.format == "JPEG":
            im.draft(im.mode, (draft, draft))
        im = ImageOps.exif_transpose(im)
        im.load()
        return im


# LibRaw's flip code -> the PIL transpose that shows the image upright
_FLIPS = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}


def _open_raw(src) -> Image.Image:
    with rawpy.imread(os.fspath(src) if isinstance(src, os.PathLike) else src) as raw:
        check_image_size(raw.sizes.width, raw.sizes.height)
        try:
            thumb = raw.extract_thumb()
        except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
            thumb = None
        if thumb is not None and thumb.format == rawpy.ThumbFormat.JPEG:
            with Image.open(io.BytesIO(thumb.data)) as im:
                oriented = im.getexif().get(0x0112, 1) != 1  # the preview says its own orientation
                im = ImageOps.exif_transpose(im)
                im.load()
            flip = _FLIPS.get(raw.sizes.flip)
            return im.transpose(flip) if flip is not None and not oriented else im
        # no usable preview: demosaic (LibRaw applies the flip itself)
        rgb = raw.postprocess(use_camera_wb=True, half_size=True, output_bps=8)
        return Image.fromarray(rgb)


def raw_with_jpeg(path: str, names: set) -> bool:
    """A RAW file shot together with a JPEG of the same name (RAW+JPEG mode): index the JPEG only."""
    stem, ext = os.path.splitext(path)
    return ext.lower() in RAW_EXT and any(stem + e in names for e in (".jpg", ".jpeg", ".JPG", ".JPEG"))
