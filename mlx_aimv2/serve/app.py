"""The HTTP face: an ASGI app (Starlette) with the embeddings API in the OpenAI / Infinity shape,
search over an index, thumbnails of indexed photos only, and the page.

    POST /v1/embeddings  {"input": "a cat" | ["a cat", "data:image/jpeg;base64,..."], "modality"?,
                          "encoding_format"?: "float" | "base64", "model"?}
    GET  /v1/models, GET /health
    POST /v1/search      {"text" | "image" | "query" | "like": ..., "k"?}    (with --db)
    GET  /v1/dupes?threshold=0.95, GET /thumbs/{id}.jpg, GET /                (with --db)

Safe by default: `serve` binds 127.0.0.1; any other address needs a token, and a token, once set,
guards every route (a bearer header, or the page's cookie). A bad request is a 4xx with one line of
JSON: {"error": {"message": ..., "type": ...}}.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .. import __version__, kinds
from ..errors import IndexFault, ModelChanged, UserError
from ..index.query import Term, parse
from .batcher import Batcher
from .inputs import MAX_BODY, BadRequest, decode_image, looks_like_image, parse_json, text_list, unicode_text
from .thumbs import Thumbnails, photo_id

PAGE = Path(__file__).with_name("page.html")
COOKIE = "mlx_aimv2_token"


@dataclass
class Settings:
    model: object  # an api.AIMv2
    name: str
    index: Optional[object] = None  # an index.Index, opened read-only
    token: Optional[str] = None
    allowed: list = field(default_factory=list)  # folders whose files a request may name
    cors: list = field(default_factory=list)  # origins allowed to call from a browser
    max_batch: int = 32


def error(status: int, message: str) -> JSONResponse:
    kind = {401: "authentication_error", 403: "permission_error", 404: "not_found", 409: "conflict", 413: "request_too_large",
            500: "server_error"}  # fmt: skip
    return JSONResponse({"error": {"message": message, "type": kind.get(status, "invalid_request_error")}}, status)


def build_app(s: Settings) -> Starlette:
    model = s.model
    lit = kinds.is_lit(model.config)

    def encode_images(images: list) -> np.ndarray:
        if lit:
            return model.encode_image(images)
        return model.embed(images, batch_size=s.max_batch)

    encoders = {"image": encode_images}
    if lit:
        encoders["text"] = model.encode_text
    batcher = Batcher(encoders, max_batch=s.max_batch)
    thumbs = Thumbnails(s.index.path) if s.index is not None else None
    ids: dict = {"list": None, "paths": {}}

    def photos() -> dict:
        """id -> path of every indexed photo: the only files the server ever opens for a client."""
        paths = s.index.paths()
        if ids["list"] is not paths:  # the index's list is a new object after every change
            ids["paths"] = {photo_id(p): p for p in paths}
            ids["list"] = paths
        return ids["paths"]

    async def body(request: Request) -> dict:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY:
            raise BadRequest(413, f"the request body is {int(declared):,} bytes; the limit is {MAX_BODY:,}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise BadRequest(413, f"the request body is over the {MAX_BODY:,}-byte limit")
            chunks.append(chunk)
        return parse_json(b"".join(chunks))

    async def health(request: Request):
        return JSONResponse(
            {
                "status": "ok",
                "model": s.name,
                "index": str(s.index.path) if s.index else None,
                "batches": {"model_calls": batcher.batches, "inputs": batcher.inputs},
            }
        )

    async def models(request: Request):
        entry = {
            "id": s.name,
            "object": "model",
            "owned_by": "mlx-aimv2",
            "created": int(time.time()),
            "embedding_dim": model.embedding_dim,
            "modalities": ["text", "image"] if lit else ["image"],
        }
        return JSONResponse({"object": "list", "data": [entry]})

    async def embeddings(request: Request):
        data = await body(request)
        if "input" not in data:
            raise BadRequest(400, "'input' is missing: a string, or a list of strings (text or image data URIs)")
        modality = data.get("modality")
        if modality not in (None, "text", "image"):
            raise BadRequest(400, f"'modality' must be 'text' or 'image', got {modality!r}")
        items = text_list(data["input"], images=modality == "image")
        fmt = data.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise BadRequest(400, f"'encoding_format' must be 'float' or 'base64', got {fmt!r}")
        asked = data.get("model")
        if asked not in (None, s.name):
            raise BadRequest(404, f"model {asked!r} is not served here; this server has {s.name!r} (GET /v1/models)")
        kinds = [
            "image" if modality == "image" or (modality is None and looks_like_image(x)) else "text" for x in items
        ]
        if "text" in kinds and not lit:
            raise BadRequest(400, f"{s.name} is an image-only model; send images, or serve a LiT model for text")
        images = [await asyncio.to_thread(decode_image, x, s.allowed) for x, k in zip(items, kinds) if k == "image"]
        texts = [x for x, k in zip(items, kinds) if k == "text"]
        parts = await asyncio.gather(
            batcher.run("image", images) if images else _none(),
            batcher.run("text", texts) if texts else _none(),
        )
        rows, taken = [], {"image": 0, "text": 0}
        for k in kinds:
            rows.append(parts[0 if k == "image" else 1][taken[k]])
            taken[k] += 1
        out = []
        for i, r in enumerate(rows):
            r = np.asarray(r, np.float32)
            vec = base64.b64encode(r.astype("<f4").tobytes()).decode() if fmt == "base64" else r.tolist()
            out.append({"object": "embedding", "index": i, "embedding": vec})
        tokens = sum(len(t.split()) for t in texts)
        return JSONResponse(
            {"object": "list", "data": out, "model": s.name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        )

    def need_index():
        if s.index is None:
            raise BadRequest(404, "this server has no index; start it with --db lib.aimv2 to search")

    def hits_json(hits) -> list:
        return [{"path": h.path, "score": round(h.score, 6), "id": photo_id(h.path)} for h in hits]

    async def search(request: Request):
        need_index()
        data = await body(request)
        k = data.get("k", 12)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1000:
            raise BadRequest(400, f"'k' must be a whole number from 1 to 1000, got {k!r}")
        asked = [key for key in ("text", "image", "query", "like") if data.get(key) is not None]
        if len(asked) != 1:
            raise BadRequest(400, "give one of 'text', 'image', 'query' (terms with weights) or 'like' (a photo id)")
        key, value = asked[0], data[asked[0]]
        if key == "like":
            path = (await asyncio.to_thread(photos)).get(value) if isinstance(value, str) else None
            if path is None:
                raise BadRequest(404, f"'like': {value!r} is not a photo of this index")
            hits = await asyncio.to_thread(s.index.similar, path, k)
        elif key == "text":
            if not isinstance(value, str) or not value.strip():
                raise BadRequest(400, "'text' must be a non-empty string")
            unicode_text(value, "'text'")
            hits = await asyncio.to_thread(s.index.search, text=value, k=k)
        elif key == "image":
            image = await asyncio.to_thread(decode_image, value, s.allowed)
            hits = await asyncio.to_thread(s.index.search, image=image, k=k)
        else:
            terms = await asyncio.to_thread(_terms, value, s.allowed)
            hits = await asyncio.to_thread(s.index.search, query=terms, k=k)
        return JSONResponse({"results": hits_json(hits)})

    async def dupes(request: Request):
        need_index()
        raw = request.query_params.get("threshold", "0.95")
        try:
            threshold = float(raw)
        except ValueError:
            raise BadRequest(400, f"'threshold' must be a number, got {raw!r}") from None
        groups = await asyncio.to_thread(s.index.dupes, threshold)
        return JSONResponse({"groups": [hits_json(g) for g in groups]})

    async def thumb(request: Request):
        need_index()
        pid = request.path_params["pid"]
        path = (await asyncio.to_thread(photos)).get(pid)
        if path is None:
            raise BadRequest(404, "no such photo in this index")
        data = await asyncio.to_thread(thumbs.get, pid, path)
        if data is None:
            raise BadRequest(404, "the photo no longer opens (moved, deleted or damaged since it was indexed)")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    async def page(request: Request):
        html = PAGE.read_text().replace("{{MODEL}}", s.name).replace("{{VERSION}}", __version__)
        html = html.replace("{{INDEX}}", str(s.index.path.name) if s.index else "")
        resp = HTMLResponse(html)
        given = request.query_params.get("token")
        if s.token and given and hmac.compare_digest(given, s.token):  # the page's later calls carry a cookie
            resp.set_cookie(COOKIE, s.token, httponly=True, samesite="strict")
        return resp

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()

    routes = [
        Route("/", page),
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/search", search, methods=["POST"]),
        Route("/v1/dupes", dupes),
        Route("/thumbs/{pid}.jpg", thumb),
    ]
    middleware = [Middleware(_Guard, token=s.token)]
    if s.cors:  # outside the token guard: a browser's preflight carries no token
        middleware.insert(
            0, Middleware(CORSMiddleware, allow_origins=s.cors, allow_methods=["GET", "POST"], allow_headers=["*"])
        )
    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={BadRequest: _bad, UserError: _user, 404: _not_found, 405: _not_allowed, Exception: _bug},
    )


async def _none():
    return []


def _terms(value, allowed) -> list:
    """'query': the string syntax of index/query.py, or [{"text"|"image": ..., "weight": w}, ...]."""
    if isinstance(value, str):
        return parse(unicode_text(value, "'query'"), files=False)  # a client's words never name a file on this machine
    if not isinstance(value, list) or not value:
        raise BadRequest(400, "'query' must be a string or a non-empty list of {text|image, weight} terms")
    terms = []
    for i, t in enumerate(value):
        if not isinstance(t, dict) or len({"text", "image"} & set(t)) != 1:
            raise BadRequest(400, f"'query'[{i}] must be an object with 'text' or 'image' (and 'weight')")
        w = t.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise BadRequest(400, f"'query'[{i}].weight must be a number, got {w!r}")
        if "text" in t:
            if not isinstance(t["text"], str) or not t["text"].strip():
                raise BadRequest(400, f"'query'[{i}].text must be a non-empty string")
            terms.append(Term(unicode_text(t["text"], f"'query'[{i}].text"), float(w), False))
        else:
            terms.append(Term(decode_image(t["image"], allowed), float(w), True))
    return terms


class _Guard:
    """Bearer-token check on every route when a token is set (header, or the page's cookie)."""

    def __init__(self, app, token: Optional[str]):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.token:
            return await self.app(scope, receive, send)
        request = Request(scope)
        given = request.headers.get("authorization", "")
        given = given[7:] if given.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
        if scope["path"] == "/" and request.query_params.get("token"):
            given = request.query_params["token"]
        if not given or not hmac.compare_digest(given, self.token):
            return await error(401, "missing or wrong token: send 'Authorization: Bearer TOKEN'")(scope, receive, send)
        return await self.app(scope, receive, send)


async def _bad(request, e: BadRequest):
    return error(e.status, str(e))


async def _user(request, e: UserError):
    """A request's fault is a 4xx; the index's (damaged: 500, built with another model: 409) is not."""
    if isinstance(e, ModelChanged):
        return error(409, str(e))
    if isinstance(e, IndexFault):
        return error(500, str(e))
    return error(400, str(e))


async def _not_found(request, e):
    return error(404, f"no route {request.url.path}; see GET /v1/models, POST /v1/embeddings, POST /v1/search")


async def _not_allowed(request, e):
    return error(405, f"{request.method} is not allowed on {request.url.path}")


async def _bug(request, e: Exception):
    return error(500, f"internal error ({type(e).__name__}: {e}); please report it")
