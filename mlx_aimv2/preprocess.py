"""Inference preprocessing, equal to the hub's CLIPImageProcessor (PIL backend): convert to RGB,
bicubic resize of the shortest edge, centre crop, rescale, normalise. Output is NHWC float32.

The native-resolution model keeps the aspect ratio instead and rounds each side to a multiple of
the patch size within a patch budget.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

from .errors import UserError, is_file_fault
from .formats import MAX_PIXELS, ImageSizeError, MissingExtra, check_image_size, open_image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the normalisation every AIMv2 checkpoint was trained with
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ImageLike = Union[str, Path, Image.Image, np.ndarray]


@dataclass
class Preprocessor:
    size: int = 224  # shortest edge after resize
    crop: tuple = (224, 224)  # (height, width)
    do_resize: bool = True
    do_center_crop: bool = True
    rescale: float = 1 / 255
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD
    native_patch: Optional[int] = None  # set for the native model: sizing by patch budget
    min_patches: int = 112
    max_patches: int = 4096
    fast_decode: bool = False  # JPEGs: PIL's reduced-size decode (draft) before the exact resize

    @classmethod
    def from_config(
        cls,
        d: dict,
        native_patch: Optional[int] = None,
        where: str = "preprocessor_config.json",
        image_size: Optional[int] = None,
    ) -> "Preprocessor":
        """From a CLIPImageProcessor config, every value checked (one line naming the key otherwise).
        image_size: a fixed-size model's input side, which the crop must equal."""

        def bad(key, why):
            return UserError(f"{where}: '{key}' {why}; fix it or delete the file to use the defaults")

        def side(v, key):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(key, f"is {v!r}; it must be a positive integer")
            return v

        def triple(key, default, positive):
            v = d.get(key, default)
            if (
                not isinstance(v, (list, tuple))
                or len(v) != 3
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
            ):
                raise bad(key, f"is {v!r}; it must be a list of 3 numbers (R, G, B)")
            if positive and min(v) <= 0:
                raise bad(key, f"is {list(v)}; every value must be above 0")
            return tuple(float(x) for x in v)

        if not isinstance(d, dict):
            raise UserError(f"{where}: must hold a JSON object; fix it or delete the file")
        size = d.get("size", {})
        if isinstance(size, dict):
            size = size.get("shortest_edge", size.get("height", 224))
        size = side(size, "size")
        crop = d.get("crop_size", {"height": size, "width": size})
        crop = (crop.get("height"), crop.get("width")) if isinstance(crop, dict) else (crop, crop)
        crop = (side(crop[0], "crop_size"), side(crop[1], "crop_size"))
        if image_size and not native_patch and d.get("do_center_crop", True) and crop != (image_size, image_size):
            raise bad("crop_size", f"is {crop[0]}x{crop[1]} but this model takes {image_size}x{image_size} images")
        rescale = d.get("rescale_factor", 1 / 255)
        if isinstance(rescale, bool) or not isinstance(rescale, (int, float)) or not 0 < rescale <= 1:
            raise bad("rescale_factor", f"is {rescale!r}; it must be a number in (0, 1]")
        return cls(
            size=size,
            crop=crop,
            do_resize=bool(d.get("do_resize", True)),
            do_center_crop=bool(d.get("do_center_crop", True)),
            rescale=rescale,
            mean=triple("image_mean", cls.mean, False),
            std=triple("image_std", cls.std, True),
            native_patch=native_patch,
        )

    @classmethod
    def from_folder(cls, folder: Path, native_patch: Optional[int] = None, image_size: int = 224) -> "Preprocessor":
        f = Path(folder) / "preprocessor_config.json"
        if Path(folder).is_dir() and f.is_file():
            try:
                d = json.loads(f.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise UserError(f"{f}: not valid JSON ({e}); fix it or delete the file to use the defaults") from None
            return cls.from_config(d, native_patch, str(f), image_size)
        return cls(size=image_size, crop=(image_size, image_size), native_patch=native_patch)

    # -- steps ---------------------------------------------------------------------------
    def native_size(self, w: int, h: int) -> tuple[int, int]:
        """(width, height): aspect kept, multiples of the patch, patch count within the budget."""
        p = self.native_patch
        gw, gh = max(round(w / p), 1), max(round(h / p), 1)
        n = gw * gh
        if n > self.max_patches or n < self.min_patches:
            target = self.max_patches if n > self.max_patches else self.min_patches
            s = math.sqrt(target / n)
            gw, gh = max(int(w / p * s), 1), max(int(h / p * s), 1)
            while gw * gh > self.max_patches:
                gw, gh = (gw - 1, gh) if gw >= gh else (gw, gh - 1)
            while gw * gh < self.min_patches:
                gw, gh = (gw + 1, gh) if gw <= gh else (gw, gh + 1)
        return gw * p, gh * p

    @property
    def draft_size(self) -> Optional[int]:
        """With fast_decode, the side a JPEG may be reduced to: it decodes at 1/2, 1/4 or 1/8 scale while
        both sides stay >= the resize target, then the same bicubic resize runs. Not for the native
        model, whose size is chosen per image."""
        return self.size if self.fast_decode and self.do_resize and not self.native_patch else None

    def __call__(self, image: ImageLike) -> np.ndarray:
        img = to_rgb(load_image(image, self.draft_size))  # a PIL image too: the size guards apply
        if self.native_patch:
            w, h = self.native_size(*img.size)
            if (w, h) != img.size:
                img = img.resize((w, h), Image.BICUBIC)
            x = np.asarray(img, dtype=np.float32)
        else:
            if self.do_resize:
                w, h = img.size
                short, long = (w, h) if w <= h else (h, w)
                new_short, new_long = self.size, int(self.size * long / short)
                new = (new_short, new_long) if w <= h else (new_long, new_short)
                if new != img.size:
                    img = img.resize(new, Image.BICUBIC)
            x = np.asarray(img, dtype=np.float32)
            if self.do_center_crop:
                x = center_crop(x, *self.crop)
        x = x * np.float32(self.rescale)
        return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)


