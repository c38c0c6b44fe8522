"""Dynamic batching: requests that arrive together share one model call.

Each request's items wait in a queue; a single worker takes whatever is waiting (up to `max_batch`
items, after at most `max_wait` seconds for more to arrive) and runs one batch on the library's
MLX thread, then hands each request its rows. So 16 clients sending one image each are served as
batches of 16, at nearly the offline batch throughput (benchmarks/serve.py), with the results the
library gives for the same inputs one call at a time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class _Job:
    items: list
    future: asyncio.Future
    rows: list = field(default_factory=list)


class Batcher:
    """One queue per kind of input (text, image); `run(kind, items)` -> (len(items), D) numpy."""

    def __init__(self, encoders: dict[str, Callable[[list], np.ndarray]], max_batch: int = 32, max_wait: float = 0.005):
        self.encoders, self.max_batch, self.max_wait = encoders, max_batch, max_wait
        self.queues: dict[str, asyncio.Queue] = {}
        self.tasks: list[asyncio.Task] = []
        self.batches, self.inputs = 0, 0  # how many model calls served how many inputs (GET /health)

    def start(self) -> None:
        for kind in self.encoders:
            self.queues[kind] = asyncio.Queue()
            self.tasks.append(asyncio.get_running_loop().create_task(self._serve(kind)))

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def run(self, kind: str, items: list) -> np.ndarray:
        job = _Job(items, asyncio.get_running_loop().create_future())
        await self.queues[kind].put(job)
        return await job.future

    async def _serve(self, kind: str) -> None:
        queue, encode = self.queues[kind], self.encoders[kind]
        while True:
            jobs = [await queue.get()]
            size = len(jobs[0].items)
            deadline = asyncio.get_running_loop().time() + self.max_wait
            while size < self.max_batch:  # gather what arrives within max_wait
                timeout = deadline - asyncio.get_running_loop().time()
                try:
                    job = await asyncio.wait_for(queue.get(), timeout) if timeout > 0 else queue.get_nowait()
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                jobs.append(job)
                size += len(job.items)
            live = [j for j in jobs if not j.future.cancelled()]  # a client that went away
            if not live:
                continue
            batch = [x for j in live for x in j.items]
            self.batches += 1
            self.inputs += len(batch)
            try:  # off the event loop: the library's MLX thread does the work
                rows = await asyncio.to_thread(encode, batch)
            except Exception as e:  # one bad batch fails its requests, not the server
                for j in live:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            start = 0
            for j in live:
                if not j.future.done():
                    j.future.set_result(rows[start : start + len(j.items)])
                start += len(j.items)
