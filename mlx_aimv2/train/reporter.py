"""What a run tells its user, out of the loop (as mlx-lm's TrainingCallback): metrics.jsonl, the
progress bar, loss.png and log lines. Only rank 0 writes or prints; the other ranks' reporters
stay silent, so the loop calls them the same way on every rank."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from ..atomic import write_file
from ..viz import plot_curves


class Reporter:
    def __init__(self, out: Path, rank: int, steps: int, log=print, progress: bool = True):
        self.file = Path(out) / "metrics.jsonl"
        self.plot = Path(out) / "loss.png"
        self.rank, self.steps, self._log, self.progress = rank, steps, log, progress
        self.records: list = []
        self.bar: Optional[tqdm] = None

    def log(self, message: str) -> None:
        if self.rank == 0:
            self._log(message)

    def start(self, step: int) -> None:
        """Continue the metrics of a run at `step`: what a crashed run logged past its checkpoint goes."""
        if self.rank != 0:
            return
        self.records = _read_metrics(self.file, upto=step)
        _rewrite_metrics(self.file, self.records)
        if self.progress:
            self.bar = tqdm(total=self.steps, initial=step, unit="step", desc="train", dynamic_ncols=True)

    def record(self, row: dict) -> None:
        """One line of metrics.jsonl, appended at once (a crash keeps what was logged)."""
        if self.rank != 0:
            return
        self.records.append(row)
        with open(self.file, "a") as f:
            f.write(json.dumps(row) + "\n")

    def step(self, loss: float, lr: float, images_per_s: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=images_per_s)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def finish(self) -> None:
        """The metrics file as recorded, and the loss plot."""
        if self.rank != 0:
            return
        _rewrite_metrics(self.file, self.records)
        if self.records:
            plot_curves(self.records, self.plot)


def _read_metrics(f: Path, upto: int) -> list:
    if not f.is_file():
        return []
    rows = []
    for line in f.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("step", 0) <= upto:
            rows.append(r)
    return rows


def _rewrite_metrics(f: Path, records: list) -> None:
    write_file(f, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in records)))