def _wide_grey(img: Image.Image) -> np.ndarray:
    """A 16/32-bit integer or float grey image as uint8: 16-bit ranges scale by 1/257 (wider
    integers by their own maximum), floats in [0, 1] by 255 (others are taken as 0-255)."""
    a = np.asarray(img).astype(np.float64)
    top = a.max(initial=0)
    if img.mode == "F":
        a = a * 255.0 if top <= 1.0 else a
    elif top > 65535:
        a = a * (255.0 / top)
    else:
        a = a / 257.0
    return np.clip(a.round(), 0, 255).astype(np.uint8)


def center_crop(x: np.ndarray, ch: int, cw: int) -> np.ndarray:
    h, w = x.shape[:2]
    if h < ch or w < cw:  # pad with zeros first, as transformers does
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        x = np.pad(
            x, ((math.ceil(ph / 2), ph - math.ceil(ph / 2)), (math.ceil(pw / 2), pw - math.ceil(pw / 2)), (0, 0))
        )
        h, w = x.shape[:2]
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[top : top + ch, left : left + cw]


def to_rgb(img: Image.Image) -> Image.Image:
    """Every PIL mode to RGB as transformers' convert_to_rgb does: transparency is composited onto
    white, everything else goes through PIL's own conversion, except that 16-bit and 32-bit grey
    (a 16-bit PNG) is scaled to 8 bits (PIL's own conversion clips it to white)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return _from_array(_wide_grey(img))
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(src: ImageLike, draft: Optional[int] = None) -> Image.Image:
    """Open an image (a file of any formats.IMAGE_EXT, a PIL image or an HxWxC array) with its
    orientation applied; one clear UserError for every bad one, before any large allocation.
    draft: for a JPEG, decode at the smallest power-of-two reduction that keeps both sides >= draft."""
    if isinstance(src, Image.Image):
        _check_size("the PIL image", *src.size)
        return src
    if isinstance(src, np.ndarray):
        return _from_array(src)
    if not isinstance(src, (str, os.PathLike)):
        raise UserError(
            f"cannot read an image from a {type(src).__name__}; give a file path, a PIL image or an HxWx3 array"
        )
    path = Path(src)
    if not path.exists():
        raise UserError(f"{path}: no such image file")
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a pipe or device?)"
        raise UserError(f"{path}: {kind}, not an image file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file, not an image")
    try:
        return open_image(path, path.suffix, draft)
    except MissingExtra as e:
        raise UserError(f"{path}: {e}") from None
    except ImageSizeError as e:
        raise UserError(f"{path}: {e}") from None
    except Image.DecompressionBombError:  # PIL refuses it at open, before our own check can read the size
        raise UserError(
            f"{path}: over the {MAX_PIXELS:,}-pixel limit (a possible decompression bomb); downscale it first"
        ) from None
    except PermissionError:
        raise UserError(f"{path}: permission denied; make it readable (chmod +r)") from None
    except Exception as e:
        if not is_file_fault(e):
            raise
        kind = "truncated or corrupt image" if isinstance(e, (OSError, SyntaxError)) else type(e).__name__
        raise UserError(f"{path}: cannot decode ({kind}: {e}); re-export it as JPEG or PNG") from None


def _check_size(what: str, w: int, h: int) -> None:
    try:
        check_image_size(w, h)
    except ImageSizeError as e:
        raise UserError(f"{what}: {e}") from None


def _from_array(a: np.ndarray) -> Image.Image:
    """An HxW or HxWxC array (uint8, 16-bit or float in [0, 1] or [0, 255]) -> an RGB(A) PIL image."""
    if a.ndim == 4:
        raise UserError(f"an array of shape {a.shape} is a batch; pass a list with one HxWxC array per image")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise UserError(f"an array of shape {a.shape}: give one image as HxWxC (channels last, C = 1, 3 or 4)")
    _check_size(f"the image array of shape {a.shape}", a.shape[1], a.shape[0])
    if a.dtype.kind not in "uifb":
        raise UserError(f"an image array of dtype {a.dtype}: give uint8, uint16 or float values")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise UserError("the image array holds NaN or inf")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.dtype == np.uint16:  # 16-bit: full range to 8-bit, not clipped to white
        a = (a.astype(np.float32) / 257.0).round()
    elif a.dtype.kind == "f" and a.max(initial=0) <= 1.0:
        a = a * 255.0
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def decode_ahead(preprocess, items, workers: int = 0):
    """Yields (item, pixels or the exception it raised) in input order, with up to 2 x `workers`
    images decoded and preprocessed ahead in threads (PIL releases the GIL while it decodes and
    resizes), so the model's compute and the decoding overlap. workers=0: one per core, at most 4."""

    def run(item):
        try:
            return preprocess(item)
        except Exception as e:  # handed to the consumer, in order: errors stay per file
            return e

    workers = workers or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers, thread_name_prefix="mlx-aimv2-decode") as pool:
        window = deque()
        for item in items:
            window.append((item, pool.submit(run, item)))
            if len(window) >= 2 * workers:
                done, future = window.popleft()
                yield done, future.result()
        while window:
            done, future = window.popleft()
            yield done, future.result()
