"""What a request may send, checked: JSON bodies under a size limit, images as data URIs or bare
base64 (or a path inside a folder the server was told to allow), with the library's pixel and
aspect guards. Every refusal is a BadRequest: an HTTP status and one line."""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image

from ..errors import UserError
from ..formats import open_image
from ..tokenizer import not_unicode

MAX_BODY = 32 << 20  # bytes of JSON: a few full-size photos as base64
MAX_ITEMS = 256  # inputs per request
MAX_TEXT = 10_000  # characters per text input
_DATA_URI = re.compile(r"^data:(image/[\w.+-]+)?(;[\w=.+-]+)*;base64,(.*)$", re.S)
_B64 = re.compile(r"^[A-Za-z0-9+/\s]+={0,2}$")


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_json(body: bytes) -> dict:
    if len(body) > MAX_BODY:
        raise BadRequest(413, f"the request body is {len(body):,} bytes; the limit is {MAX_BODY:,}")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"the body is not valid JSON ({e})") from None
    except RecursionError:  # [[[[...]]]] nested past the parser's depth: the client's doing
        raise BadRequest(400, "the body's JSON is nested too deeply; send a flat object") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "the body must be a JSON object")
    return data


def looks_like_image(s: str) -> bool:
    """A data URI of an image; a bare string is text unless the request says modality=image."""
    return s.startswith("data:image/")


def decode_image(value: str, allowed: Sequence[Path] = ()) -> Image.Image:
    """A data URI, bare base64, or (when the server allows folders) a path inside one of them."""
    if not isinstance(value, str) or not value:
        raise BadRequest(400, f"an image must be a data URI, base64 or an allowed path, got {type(value).__name__}")
    m = _DATA_URI.match(value)
    if m or (len(value) > 64 and _B64.match(value[:4096])):
        payload = m.group(3) if m else value
        try:
            raw = base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as e:
            raise BadRequest(400, f"the image is not valid base64 ({e})") from None
        return _open(io.BytesIO(raw), "")
    return _open(allowed_path(value, allowed), None)


def allowed_path(value: str, allowed: Sequence[Path]) -> Path:
    """A path the server may read: inside an allowed folder after resolving links (no traversal)."""
    if not allowed:
        raise BadRequest(400, "send images as data URIs or base64 (this server reads no paths; see serve --allow-dir)")
    try:
        p = Path(value).expanduser().resolve(strict=True)
    except (OSError, RuntimeError):
        raise BadRequest(404, f"{value}: no such file") from None
    if not any(p.is_relative_to(a) for a in allowed):
        raise BadRequest(403, f"{value}: outside the folders this server may read")
    if not p.is_file():
        raise BadRequest(400, f"{value}: not a file")
    return p


def _open(src, ext: Optional[str]) -> Image.Image:
    try:
        if ext is None:  # a path: its own extension picks the decoder
            ext = os.path.splitext(str(src))[1]
        elif not ext:
            ext = _sniff(src)
        return open_image(src, ext)
    except UserError as e:
        raise BadRequest(400, str(e)) from None
    except Image.DecompressionBombError:
        raise BadRequest(413, "the image is over the pixel limit (a possible decompression bomb)") from None
    except Exception as e:  # the decoder's own words: corrupt, truncated, not an image
        raise BadRequest(400, f"cannot decode the image ({type(e).__name__}: {e})") from None


def _sniff(buf: io.BytesIO) -> str:
    """The extension for bytes with no name: HEIF/AVIF by their brand, else Pillow decides."""
    head = buf.getvalue()[:16]
    if head[4:8] == b"ftyp":
        return ".avif" if head[8:12] in (b"avif", b"avis") else ".heic"
    return ".png"  # any format Pillow opens: it reads the bytes, not the name


def text_list(value, name: str = "input", images: bool = False) -> list[str]:
    """The strings of 'input'; images=True (modality=image): every one is an image, of any length."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise BadRequest(400, f"'{name}' must be a string or a non-empty list of strings")
    if len(items) > MAX_ITEMS:
        raise BadRequest(413, f"'{name}' has {len(items)} items; the limit is {MAX_ITEMS} per request")
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise BadRequest(400, f"'{name}'[{i}] must be a string, got {type(t).__name__}")
        if len(t) > MAX_TEXT and not images and not looks_like_image(t):
            raise BadRequest(413, f"'{name}'[{i}] is {len(t):,} characters; the limit is {MAX_TEXT:,}")
        unicode_text(t, f"'{name}'[{i}]")
    return items


def unicode_text(value: str, name: str) -> str:
    """Text that is Unicode: JSON may carry a lone surrogate (\\ud800), which no tokenizer can read
    and which, let through, failed every request batched with it."""
    why = not_unicode(value)
    if why:
        raise BadRequest(400, f"{name} is not valid Unicode: {why}; send UTF-8 text")
    return value
