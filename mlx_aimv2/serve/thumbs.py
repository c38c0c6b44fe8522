"""Thumbnails of indexed photos for the page, made once and kept beside the index
(`lib.aimv2.thumbs/<id>.jpg`, or in memory when that folder cannot be written).

A photo is named by an id derived from its path; only paths recorded in the index have an id, so
the server never opens a file the index does not hold (no traversal, whatever the request says).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path
from typing import Optional

from PIL import Image

from ..atomic import write_file
from ..errors import UserError
from ..preprocess import load_image, to_rgb

SIZE = 256


def photo_id(path: str) -> str:
    return hashlib.sha1(os.fsencode(path)).hexdigest()[:20]


class Thumbnails:
    def __init__(self, db: Path):
        self.folder = Path(str(db) + ".thumbs")
        self.memory: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def get(self, photo_id: str, path: str) -> Optional[bytes]:
        """JPEG bytes of the photo's thumbnail; None when the file no longer opens."""
        f = self.folder / f"{photo_id}.jpg"
        if photo_id in self.memory:
            return self.memory[photo_id]
        try:
            return f.read_bytes()
        except OSError:
            pass
        try:
            img = to_rgb(load_image(path, draft=SIZE))
        except UserError:
            return None
        img.thumbnail((SIZE, SIZE), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        data = buf.getvalue()
        try:
            self.folder.mkdir(exist_ok=True)
            write_file(f, lambda tmp: tmp.write_bytes(data))
        except (OSError, UserError):  # a read-only disk: keep it in memory instead
            with self.lock:
                self.memory[photo_id] = data
        return data
