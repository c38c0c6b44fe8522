"""The HTTP face: an ASGI app (Starlette) with the embeddings API in the OpenAI / Infinity shape,
search over an index, thumbnails of indexed photos only, and the page.

    POST /v1/embeddings  {"input": "a cat" | ["a cat", "data:image/jpeg;base64,..."], "modality"?,
                          "encoding_format"?: "float" | "base64", "model"?}
    POST /v1/chat/completions  {"messages": [...], "stream"?, ...}  (serving an Ovis2 folder: chat.py)
    GET  /v1/models, GET /health
    POST /v1/search      {"text" | "image" | "query" | "like": ..., "k"?}    (with --db)
    GET  /v1/dupes?threshold=0.95, GET /thumbs/{id}.jpg, GET /                (with --db)

Safe by default: `serve` binds 127.0.0.1; any other address needs a token, and a token, once set,
guards every route (a bearer header, or the page's cookie). A bad request is a 4xx with one line of
JSON: {"error": {"message": ..., "type": ...}}. Each handler is a function of the request; what it
serves (model, batcher, index) is one Service object in `request.app.state.service` (service.py).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import time
from contextlib import asynccontextmanager
from html import escape
from pathlib import Path
from typing import Optional

import numpy as np
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..errors import UserError
from ..index.faults import IndexFault, ModelChanged
from ..index.query import Term, parse
from .chat import completions
from .inputs import MAX_BODY, BadRequest, decode_image, looks_like_image, parse_json, text_list, unicode_text
from .service import Service, Settings
from .thumbs import photo_id

PAGE = Path(__file__).with_name("page.html")
CHAT_PAGE = Path(__file__).with_name("chat.html")  # an Ovis2 server's page: ask about an image
COOKIE = "mlx_aimv2_token"


def error(status: int, message: str) -> JSONResponse:
    kind = {401: "authentication_error", 403: "permission_error", 404: "not_found", 409: "conflict", 413: "request_too_large",
            500: "server_error"}  # fmt: skip
    return JSONResponse({"error": {"message": message, "type": kind.get(status, "invalid_request_error")}}, status)


def _service(request: Request) -> Service:
    return request.app.state.service


async def _body(request: Request) -> dict:
    """The JSON body, refused past MAX_BODY before it is all read."""
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
    s = _service(request)
    return JSONResponse(
        {
            "status": "ok",
            "model": s.name,
            "index": str(s.index.path) if s.index else None,
            "batches": {"model_calls": s.batcher.batches, "inputs": s.batcher.inputs},
        }
    )


async def models(request: Request):
    s = _service(request)
    entry = {"id": s.name, "object": "model", "owned_by": "mlx-aimv2", "created": int(time.time())}
    if s.chat is not None:
        entry.update(modalities=["text", "image"], context_length=s.chat.context)
    else:
        entry.update(embedding_dim=s.model.embedding_dim, modalities=["text", "image"] if s.lit else ["image"])
    return JSONResponse({"object": "list", "data": [entry]})


def _embedding_request(data: dict, s: Service) -> tuple[list, list, str]:
    """(items, each item's kind, the encoding format) of a checked /v1/embeddings body."""
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
    kinds = ["image" if modality == "image" or (modality is None and looks_like_image(x)) else "text" for x in items]
    if "text" in kinds and not s.lit:
        raise BadRequest(400, f"{s.name} is an image-only model; send images, or serve a LiT model for text")
    return items, kinds, fmt


async def embeddings(request: Request):
    s = _service(request)
    s.need_embedder()
    items, kinds, fmt = _embedding_request(await _body(request), s)
    images = [
        await asyncio.to_thread(decode_image, x, s.settings.allowed) for x, k in zip(items, kinds) if k == "image"
    ]
    texts = [x for x, k in zip(items, kinds) if k == "text"]
    parts = await asyncio.gather(
        s.batcher.run("image", images) if images else _none(),
        s.batcher.run("text", texts) if texts else _none(),
    )
    taken = {"image": iter(parts[0]), "text": iter(parts[1])}
    out = []
    for i, k in enumerate(kinds):
        r = np.asarray(next(taken[k]), np.float32)
        vec = base64.b64encode(r.astype("<f4").tobytes()).decode() if fmt == "base64" else r.tolist()
        out.append({"object": "embedding", "index": i, "embedding": vec})
    tokens = sum(len(t.split()) for t in texts)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return JSONResponse({"object": "list", "data": out, "model": s.name, "usage": usage})


async def chat_completions(request: Request):
    s = _service(request)
    chat = s.need_chat()
    return await completions(await _body(request), chat, s.name, s.settings.allowed)


def _hits_json(hits) -> list:
    return [{"path": h.path, "score": round(h.score, 6), "id": photo_id(h.path)} for h in hits]


async def search(request: Request):
    s = _service(request)
    index = s.need_index()
    data = await _body(request)
    k = data.get("k", 12)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1000:
        raise BadRequest(400, f"'k' must be a whole number from 1 to 1000, got {k!r}")
    asked = [key for key in ("text", "image", "query", "like") if data.get(key) is not None]
    if len(asked) != 1:
        raise BadRequest(400, "give one of 'text', 'image', 'query' (terms with weights) or 'like' (a photo id)")
    key, value = asked[0], data[asked[0]]
    if key == "like":
        path = (await asyncio.to_thread(s.photos)).get(value) if isinstance(value, str) else None
        if path is None:
            raise BadRequest(404, f"'like': {value!r} is not a photo of this index")
        hits = await asyncio.to_thread(index.similar, path, k)
    elif key == "text":
        if not isinstance(value, str) or not value.strip():
            raise BadRequest(400, "'text' must be a non-empty string")
        hits = await asyncio.to_thread(index.search, text=unicode_text(value, "'text'"), k=k)
    elif key == "image":
        image = await asyncio.to_thread(decode_image, value, s.settings.allowed)
        hits = await asyncio.to_thread(index.search, image=image, k=k)
    else:
        terms = await asyncio.to_thread(_terms, value, s.settings.allowed)
        hits = await asyncio.to_thread(index.search, query=terms, k=k)
    return JSONResponse({"results": _hits_json(hits)})


async def dupes(request: Request):
    index = _service(request).need_index()
    raw = request.query_params.get("threshold", "0.95")
    try:
        threshold = float(raw)
    except ValueError:
        raise BadRequest(400, f"'threshold' must be a number, got {raw!r}") from None
    groups = await asyncio.to_thread(index.dupes, threshold)
    return JSONResponse({"groups": [_hits_json(g) for g in groups]})


async def thumb(request: Request):
    s = _service(request)
    pid = request.path_params["pid"]
    path = (await asyncio.to_thread(s.photos)).get(pid)
    if path is None:
        raise BadRequest(404, "no such photo in this index")
    data = await asyncio.to_thread(s.thumbs.get, pid, path)
    if data is None:
        raise BadRequest(404, "the photo no longer opens (moved, deleted or damaged since it was indexed)")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


async def page(request: Request):
    s = _service(request)
    html = (PAGE if s.chat is None else CHAT_PAGE).read_text().replace("{{MODEL}}", escape(s.name))
    html = html.replace("{{VERSION}}", __version__)
    html = html.replace("{{INDEX}}", escape(s.index.path.name) if s.index else "")
    resp = HTMLResponse(html)
    given, token = request.query_params.get("token"), s.settings.token
    if token and given and hmac.compare_digest(given, token):  # the page's later calls carry a cookie
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict")
    return resp


ROUTES = [
    Route("/", page),
    Route("/health", health),
    Route("/v1/models", models),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/search", search, methods=["POST"]),
    Route("/v1/dupes", dupes),
    Route("/thumbs/{pid}.jpg", thumb),
]


def build_app(settings: Settings) -> Starlette:
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        yield
        await service.batcher.stop()

    middleware = [Middleware(_Guard, token=settings.token)]
    if settings.cors:  # outside the token guard: a browser's preflight carries no token
        cors = Middleware(
            CORSMiddleware, allow_origins=settings.cors, allow_methods=["GET", "POST"], allow_headers=["*"]
        )
        middleware.insert(0, cors)
    app = Starlette(
        routes=ROUTES,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={BadRequest: _bad, UserError: _user, 404: _not_found, 405: _not_allowed, Exception: _bug},
    )
    app.state.service = service
    return app


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
    return error(
        404,
        f"no route {request.url.path}; see GET /v1/models, POST /v1/embeddings, POST /v1/chat/completions, "
        f"POST /v1/search",
    )


async def _not_allowed(request, e):
    return error(405, f"{request.method} is not allowed on {request.url.path}")


async def _bug(request, e: Exception):
    return error(500, f"internal error ({type(e).__name__}: {e}); please report it")
