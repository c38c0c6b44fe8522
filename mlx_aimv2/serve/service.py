"""What the HTTP handlers serve, behind one object: the model and its batcher (the MLX work, on the
library's MLX thread), the index and its photos, and the rules of this server (token, folders a
request may name). app.py's handlers read it from `request.app.state.service`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .. import kinds
from .batcher import Batcher
from .inputs import BadRequest
from .thumbs import Thumbnails, photo_id


@dataclass
class Settings:
    model: object  # an api.AIMv2, or a vlm.chat.Ovis2Chat
    name: str
    index: Optional[object] = None  # an index.Index, opened read-only
    token: Optional[str] = None
    allowed: list = field(default_factory=list)  # folders whose files a request may name
    cors: list = field(default_factory=list)  # origins allowed to call from a browser
    max_batch: int = 32


class Service:
    def __init__(self, s: Settings):
        self.settings, self.model, self.name, self.index = s, s.model, s.name, s.index
        # an Ovis2 folder answers /v1/chat/completions; an AIMv2 model, /v1/embeddings
        self.chat = s.model if kinds.is_ovis2(s.model.folder) else None
        self.lit = self.chat is None and kinds.is_lit(s.model.config)
        encoders = {"image": self._encode_images} if self.chat is None else {}
        if self.lit:
            encoders["text"] = s.model.encode_text
        self.batcher = Batcher(encoders, max_batch=s.max_batch)
        self.thumbs = Thumbnails(s.index.path) if s.index is not None else None
        self._ids: tuple = (None, {})  # (the index's path list, id -> path)

    def _encode_images(self, images: list) -> np.ndarray:
        if self.lit:
            return self.model.encode_image(images)
        return self.model.embed(images, batch_size=self.settings.max_batch)

    def need_chat(self):
        if self.chat is None:
            raise BadRequest(404, f"{self.name} is an embedding model; serve an Ovis2 folder (--model) to chat")
        return self.chat

    def need_embedder(self):
        if self.chat is not None:
            raise BadRequest(404, f"{self.name} is a chat model; POST /v1/chat/completions, or serve an AIMv2 model")

    def need_index(self):
        if self.index is None:
            raise BadRequest(404, "this server has no index; start it with --db lib.aimv2 to search")
        return self.index

    def photos(self) -> dict:
        """id -> path of every indexed photo: the only files the server ever opens for a client."""
        paths = self.need_index().paths()
        if self._ids[0] is not paths:  # the index's list is a new object after every change
            self._ids = (paths, {photo_id(p): p for p in paths})
        return self._ids[1]
