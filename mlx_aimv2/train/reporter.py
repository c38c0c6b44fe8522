"""What a run tells its user, out of the loop (as mlx-lm's TrainingCallback): metrics.jsonl, the
progress bar, loss.png and log lines. Only rank 0 writes or prints; the other ranks' reporters
stay silent, so the loop calls them the same way on every rank."""

from __future__ import annotations

import json
import time
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
        self.last: dict = {}  # the newest logged record (its "step" says which)
        self._t0, self._seen = time.perf_counter(), 0  # images trained since the last logged step

    def log(self, message: str) -> None:
        if self.rank == 0:
            self._log(message)

    def start(self, step: int) -> None:
        """Continue the metrics of a run at `step`: what a crashed run logged past its checkpoint goes."""
        self._t0, self._seen = time.perf_counter(), 0
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

    def on_step(self, record: dict, samples: int, epoch: int, skipped: int, batch_size: int) -> dict:
        """A step's record (the trainer's _train_step): a logged step becomes a line of metrics.jsonl
        with the throughput since the last one (the probe's time not counted), and the bar moves.
        Returns what this step logged ({} when nothing)."""
        self._seen += batch_size
        self._t0 += record.get("probe_seconds", 0.0)
        probed, logged = record.get("probed", {}), {}
        if "logged" in record:
            now = time.perf_counter()
            logged = {
                "step": record["step"],
                **record["logged"],
                "images_per_s": round(self._seen / max(now - self._t0, 1e-9), 2),
                "samples": samples,
                "epoch": epoch,
                "skipped": skipped,
                **probed,
            }
            self._t0, self._seen = now, 0
            self.last = logged
            self.record(logged)
        elif probed:
            self.record({"step": record["step"], **probed})
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(
                loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", img_s=self.last.get("images_per_s", 0)
            )
        return logged

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
