"""`mlx-aimv2 serve`: a local HTTP server for embeddings and search, with a page (pip install
'mlx-aimv2[serve]': Starlette and uvicorn). app.py is the ASGI app; batcher.py groups concurrent
requests into batches; inputs.py checks what clients send; thumbs.py serves indexed photos only."""

from .app import build_app
from .server import LOCAL_HOSTS, check_host, open_settings, run
from .service import Settings

__all__ = ["Settings", "build_app", "check_host", "open_settings", "run", "LOCAL_HOSTS"]
