"""serve: the HTTP server (OpenAI-style embeddings, search, the page)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError
from .common import model_option

SERVE_EXTRA = ("starlette", "uvicorn")  # the serve extra's packages


def serve(
    model: Optional[str] = model_option(
        "an AIMv2 model for /v1/embeddings, or an Ovis2 folder for /v1/chat/completions  \\[default: the "
        "index's own, else apple/aimv2-large-patch14-224-lit, else demo-lit]"
    ),
    db: Optional[Path] = typer.Option(None, "--db", help="an index to search (POST /v1/search) and browse (the page)"),
    host: str = typer.Option("127.0.0.1", help="where to listen; anything but localhost needs --token"),
    port: int = typer.Option(8000, min=1, max=65535),
    token: Optional[str] = typer.Option(
        None, envvar="MLX_AIMV2_TOKEN", help="require 'Authorization: Bearer TOKEN' on every route"
    ),
    allow_dir: Optional[List[Path]] = typer.Option(
        None, "--allow-dir", help="a folder whose files requests may name by path (repeatable; default: none)"
    ),
    cors_origin: Optional[List[str]] = typer.Option(
        None, "--cors-origin", help="a web origin allowed to call the API from a browser (repeatable)"
    ),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="inputs per model call when requests are batched"),
):
    """Serve embeddings (OpenAI-style /v1/embeddings) or an Ovis2 chat (/v1/chat/completions) and, with --db,
    search and a page, on localhost."""
    try:
        from ..serve import check_host, open_settings, run
    except ModuleNotFoundError as e:
        missing = (e.name or "").split(".")[0]
        if missing not in SERVE_EXTRA:
            raise
        raise UserError(f"serve needs {missing}, which is not installed: pip install 'mlx-aimv2[serve]'") from None

    check_host(host, token)  # before any model loads
    settings = open_settings(model, db, token, allow_dir or [], cors_origin or [], max_batch)
    shown_host = f"[{host}]" if ":" in host else host
    typer.echo(f"serving {settings.name} on http://{shown_host}:{port}/ (Ctrl-C stops)", err=True)
    run(settings, host, port)


COMMANDS = [serve]
