"""An app's background indexing: a worker thread indexes, the UI thread shows its progress, searches
while it runs, and may cancel it. No MLX on the UI thread, no printing from the library.

    python examples/app_indexing.py examples/ --db runs/app.aimv2
    python examples/app_indexing.py examples/ --db runs/app.aimv2 --cancel-after 8

docs/app.md walks through it; tests/test_readme.py runs it.
"""

from __future__ import annotations

import argparse
import logging
import queue
import threading

import mlx_aimv2
from mlx_aimv2.errors import Cancelled


class LibraryService:
    """What an app keeps: an Index that a worker adds to, and one for searches from the UI thread
    (SQLite lets it read while the worker writes; each committed batch shows up in the next search)."""

    def __init__(self, db: str):
        self.db = db
        self.events: queue.Queue = queue.Queue()  # worker -> UI: ("progress", done, total), ("done", summary), ...
        self.cancel = threading.Event()
        self.worker = None

    def start(self, folders: list[str]) -> None:
        def work():
            try:
                with mlx_aimv2.Index(self.db, model="demo-lit") as index:
                    summary = index.add(
                        folders,
                        batch_size=4,
                        progress=lambda done, total: self.events.put(("progress", done, total)),
                        cancel=self.cancel,
                    )
                self.events.put(("done", str(summary)))
            except Cancelled:
                self.events.put(("cancelled", "stopped; the committed batches are kept"))
            except mlx_aimv2.UserError as e:  # a bad folder, a full disk: one line for the UI
                self.events.put(("error", str(e)))

        self.worker = threading.Thread(target=work, name="indexer", daemon=True)
        self.worker.start()

    def search(self, text: str, k: int = 3):
        with mlx_aimv2.Index(self.db, create=False) as index:
            return index.search(text=text, k=k)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--db", default="runs/app.aimv2")
    ap.add_argument("--cancel-after", type=int, default=None, help="cancel once this many images are done")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="library note: %(message)s")  # the library's notes
    service = LibraryService(a.db)
    service.start(a.folders)
    searched = False
    while True:  # the UI's run loop: it handles events and stays responsive
        event = service.events.get()
        if event[0] == "progress":
            done, total = event[1], event[2]
            print(f"indexed {done}/{total}")
            if not searched and done >= 8:  # the UI searches while the worker keeps going
                hits = service.search("a large orange circle in the center")
                print("meanwhile, search:", [f"{h.score:.3f} {h.path.rsplit('/', 1)[-1]}" for h in hits])
                searched = True
            if a.cancel_after is not None and done >= a.cancel_after:
                service.cancel.set()
        else:
            print(f"{event[0]}: {event[1]}")
            break
    service.worker.join()


if __name__ == "__main__":
    main()
