"""POST /v1/chat/completions, in OpenAI's shape, for a server whose model is an Ovis2 folder:

    {"messages": [{"role": "system" | "user" | "assistant",
                   "content": "text" | [{"type": "text", "text": ...},
                                        {"type": "image_url", "image_url": {"url": "data:image/...;base64,..."}}]}],
     "max_tokens"? | "max_completion_tokens"?, "temperature"?, "top_p"?, "seed"?, "stream"?, "model"?}

Images come as data URIs (or, with --allow-dir, paths inside an allowed folder): the server fetches
no URL. The answer streams as server-sent events (`chat.completion.chunk`s, then `data: [DONE]`).
Each request's tokens are decided on the library's MLX thread one at a time, so requests interleave
token by token and none waits for another's whole answer; each has its own cache and sampling key.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from starlette.responses import JSONResponse, StreamingResponse

from .inputs import MAX_TEXT, BadRequest, decode_image, unicode_text

MAX_MESSAGES, MAX_IMAGES, MAX_TOKENS = 64, 8, 4096


def _content(content, where: str, allowed) -> list:
    """A message's content as the chat class reads it: text parts and {"image": PIL image} parts."""
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise BadRequest(400, f"{where}.content must be a string or a list of text and image_url parts")
    parts = []
    for i, part in enumerate(content):
        at = f"{where}.content[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            if len(part["text"]) > MAX_TEXT * 10:
                raise BadRequest(400, f"{at}.text is over {MAX_TEXT * 10:,} characters")
            parts.append(unicode_text(part["text"], f"{at}.text"))
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                raise BadRequest(400, f"{at}: this server fetches no URL; send the image as a data URI")
            parts.append({"image": decode_image(url, allowed)})
        else:
            raise BadRequest(400, f"{at} must be {{'type': 'text', 'text': ...}} or {{'type': 'image_url', ...}}")
    return parts


def parse_messages(data: dict, allowed) -> list:
    """The checked messages of a request body (images decoded: run off the event loop)."""
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest(400, "'messages' must be a non-empty list of {role, content}")
    if len(messages) > MAX_MESSAGES:
        raise BadRequest(400, f"'messages' holds {len(messages)}; the limit is {MAX_MESSAGES}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise BadRequest(400, f"'messages'[{i}] must be an object with role system, user or assistant")
        out.append({"role": m["role"], "content": _content(m.get("content"), f"'messages'[{i}]", allowed)})
    images = sum(not isinstance(p, str) for m in out for p in m["content"])
    if images > MAX_IMAGES:
        raise BadRequest(400, f"the messages hold {images} images; the limit is {MAX_IMAGES}")
    return out


def _number(data: dict, key: str, default, low, high, whole: bool = False):
    value = data.get(key, default)
    if value is None:
        return default
    ok = isinstance(value, int) if whole else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not low <= value <= high:
        raise BadRequest(
            400, f"'{key}' must be a {'whole ' if whole else ''}number from {low} to {high}, got {value!r}"
        )
    return value


def settings(data: dict) -> dict:
    """max_tokens, temp, top_p and seed of a request, checked."""
    most = data.get("max_completion_tokens", data.get("max_tokens"))
    return {
        "max_tokens": _number({"max_tokens": most}, "max_tokens", 256, 1, MAX_TOKENS, whole=True),
        "temp": float(_number(data, "temperature", 0.0, 0, 2)),
        "top_p": float(_number(data, "top_p", 1.0, 1e-9, 1)),
        "seed": _number(data, "seed", None, 0, 2**63 - 1, whole=True),
    }


def _chunk(base: dict, delta: dict, finish=None) -> str:
    body = {
        **base,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n"


async def completions(data: dict, chat, name: str, allowed):
    """The answer to a checked body: a chat.completion, or a stream of chunks."""
    asked = data.get("model")
    if asked not in (None, name):
        raise BadRequest(404, f"model {asked!r} is not served here; this server has {name!r} (GET /v1/models)")
    how = settings(data)
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(400, f"'stream' must be true or false, got {stream!r}")
    messages = await asyncio.to_thread(parse_messages, data, allowed)
    ids, crops = await asyncio.to_thread(chat.prepare, messages)
    pieces = chat.stream_prepared(ids, crops, **how)
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": name}

    def finish(n: int) -> str:
        return "length" if n >= how["max_tokens"] else "stop"

    if not stream:
        tokens = await asyncio.to_thread(lambda: [p.token for p in pieces])
        text = chat.tokenizer.decode(tokens, skip_special_tokens=True)
        usage = {"prompt_tokens": len(ids), "completion_tokens": len(tokens), "total_tokens": len(ids) + len(tokens)}
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish(len(tokens))}
        return JSONResponse({**base, "object": "chat.completion", "choices": [choice], "usage": usage})
    first = await asyncio.to_thread(next, pieces, None)  # a fault before the first token is still a 4xx/5xx

    async def events():
        n, piece = 0, first
        yield _chunk(base, {"role": "assistant", "content": ""})
        while piece is not None:
            n += 1
            if piece.text:
                yield _chunk(base, {"content": piece.text})
            piece = await asyncio.to_thread(next, pieces, None)
        yield _chunk(base, {}, finish(n))
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
