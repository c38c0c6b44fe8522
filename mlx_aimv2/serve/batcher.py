"""Dynamic batching: requests that arrive together share one model call.

One queue: each request's items wait in it, and the thread that owns MLX (owner.py) drains it,
taking whatever is waiting (up to `max_batch` items, after at most `max_wait` seconds for more to
arrive) as one batch per kind of input, and hands each request its rows back on the event loop.
No second queue and no thread of the server's own wait in between, as mlx-lm's server does it. So
16 clients sending one image each are served as batches of 16, at nearly the offline batch
throughput (benchmarks/serve.py), with the results the library gives for the same inputs one call
at a time. A batch that fails is run again a request at a time: a bad item fails its own request
only, and every other request batched with it gets the answer it would have had alone.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import owner
from ..environment import release_cache


@dataclass
class _Job:
    kind: str
    items: list
    future: asyncio.Future


class Batcher:
    """`await run(kind, items)` -> (len(items), D) numpy, batched with whatever else is waiting."""

    def __init__(self, encoders: dict[str, Callable[[list], np.ndarray]], max_batch: int = 32, max_wait: float = 0.005):
        self.encoders, self.max_batch, self.max_wait = encoders, max_batch, max_wait
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._draining = False
        self._lock = threading.Lock()
        self.loop = None
        self.batches, self.inputs = 0, 0  # how many model calls served how many inputs (GET /health)

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        self.loop = None  # a drain still running settles nothing more

    async def run(self, kind: str, items: list) -> np.ndarray:
        job = _Job(kind, items, asyncio.get_running_loop().create_future())
        self.jobs.put(job)
        with self._lock:
            if not self._draining:
                self._draining = True
                owner.submit(self._drain)
        return await job.future

    def _drain(self) -> None:
        """On the owner thread: batches until the queue is empty."""
        while True:
            with self._lock:
                if self.jobs.empty():
                    self._draining = False
                    release_cache()  # idle again: the buffers of this burst's shapes go back
                    return
            jobs = [self.jobs.get()]
            size = len(jobs[0].items)
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch:  # gather what arrives within max_wait
                try:
                    jobs.append(self.jobs.get(timeout=max(deadline - time.monotonic(), 0)))
                except queue.Empty:
                    break
                size += len(jobs[-1].items)
            for kind in dict.fromkeys(j.kind for j in jobs):
                self._encode(kind, [j for j in jobs if j.kind == kind and not j.future.cancelled()])

    def _encode(self, kind: str, live: list) -> None:
        if not live:  # every client of this batch went away
            return
        batch = [x for j in live for x in j.items]
        try:
            rows = self._call(kind, batch)
        except Exception as e:
            if len(live) == 1:
                self._settle(live[0].future, error=e)
                return
            # Isolation: one request's bad item must not fail the others batched with it. Each
            # request runs again alone, so each gets its own answer - the one it would have had
            # alone - or its own error.
            for j in live:
                self._encode(kind, [j])
            return
        start = 0
        for j in live:
            self._settle(j.future, rows[start : start + len(j.items)])
            start += len(j.items)

    def _call(self, kind: str, batch: list) -> np.ndarray:
        self.batches += 1
        self.inputs += len(batch)
        return self.encoders[kind](batch)

    def _settle(self, future: asyncio.Future, result=None, error=None) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return

        def settle():
            if not future.done():
                future.set_exception(error) if error is not None else future.set_result(result)

        loop.call_soon_threadsafe(settle)
