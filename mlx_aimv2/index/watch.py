"""Keeping an index in step with folders that change (`mlx-aimv2 index PHOTOS --db lib.aimv2 --watch`).

The `watchdog` library's observer (FSEvents on macOS, inotify on Linux) only says that something
changed under a folder; after the changes settle (no event for `settle` seconds, so a copy of 500
photos is one batch), one `Index.add` of the watched paths picks up new, changed, moved and deleted
files exactly as a normal run does: incremental, a transaction per batch, safe to kill at any time.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Sequence

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from ..errors import UserError
from ..formats import IMAGE_EXT
from ..paths import is_mac_litter_path
from .index import Index, Summary


class _Changes(FileSystemEventHandler):
    def __init__(self):
        self.seen = threading.Event()

    def on_any_event(self, event):
        paths = [os.fsdecode(p) for p in (getattr(event, "src_path", ""), getattr(event, "dest_path", "")) if p]
        paths = [p for p in paths if not is_mac_litter_path(p)]  # Finder's ._ twins and .DS_Store churn
        if (event.is_directory and paths) or any(p.lower().endswith(IMAGE_EXT) for p in paths):
            self.seen.set()


def watch(
    index: Index,
    paths: Sequence[str],
    report: Callable[[Summary], None],
    stop: threading.Event,
    settle: float = 1.0,
    **add_options,
) -> None:
    """Index `paths` now, then again after each settled burst of changes, until `stop` is set.
    report(summary) after every pass. A watched folder that disappears ends the watch with a
    UserError (the index keeps what it holds)."""
    roots = [os.path.abspath(os.path.expanduser(str(p))) for p in paths]
    folders = [r for r in roots if os.path.isdir(r)]
    if not folders:
        raise UserError("--watch follows folders; give at least one folder to index")
    changes = _Changes()
    observer = Observer()
    for folder in folders:
        observer.schedule(changes, folder, recursive=True)
    observer.start()
    try:
        report(index.add(paths, **add_options))
        while not stop.is_set():
            if not changes.seen.wait(timeout=0.25):
                continue
            while not stop.is_set():  # wait for the burst to end
                changes.seen.clear()
                if not changes.seen.wait(timeout=settle):
                    break
            gone = [f for f in folders if not os.path.isdir(f)]
            if gone:
                raise UserError(
                    f"{gone[0]}: the watched folder disappeared; stopped watching (the index keeps what it holds)"
                )
            if not stop.is_set():
                report(index.add(paths, **add_options))
    finally:
        observer.stop()
        observer.join(timeout=10)
