"""The training loop: data -> compiled step -> reporter, checkpoints, export. What it trains is the
objective's business (objectives/), what it says is the reporter's, where it writes is snapshots'.

    trainer = Trainer(cfg)          # builds the objective, data, tokenizer, model, optimizer (and resumes)
    trainer.run()                   # trains to cfg.steps, checkpointing every cfg.save_every
    trainer.run(stop=event, on_step=fn)  # from an app's worker thread: its Stop button, its progress
"""

from __future__ import annotations

import io
import json
import math
import shutil
import signal
import threading
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import numpy as np
from PIL import Image

from .. import cpu, kinds, owner
from ..atomic import remove_orphans
from ..config import TrainConfig
from ..data.sources import Sample, first_sample
from ..data.stream import Skips, require_mlx_data
from ..errors import UserError
from ..paths import children
from ..runs import snapshots
from .objectives import objective_class
from .optim import DecoupledAdamW, schedule
from .reporter import Reporter
from .step import make_step
from .watchdog import Watchdog


class Trainer:
    """One training run. Safe to drive from any one thread (a macOS app's worker thread): signal
    handlers are installed only on the main thread; elsewhere `run(stop=event)` stops it at a step
    boundary with a checkpoint, and `on_step(record)` reports progress. progress=False here silences
    every bar of the run (run(progress=...) may override it for the loop's own bar)."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, log=print, progress: bool = True):
        self.cfg, self.log, self.progress = cfg, log, progress
        require_mlx_data()  # before anything is made: one line on a Python without its wheel
        cpu.warn_if_slow_blas()
        # every MLX call of a run is made on the library's owner thread (owner.py), whichever thread makes
        # the Trainer: MLX's per-thread state (its compile cache among it) then never dies with an app's
        # worker thread, whose exit could otherwise race the interpreter's and abort the process
        self.world = owner.run(mx.distributed.init)
        self.rank, self.size = self.world.rank(), self.world.size()
        self.out = Path(cfg.out)
        objective = objective_class(cfg.objective)  # an unknown name is refused before the run folder is made
        if cfg.batch_size % (self.size * cfg.accum):
            raise UserError(f"batch_size {cfg.batch_size} must be divisible by ranks x accum = {self.size * cfg.accum}")
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"--out {self.out}: is a file; give a folder for the run")
        self.existed = self.out.is_dir()
        self.before = {p.name for p in children(self.out)} if self.existed else set()
        self.out.mkdir(parents=True, exist_ok=True)
        self.lock = snapshots.lock_run(self.out, self.log) if self.rank == 0 else None
        try:
            owner.run(self._open, objective, resume)
        except BaseException:  # a run that could not start leaves nothing: no .lock, tokenizer or empty folder
            self._discard_new()
            raise

    def _discard_new(self) -> None:
        if self.rank != 0:
            return
        if self.lock is not None:
            self.lock.close()
            self.lock = None
        if not self.existed:
            shutil.rmtree(self.out, ignore_errors=True)
            return
        for name in {p.name for p in children(self.out)} - self.before:
            p = self.out / name
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def _open(self, objective, resume: bool) -> None:
        cfg = self.cfg
        found = kinds.run_checkpoints(self.out)
        if resume and not found:
            raise UserError(f"{self.out}: no checkpoint to resume from; start without --resume")
        if not resume and found:
            raise UserError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")
        if self.rank == 0:
            for folder in (self.out, self.out / "checkpoints"):
                for p in remove_orphans(folder):
                    self.log(f"removed {p.name}, left by a run that was killed while writing")
        # rank 0 speaks; a plain function, not a bound method: the objective holds it, and the trainer
        # must be freed (its run folder's lock released) as soon as its last reference goes
        self.say = self.log if self.rank == 0 else _silent
        self.objective = objective(cfg, self.out, self.rank, self.size, self.say)
        for note in self.objective.notes():
            self.say(note)
        if cfg.warmup >= cfg.steps:
            self.say(f"note: warmup ({cfg.warmup}) is not shorter than steps ({cfg.steps}): lr never reaches {cfg.lr}")
        self._setup_data()
        self.probe = self.objective.evaluator() if self.rank == 0 else None  # the ranks' models are identical
        if self.probe is not None:
            when = f"every {cfg.eval_every} steps and at the end" if cfg.eval_every else "at the end"
            self.say(f"eval: {self.probe.about}, {when}")
        mx.random.seed(cfg.seed)  # identical initial weights on every rank
        self.model = self.objective.build(self.tokenizer)
        mx.eval(self.model.parameters())
        self.lr = schedule(cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr)
        self.optimizer = DecoupledAdamW(
            self.lr, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps, scale=self.objective.lr_scale
        )
        self.optimizer.init(self.model.trainable_parameters())
        self.step = 0
        self.resume_from = self._resume(found) if resume else None

    # -- set-up -----------------------------------------------------------------------------
    def _setup_data(self):
        """Names the sources, reads one sample (the images' size; a corpus with none fails here, before
        any step) and a bounded sample of captions (the run's BPE); nothing else is read up front."""
        cfg = self.cfg
        if not cfg.data:
            raise UserError(
                "no training data; pass --data (a captions file, folder or tar shards), "
                "e.g. from `mlx-aimv2 data synth data/synth --n 2000`"
            )
        self.sources = self.objective.sources(cfg.data, cfg.images)
        self._note_image_size(first_sample(self.sources, cfg.data))
        self.tokenizer = self.objective.tokenizer(self.sources)
        per_rank = cfg.batch_size // self.size
        self.stream = self.objective.stream(self.sources, self.tokenizer, per_rank, self._barrier, self.progress)
        if self.size > 1 and not getattr(self.stream, "by_shards", True):
            self.say(
                f"note: {len(self.sources)} shard(s) for {self.size} ranks: every rank reads them all and keeps "
                f"one sample in {self.size}; with at least as many shards as ranks each reads its own"
            )

    def _barrier(self) -> None:
        if self.size > 1:
            owner.run(lambda: mx.distributed.all_sum(mx.array([0]), group=self.world).item())

    def _note_image_size(self, sample: Sample):
        """Say so when the data's images are smaller than the training resolution (read from one header)."""
        try:
            with Image.open(io.BytesIO(sample.read_bytes())) as im:
                w, h = im.size
        except Exception:
            return  # an unreadable first image is counted later, like any other
        size = self.objective.image_size
        if min(w, h) < size:
            own = self.objective.inputs == "images" and not self.cfg.init  # an init fixes the size
            hint = "; set --image-size to train nearer their size" if own else ""
            self.say(
                f"note: the images are about {w}x{h} px and training runs at {size} px, so they are upsampled{hint}"
            )

    def _resume(self, found: list) -> Path:
        """Restore the newest checkpoint that restores; say why each newer one did not."""
        errors = []
        for ckpt in found:
            try:
                self._restore(ckpt)
                return ckpt
            except UserError as e:
                errors.append(str(e))
                self.say(f"cannot resume from {ckpt.name}: {e}; trying the one before")
        raise UserError(f"none of the {len(found)} checkpoint(s) in {self.out} can be resumed; the newest: {errors[0]}")

    def _restore(self, ckpt: Path):
        state = kinds.read_run_state(ckpt)
        snapshots.restore(ckpt, self.model, self.optimizer)
        self.step = int(state["step"])
        streams = state.get("streams") or [{}] * len(state.get("positions", [0]))  # older: positions only
        if len(streams) != self.size:
            raise UserError(
                f"{ckpt}: saved by {len(streams)} rank(s), resumed on {self.size}; resume with the same number of ranks"
            )
        note = self.stream.restore(streams[self.rank])
        if note:
            self.say(f"note: {note}")
        self.say(f"resumed from {ckpt} at step {self.step}")

    # -- the loop ---------------------------------------------------------------------------
    def _key(self, step: int) -> mx.array:
        return mx.random.key((self.cfg.seed << 32) + step)

    def _stream_states(self) -> list:
        """Every rank's stream state (JSON of varying length), gathered as bytes padded to the longest."""
        mine = np.frombuffer(json.dumps(self.stream.state()).encode(), np.uint8)
        if self.size == 1:
            return [json.loads(mine.tobytes())]
        lengths = mx.distributed.all_gather(mx.array([len(mine)]), group=self.world)
        lengths = np.array(lengths).reshape(-1).tolist()
        padded = np.zeros(max(lengths), np.uint8)
        padded[: len(mine)] = mine
        every = np.array(mx.distributed.all_gather(mx.array(padded)[None], group=self.world))
        return [json.loads(every[r, :n].tobytes()) for r, n in enumerate(lengths)]

    def _anyone_stops(self, mine: bool) -> bool:
        """Ranks stop together, at the same step boundary: a signal to one rank stops them all."""
        if self.size == 1:
            return mine
        return owner.run(lambda: mx.distributed.all_sum(mx.array([int(mine)]), group=self.world).item() > 0)

    def save(self) -> Optional[Path]:
        """Checkpoint now (rank 0 writes); weights that are not finite are never written, so the
        newest checkpoint is always one a run can resume from."""
        return owner.run(self._save)

    def _save(self) -> Optional[Path]:
        streams = self._stream_states()  # a collective: every rank takes part
        self.skips = _all_skips(streams)
        if self.rank != 0:
            return None
        if not snapshots.healthy([self.model.parameters(), self.optimizer.state]):
            self.log(f"step {self.step}: weights are not finite; not checkpointed")
            return kinds.newest_checkpoint(self.out)
        state = {
            "kind": kinds.RUN_OF_OBJECTIVE[self.cfg.objective],
            "streams": streams,
            "config": self.cfg.to_dict(),
            **self.objective.state(self.model),
            "skipped": self.skips.to_json(),
        }
        return snapshots.save(self.out, self.step, self.model, self.optimizer, state, self.cfg.keep)

    def run(
        self,
        progress: Optional[bool] = None,
        until: Optional[int] = None,
        stop=None,
        on_step: Optional[Callable[[dict], None]] = None,
    ) -> dict:
        """Train to cfg.steps; `until` stops earlier as an interrupt would (checkpoint, no export).
        stop: anything with is_set() (a threading.Event): once set, the run ends at the next step
        boundary with a checkpoint, as Ctrl-C does. on_step(record): after every step, with "step",
        "loss", "lr" and, on logged steps, the logged values. progress: the loop's bar (default:
        as the Trainer was made). Returns the final step, its own loss, the last logged record
        ("last", which may be of an earlier step), the checkpoint and whether it was interrupted."""
        progress = self.progress if progress is None else progress
        self._on_step = on_step
        if self.rank == 0 and self.lock is None:
            self.lock = snapshots.lock_run(self.out, self.log)
        start = self.step
        try:
            return self._run(progress, until, _Stop(stop))
        except BaseException:
            if self.resume_from is None and self.step == start == 0:
                self._discard_new()  # failed before its first step (its data could not fill a batch)
            raise
        finally:
            if self.lock is not None:
                self.lock.close()  # releases the run folder
                self.lock = None

    def _run(self, progress: bool, until: Optional[int], stop: "_Stop") -> dict:
        """The loop: batch, step, report, save. Its MLX work (the step, the probe, the checkpoint) runs
        on the library's owner thread, a step at a time, whichever thread drives the loop."""
        cfg = self.cfg
        step_fn = owner.run(make_step, self.objective, self.model, self.optimizer, cfg, self.world)
        self.out.mkdir(parents=True, exist_ok=True)
        report = Reporter(self.out, self.rank, cfg.steps, self.log, progress)
        report.start(self.step)
        loss = float("nan")
        with ExitStack() as held:
            held.callback(report.close)
            held.enter_context(stop.on_signals())
            watchdog = (
                held.enter_context(Watchdog(self.rank, self.size, cfg.collective_timeout, self.out))
                if self.size > 1
                else None
            )
            # the loader's threads set OpenBLAS to one thread for the whole process: put it back after
            held.callback(cpu.reset_blas_threads)
            # OpenBLAS's thread count for the whole run: one per CPU stream where the step spreads over them,
            # else the default. Held, not set per step: a count that changes between steps changes sgemm's
            # last bits, and a run would not repeat itself
            held.enter_context(cpu.blas_for(self.model))
            batches = held.enter_context(closing(iter(self.stream)))  # closed: the loader's threads stop now
            try:
                while self.step < cfg.steps and not self._anyone_stops(stop.is_set()):
                    record = owner.run(self._train_step, step_fn, next(batches))
                    loss = record["loss"]
                    if watchdog is not None:
                        watchdog.beat()
                    self._report(report, record)
                    if self.step % cfg.save_every == 0 and self.step < cfg.steps:
                        self.save()
                    if until is not None and self.step >= until:
                        stop.set()
                interrupted = stop.is_set() or self.step < cfg.steps  # a peer asked: this rank stops too
                path = self.save()  # a collective too, still under the watchdog
            except RuntimeError as e:
                if watchdog is None or not _peer_lost(e):
                    raise
                raise UserError(watchdog.lost_message(e)) from None
        report.finish()
        if self.skips.count:  # every rank's, from the final save
            report.log(f"skipped {self.skips.summary()}")
        if interrupted:
            report.log(f"interrupted at step {self.step}; saved {path}; continue with --resume")
        elif self.rank == 0:
            self.export(self.result_folder)
        return {"step": self.step, "loss": loss, "checkpoint": path, "interrupted": interrupted, "last": report.last}

    def _train_step(self, step_fn, batch: dict) -> dict:
        """One optimizer step (on the owner thread): the step's record - its loss and learning rate, and
        on logged steps every part of the loss, the gradient norm and the probe's figures."""
        cfg = self.cfg
        parts, norm = step_fn(mx.array(batch[self.objective.inputs]), mx.array(batch["ids"]), self._key(self.step))
        mx.eval(parts, norm, self.model.state, self.optimizer.state)
        loss = parts["loss"].item()
        if not math.isfinite(loss):
            good = kinds.newest_checkpoint(self.out)  # only finite weights are ever checkpointed
            raise UserError(
                f"loss became {loss} at step {self.step + 1}; stopped. Last good checkpoint: "
                f"{good or 'none'}. Lower lr or raise warmup, then --resume"
            )
        self.step += 1
        record = {"step": self.step, "loss": loss, "lr": float(self.lr(self.step - 1))}
        if self.step % cfg.log_every == 0 or self.step == cfg.steps:
            record["logged"] = {
                **{k: round(v.item(), 6) for k, v in parts.items()},
                "lr": record["lr"],
                "grad_norm": round(norm.item(), 4),
            }
        if self.probe is not None and ((cfg.eval_every and self.step % cfg.eval_every == 0) or self.step == cfg.steps):
            record["probed"] = self.probe.measure(self.model)
            record["probe_seconds"] = self.probe.seconds
        return record

    def _report(self, report: Reporter, record: dict) -> None:
        """A step's record to the reporter (metrics.jsonl, the bar) and to the app's on_step."""
        logged = report.on_step(
            record,
            samples=self.stream.samples * self.size,
            epoch=getattr(self.stream, "epoch", 0),
            skipped=len(self.stream.skipped),
            batch_size=self.cfg.batch_size,
        )
        if self._on_step is not None:
            self._on_step({**logged, "step": self.step, "loss": record["loss"], "lr": record["lr"]})

    @property
    def result_folder(self) -> Path:
        return self.out / self.objective.result

    def export(self, dst: Path) -> Path:
        """What the run trained, as a model folder: the encoder that `embed` loads; after LiT tuning,
        the LiT folder that `load`, `encode_text` and `search` read."""
        return owner.run(self.objective.export, self.model, self.step, dst)


def _all_skips(streams: list) -> Skips:
    total = Skips()
    for st in streams:
        total.merge(Skips.from_json(st["skipped"]))
    return total


def _silent(message: str) -> None:
    pass


class _Stop:
    """Whether the run should end at the next step boundary: Ctrl-C or SIGTERM (handlers only on the
    main thread, which Python alone lets set them), an app's stop event, or `until`."""

    def __init__(self, event=None):
        self.event, self.flag = event, False

    def set(self) -> None:
        self.flag = True

    def is_set(self) -> bool:
        return self.flag or bool(self.event is not None and self.event.is_set())

    @contextmanager
    def on_signals(self):
        sigs = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
        old = {sig: signal.signal(sig, lambda *_: self.set()) for sig in sigs}
        try:
            yield self
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


def _peer_lost(e: RuntimeError) -> bool:
    """MLX's words for a collective whose peer went away (ring: a closed socket)."""
    msg = str(e).lower()
    return "[ring]" in msg or "peer" in msg or "connection" in msg
