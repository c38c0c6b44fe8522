"""Bounds the collective waits of a data-parallel run.

MLX's collectives wait forever for a rank that died, hung or was stopped (SIGSTOP), and so would
every other rank. Each rank here notes when its last step finished (and touches a heartbeat file in
the run folder, which ranks on one machine share); when no step has finished for `timeout` seconds
the watchdog names the rank that went quiet, if it can tell, and ends this rank with exit status 1.
A rank on this machine whose process is gone (kill -9, a crash) is noticed within a second, since a
collective waiting on it may never return.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

from .. import kinds
from ..atomic import process_alive


class Watchdog:
    def __init__(self, rank: int, size: int, timeout: float, run: Path):
        self.rank, self.size, self.timeout = rank, size, timeout
        self.run = Path(run)
        self.beats = self.run / ".heartbeat"
        self.beats.mkdir(parents=True, exist_ok=True)
        self.last = time.monotonic()
        self.started = time.time()
        self.done = threading.Event()
        (self.beats / f"rank{self.rank}").write_text(f"{socket.gethostname()} {os.getpid()}\n")  # who this rank is
        self.beat()
        threading.Thread(target=self._watch, daemon=True, name="mlx-aimv2-watchdog").start()

    def beat(self) -> None:
        """A step finished (every collective of it included)."""
        self.last = time.monotonic()
        (self.beats / f"rank{self.rank}").touch()

    def dead_peer(self) -> str | None:
        """A rank on this machine whose process is gone (its heartbeat file names host and pid)."""
        here = socket.gethostname()
        for r in range(self.size):
            f = self.beats / f"rank{r}"
            try:
                if f.stat().st_mtime < self.started - 1:  # left by an earlier run: not this run's rank yet
                    continue
                host, pid = f.read_text().split()
            except (OSError, ValueError):
                continue
            if r != self.rank and host == here and not process_alive(int(pid)):
                return f"rank {r} (process {pid} is gone)"
        return None

    def lost_rank(self) -> str:
        """Which rank a broken connection lost: a dead one on this machine, else (two ranks) the other."""
        return self.dead_peer() or (f"rank {1 - self.rank}" if self.size == 2 else "another rank")

    def lost_message(self, e=None) -> str:
        good = kinds.newest_checkpoint(self.run)
        cause = f" ({e})" if e else ""
        return (
            f"rank {self.rank}: lost {self.lost_rank()}{cause}; stopped. Restart every rank with --resume, "
            f"from {good or 'the start (no checkpoint yet)'}"
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self.done.set()

    def _quiet_rank(self) -> str:
        now = time.time()
        ages = {}
        for r in range(self.size):
            f = self.beats / f"rank{r}"
            if r != self.rank and f.exists():
                ages[r] = now - f.stat().st_mtime
        if not ages:
            return "another rank (its heartbeat is on another machine)"
        r = max(ages, key=ages.get)
        return f"rank {r} (its last step finished {ages[r]:.0f} s ago)"

    def _watch(self) -> None:
        while not self.done.wait(min(1.0, self.timeout / 4)):
            if self.dead_peer() is not None:  # a collective on a dead peer may never return: do not wait
                print(f"error: {self.lost_message()}", file=sys.stderr, flush=True)
                os._exit(1)
            if time.monotonic() - self.last > self.timeout:
                print(
                    f"error: rank {self.rank}: no step finished in {self.timeout:.0f} s while waiting on "
                    f"{self._quiet_rank()}; it stopped, hung or died. Stopping; continue with --resume "
                    f"(collective_timeout sets the wait)",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(1)
