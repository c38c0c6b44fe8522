"""Starting the server: the model and index it serves, the safety rules for where it listens, and
uvicorn running the app."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import uvicorn

from .. import owner
from ..api import load, load_default
from ..environment import limit_cache
from ..errors import UserError
from ..index import Index
from .app import build_app
from .service import Settings

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def open_settings(
    model: Optional[str] = None,
    db: Optional[Path] = None,
    token: Optional[str] = None,
    allow: Sequence[Path] = (),
    cors: Sequence[str] = (),
    max_batch: int = 32,
) -> Settings:
    """The served model: --model, else the index's own (so search and embeddings agree), else the
    default LiT model (offline: demo-lit). The index opens read-only: `index` may keep adding to it."""
    owner.run(limit_cache)  # a long-lived process: freed buffers beyond the cap go back to the system
    index = Index(db, create=False, read_only=True) if db is not None else None
    if model is not None:
        served, name = load(model), model
    elif index is not None:
        served, name = index.model, (index.info["model"] or {}).get("ref", "index")
    else:
        served, name = load_default("lit")
    folders = []
    for a in allow:
        a = Path(a).expanduser()
        if not a.is_dir():
            raise UserError(f"--allow-dir {a}: no such folder")
        folders.append(a.resolve())
    if token is not None and len(token) < 16:
        raise UserError(
            "--token: use at least 16 characters (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')"
        )
    return Settings(served, name, index, token, folders, list(cors), max_batch)


def check_host(host: str, token: Optional[str]) -> None:
    """Safe by default: listening anywhere but this machine needs a token."""
    if host not in LOCAL_HOSTS and not token:
        raise UserError(
            f"--host {host} lets other machines reach the server; pass --token (or set MLX_AIMV2_TOKEN) so "
            f"that only clients with it are answered"
        )


def run(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    check_host(host, settings.token)
    config = uvicorn.Config(build_app(settings), host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    try:
        server.run()
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
    if server.should_exit:  # stopped by Ctrl-C (or SIGTERM) after a graceful shutdown: 130, as every command
        raise KeyboardInterrupt
