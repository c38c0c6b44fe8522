"""The training loop: data -> compiled step -> metrics, checkpoints, export. Short on purpose.

    trainer = Trainer(cfg)          # builds data, tokenizer, model, optimizer (and resumes)
    trainer.run()                   # trains to cfg.steps, checkpointing every cfg.save_every

objective = "lit" is LiT tuning in the same loop: the encoder is frozen, its tokens come from a
cache on disk (train/lit.py) instead of images, and the tuner learns the contrastive loss.
"""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from typing import Optional

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from .. import checkpoints as ckpt_io
from .. import cpu
from ..atomic import check_destination, remove_orphans, write_file
from ..config import ModelConfig
from ..data import TrainStream, mirror_caption, open_dataset
from ..data.stream import TokenStream
from ..errors import UserError
from ..models.decoder import AIMv2PreTrainer, init_weights
from ..models.lit import LiTTuner
from ..tokenizer import load_tokenizer, train_bpe
from . import checkpoint, lit
from .config import TrainConfig
from .optim import DecoupledAdamW, schedule
from .step import make_step
from .watchdog import Watchdog


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False, log=print, progress: bool = True):
        self.cfg, self.log, self.progress = cfg, log, progress
        cpu.warn_if_slow_blas()
        self.world = mx.distributed.init()
        self.rank, self.size = self.world.rank(), self.world.size()
        self.out = Path(cfg.out)
        if cfg.batch_size % (self.size * cfg.accum):
            raise UserError(f"batch_size {cfg.batch_size} must be divisible by ranks x accum = {self.size * cfg.accum}")
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"--out {self.out}: is a file; give a folder for the run")
        self.out.mkdir(parents=True, exist_ok=True)
        self.lock = checkpoint.lock_run(self.out) if self.rank == 0 else None
        found = checkpoint.candidates(self.out)
        if resume and not found:
            raise UserError(f"{self.out}: no checkpoint to resume from; start without --resume")
        if not resume and found:
            raise UserError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")
        if self.rank == 0:
            for folder in (self.out, self.out / "checkpoints"):
                for p in remove_orphans(folder):
                    self.log(f"removed {p.name}, left by a run that was killed while writing")
        if cfg.objective == "lit" and cfg.accum > 1 and self.rank == 0:
            self.log(
                f"note: with accum {cfg.accum}, each micro-batch of {cfg.batch_size // cfg.accum} is its own "
                f"contrastive batch: its images are compared with its own captions only"
            )
        if cfg.warmup >= cfg.steps and self.rank == 0:
            self.log(f"note: warmup ({cfg.warmup}) is not shorter than steps ({cfg.steps}): lr never reaches {cfg.lr}")
        # LiT tuning: the frozen encoder comes first (its tokenizer, if it is a LiT model; its tokens)
        self.frozen = lit.frozen_encoder(cfg.init) if cfg.objective == "lit" else None
        self._setup_data()
        if self.frozen is not None:
            _tokenizer_files(cfg, self.out, self.frozen)  # a tokenizer the LiT folder cannot carry: say so now
        self._setup_model()
        self.step = 0
        self.resume_from, errors = None, []
        for ckpt in found if resume else []:  # the newest checkpoint that restores
            try:
                self._restore(ckpt)
                self.resume_from = ckpt
                break
            except UserError as e:
                errors.append(str(e))
                if self.rank == 0:
                    self.log(f"cannot resume from {ckpt.name}: {e}; trying the one before")
        if resume and self.resume_from is None:
            raise UserError(
                f"none of the {len(found)} checkpoint(s) in {self.out} can be resumed; the newest: {errors[0]}"
            )

    # -- set-up -----------------------------------------------------------------------------
    def _setup_data(self):
        cfg = self.cfg
        if not cfg.data:
            raise UserError(
                "no training data; pass --data (a captions file, folder or tar shards), "
                "e.g. from `mlx-aimv2 data synth data/synth --n 2000`"
            )
        self.data = open_dataset(cfg.data, cfg.images)
        if self.data.bad and self.rank == 0:
            where, why = self.data.bad[0]
            self.log(f"data: skipped {len(self.data.bad)} bad row(s) of {self.data.root} (first: {where}: {why})")
        self._note_image_size()
        self.tokenizer = self._tokenizer()
        self.ids = self.tokenizer([s.caption for s in self.data.samples])
        mirrored = (
            self.tokenizer([mirror_caption(s.caption) for s in self.data.samples])  # for flipped images
            if cfg.mirror_captions
            else None
        )
        per_rank = cfg.batch_size // self.size
        if len(self.data) < cfg.batch_size:
            raise UserError(
                f"{cfg.data}: {len(self.data)} usable samples cannot fill a batch of {cfg.batch_size}; "
                f"lower --batch-size or add data"
            )
        if self.frozen is not None:
            self.stream = TokenStream(
                self._token_cache(), self.data, self.ids, per_rank, cfg.seed, self.rank, self.size
            )
        else:
            self.stream = TrainStream(
                self.data,
                self.ids,
                cfg.image_size,
                per_rank,
                cfg.seed,
                self.rank,
                self.size,
                cfg.threads,
                scale=cfg.crop_scale,
                mirrored_ids=mirrored,
            )

    def _token_cache(self) -> "lit.TokenCache":
        cfg, v = self.cfg, self.frozen.config.vision
        key = {
            "init": cfg.init,
            "encoder": self.frozen.config.name,
            "data": cfg.data,
            "images": cfg.images,
            "samples": len(self.data),
            "ranks": self.size,
            "tokens": [v.num_patches, v.hidden_size],
        }
        barrier = (
            (lambda: mx.distributed.all_sum(mx.array([0]), group=self.world).item())
            if self.size > 1
            else (lambda: None)
        )
        return lit.TokenCache.open_or_build(
            self.out / "token_cache",
            key,
            self.frozen,
            self.data.samples,
            self.rank,
            self.size,
            barrier,
            self.log,
            progress=self.progress,
        )

    def _note_image_size(self):
        """Say so when the data's images are smaller than the training resolution (read from one header)."""
        import io

        from PIL import Image

        try:
            with Image.open(io.BytesIO(self.data.samples[0].read_bytes())) as im:
                w, h = im.size
        except Exception:
            return  # an unreadable first image is counted later, like any other
        size = self.frozen.preprocessor.crop[0] if self.frozen is not None else self.cfg.image_size
        if min(w, h) < size and self.rank == 0:
            self.log(
                f"note: the images are about {w}x{h} px and training runs at {size} px, so they "
                f"are upsampled" + ("" if self.frozen is not None else "; set --image-size to train nearer their size")
            )

    def _tokenizer(self):
        cfg = self.cfg
        if self.frozen is not None and self.frozen.config.kind == "lit":  # tuning a LiT model: its own text side
            if cfg.tokenizer:
                raise UserError(f"{cfg.init} is a LiT model with its own tokenizer; drop 'tokenizer'")
            return self.frozen.tokenizer
        if cfg.tokenizer:
            return load_tokenizer(Path(cfg.tokenizer), cfg.context_length)
        own = self.out / "tokenizer.json"
        if own.is_file():
            return load_tokenizer(own, cfg.context_length)
        tok = train_bpe(
            (s.caption for s in self.data.samples),
            cfg.vocab_size,
            own if self.rank == 0 else self.out / f".tokenizer.rank{self.rank}.json",
            cfg.context_length,
        )
        if self.rank == 0:
            why = (
                f" (asked for {cfg.vocab_size}: the captions hold no more distinct merges)"
                if tok.vocab_size < cfg.vocab_size
                else ""
            )
            self.log(f"trained a {tok.vocab_size}-token BPE on the captions{why} -> {own}")
        return tok

    def _encoder_source(self):
        """The encoder config, and the weights to start from when cfg.init is given."""
        cfg = self.cfg
        if not cfg.init:
            return cfg.vision(), None
        module, mcfg, _ = ckpt_io.load_checkpoint(cfg.init, dtype=mx.float32)
        if mcfg.quantization:  # training needs float weights: continue from the dequantized ones
            from ..quantize import dequantize

            dequantize(module)
            mcfg.quantization = None
            self.log(f"note: {cfg.init} is quantized; training starts from its dequantized weights")
        enc = module.image_encoder if mcfg.kind == "lit" else module
        vision = mcfg.vision
        vision.use_head = False
        if not vision.native and vision.image_size != cfg.image_size:
            raise UserError(
                f"{cfg.init}: this encoder was trained at {vision.image_size} px; set image_size = {vision.image_size}"
            )
        if vision.patch_size != cfg.patch_size:
            raise UserError(f"{cfg.init}: patch size {vision.patch_size}; set patch_size = {vision.patch_size}")
        weights = {k: v for k, v in tree_flatten(enc.parameters()) if not k.startswith("head.")}
        return vision, weights

    def _setup_model(self):
        cfg = self.cfg
        mx.random.seed(cfg.seed)  # identical initial weights on every rank
        if self.frozen is not None:
            self.vision = self.frozen.config.vision
            self.model = self._tuner()
        else:
            self._setup_pretrainer()
        mx.eval(self.model.parameters())
        self.lr = schedule(cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr)
        self.optimizer = DecoupledAdamW(self.lr, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps)
        self.optimizer.init(self.model.trainable_parameters())

    def _tuner(self) -> LiTTuner:
        """LiT tuning's trainable part: from the LiT init's own head, projections and text tower, or new."""
        cfg, frozen = self.cfg, self.frozen
        if frozen.config.kind == "lit":
            tuner = LiTTuner(self.vision.hidden_size, self.vision.num_heads, frozen.config, cfg.lit_loss)
            tuner.load_from_lit(frozen.module)
            self.log(f"tuning {cfg.init}'s head, projections and text tower; its image encoder stays frozen")
        else:
            mcfg = ModelConfig(
                kind="lit",
                vision=self.vision,
                text=lit.text_config(cfg, self.tokenizer),
                projection_dim=cfg.projection_dim,
            )
            tuner = LiTTuner(self.vision.hidden_size, self.vision.num_heads, mcfg, cfg.lit_loss)
            init_weights(tuner)
        cpu.use_kernels(tuner)
        return tuner

    def _setup_pretrainer(self):
        cfg = self.cfg
        self.vision, init = self._encoder_source()
        self.model = AIMv2PreTrainer(
            self.vision,
            cfg.decoder_config(self.tokenizer.vocab_size),
            pad_id=self.tokenizer.pad_id,
            alpha=cfg.alpha,
            objective=cfg.objective,
            prefix_attention=cfg.prefix_attention,
        )
        init_weights(self.model)
        cpu.use_kernels(self.model)
        if init is not None:
            self.model.encoder.load_weights(list(init.items()), strict=True)
        self.model.encoder.trunk.set_checkpointing(cfg.checkpointing)
        self.model.decoder.trunk.set_checkpointing(cfg.checkpointing)

    def _restore(self, ckpt: Path):
        state = checkpoint.read_state(ckpt)
        checkpoint.restore(ckpt, self.model, self.optimizer)
        self.step = int(state["step"])
        positions = state.get("positions", [[0, 0]])
        if len(positions) != self.size:
            raise UserError(
                f"{ckpt}: saved by {len(positions)} rank(s), resumed on {self.size}; "
                f"resume with the same number of ranks"
            )
        self.stream.seek(*positions[self.rank])
        if self.rank == 0:
            self.log(f"resumed from {ckpt} at step {self.step}")

    # -- the loop ---------------------------------------------------------------------------
    def _key(self, step: int) -> mx.array:
        return mx.random.key((self.cfg.seed << 32) + step)

    def _positions(self) -> list:
        pos = mx.array(list(self.stream.position), dtype=mx.int32)
        if self.size > 1:
            pos = mx.distributed.all_gather(pos[None], group=self.world)
        return np.array(pos).reshape(self.size, 2).tolist()

    def _anyone_stops(self, mine: bool) -> bool:
        """Ranks stop together, at the same step boundary: a signal to one rank stops them all."""
        if self.size == 1:
            return mine
        return mx.distributed.all_sum(mx.array([int(mine)]), group=self.world).item() > 0

    def save(self) -> Optional[Path]:
        """Checkpoint now (rank 0 writes); weights that are not finite are never written, so the
        newest checkpoint is always one a run can resume from."""
        positions = self._positions()  # a collective: every rank takes part
        if self.rank != 0:
            return None
        if not checkpoint.healthy([self.model.parameters(), self.optimizer.state]):
            self.log(f"step {self.step}: weights are not finite; not checkpointed")
            return checkpoint.latest(self.out)
        state = {
            "positions": positions,
            "config": self.cfg.to_dict(),
            "vision": self.vision.to_dict(),
            "skipped_images": len(self.stream.skipped),
        }
        if self.frozen is not None:
            state["lit"] = self.model.config.to_dict()
        return checkpoint.save(self.out, self.step, self.model, self.optimizer, state, self.cfg.keep)

    def run(self, progress: bool = True, until: Optional[int] = None) -> dict:
        """Train to cfg.steps; `until` stops earlier as an interrupt would (checkpoint, no export)."""
        if self.rank == 0 and self.lock is None:
            self.lock = checkpoint.lock_run(self.out)
        try:
            return self._run(progress, until)
        finally:
            if self.lock is not None:
                self.lock.close()  # releases the run folder
                self.lock = None

    def _run(self, progress: bool, until: Optional[int]) -> dict:
        cfg = self.cfg
        num_patches = (cfg.image_size // cfg.patch_size) ** 2
        step_fn = make_step(self.model, self.optimizer, cfg, self.world, num_patches)
        self.out.mkdir(parents=True, exist_ok=True)
        metrics_file = self.out / "metrics.jsonl"
        records = _read_metrics(metrics_file, upto=self.step) if self.rank == 0 else []
        if self.rank == 0:
            _rewrite_metrics(metrics_file, records)  # drop what a crashed run logged past its checkpoint
        stop = {"flag": False}
        # Ctrl-C and SIGTERM (what `kill` and schedulers send) both end at a step boundary with a checkpoint
        old = {sig: signal.signal(sig, lambda *_: stop.update(flag=True)) for sig in (signal.SIGINT, signal.SIGTERM)}
        bar = None
        if progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, unit="step", desc="train", dynamic_ncols=True)
        batches = iter(self.stream)
        t0, seen, last = time.perf_counter(), 0, {}
        watchdog = Watchdog(self.rank, self.size, cfg.collective_timeout, self.out) if self.size > 1 else None
        try:
            while self.step < cfg.steps and not self._anyone_stops(stop["flag"]):
                batch = next(batches)
                parts, norm = step_fn(mx.array(batch[self.stream.field]), mx.array(batch["ids"]), self._key(self.step))
                mx.eval(parts, norm, self.model.state, self.optimizer.state)
                loss = parts["loss"].item()
                if not math.isfinite(loss):
                    good = checkpoint.latest(self.out)  # only finite weights are ever checkpointed
                    raise UserError(
                        f"loss became {loss} at step {self.step + 1}; stopped. Last good checkpoint: "
                        f"{good or 'none'}. Lower lr or raise warmup, then --resume"
                    )
                self.step += 1
                if watchdog is not None:
                    watchdog.beat()
                seen += cfg.batch_size
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    dt = time.perf_counter() - t0
                    last = {
                        "step": self.step,
                        **{k: round(v.item(), 6) for k, v in parts.items()},
                        "lr": float(self.lr(self.step - 1)),
                        "grad_norm": round(norm.item(), 4),
                        "images_per_s": round(seen / dt, 2),
                        "skipped_images": len(self.stream.skipped),
                    }
                    t0, seen = time.perf_counter(), 0
                    if self.rank == 0:
                        records.append(last)
                        with open(metrics_file, "a") as f:
                            f.write(json.dumps(last) + "\n")
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{loss:.4f}", lr=f"{float(self.lr(self.step - 1)):.2e}", img_s=last.get("images_per_s", 0)
                    )
                if self.step % cfg.save_every == 0 and self.step < cfg.steps:
                    self.save()
                if until is not None and self.step >= until:
                    stop["flag"] = True
            stop["flag"] = stop["flag"] or self.step < cfg.steps  # a peer asked: this rank stops too
            path = self.save()  # a collective too, still under the watchdog
        finally:
            if watchdog is not None:
                watchdog.close()
            for sig, handler in old.items():
                signal.signal(sig, handler)
            if bar is not None:
                bar.close()
        if self.rank == 0:
            from ..viz import plot_curves

            _rewrite_metrics(metrics_file, records)
            if records:
                plot_curves(records, self.out / "loss.png")
            what = "uncached image(s)" if self.frozen is not None else "unreadable image(s)"
            if self.stream.skipped:
                name, why = self.stream.skipped[0]
                self.log(f"skipped {len(self.stream.skipped)} {what} (first: {name}: {why})")
            if stop["flag"]:
                self.log(f"interrupted at step {self.step}; saved {path}; continue with --resume")
            else:
                self.export(self.result_folder)
        return {"step": self.step, "checkpoint": path, "interrupted": stop["flag"], "last": last}

    @property
    def result_folder(self) -> Path:
        return self.out / ("lit" if self.frozen is not None else "encoder")

    def export(self, dst: Path) -> Path:
        """The trained encoder as an MLX checkpoint folder that `mlx-aimv2 embed` loads; after LiT
        tuning, the LiT folder that `load`, `encode_text` and `search` read."""
        cfg = self.cfg
        if self.frozen is not None:
            name = f"mlx-aimv2 LiT-tuned ({cfg.init}, {self.step} steps)"
            return lit.save_lit(self.frozen, self.model, name, _tokenizer_files(cfg, self.out, self.frozen), dst)
        name = f"mlx-aimv2 pre-trained ({cfg.encoder if not cfg.init else cfg.init}, {self.step} steps)"
        return _save_encoder(self.model.encoder, self.vision, _preprocessor(self.vision, cfg.mean, cfg.std), name, dst)


def _preprocessor(vision, mean, std) -> dict:
    """An encoder trained here: CLIP's transforms, normalising as its training did."""
    pp = ckpt_io.default_preprocessor(ModelConfig(vision=vision))
    pp.update(image_mean=list(mean), image_std=list(std))
    return pp


def _save_encoder(encoder, vision, pp: dict, name: str, dst: Path, overwrite: bool = False) -> Path:
    """An encoder folder for `embed`."""
    return ckpt_io.save(encoder, ModelConfig(vision=vision, name=name), Path(dst), pp, overwrite=overwrite)


def load_run_encoder(run: Path):
    """(encoder, VisionConfig, preprocessor dict, name) from a run's latest checkpoint."""
    ckpt = checkpoint.latest(Path(run))
    if ckpt is None:
        raise UserError(f"{run}: no checkpoint found")
    state = checkpoint.read_state(ckpt)
    if "lit" in state:
        raise UserError(
            f"{run} is a LiT tuning run, not a pre-training run: use its LiT model {Path(run) / 'lit'} "
            f"(`mlx-aimv2 export {run} DIR` writes one from the latest checkpoint)"
        )
    from ..config import VisionConfig
    from ..models import AIMv2VisionEncoder

    vision = VisionConfig.from_dict(state["vision"])
    enc = AIMv2VisionEncoder(vision)
    weights = {
        k[len("encoder.") :]: v for k, v in mx.load(str(ckpt / "model.safetensors")).items() if k.startswith("encoder.")
    }
    ckpt_io.load_into(enc, weights, str(ckpt))
    cfg = state["config"]
    return (
        enc,
        vision,
        _preprocessor(vision, cfg["mean"], cfg["std"]),
        f"{Path(run).resolve().name} step {state['step']}",
    )


def export_run(run: Path, dst: Path, overwrite: bool = False) -> Path:
    """Export the encoder of a run's latest checkpoint without training (a LiT run: its LiT folder)."""
    check_destination(dst, overwrite)
    tuned = load_lit_run(run)
    if tuned is not None:
        return lit.save_lit(*tuned, dst, overwrite)
    return _save_encoder(*load_run_encoder(run), dst, overwrite)


def load_lit_run(run: Path):
    """(frozen encoder, tuner, name, tokenizer files) of a LiT tuning run's latest checkpoint; None for
    a run of another objective (or no run)."""
    ckpt = checkpoint.latest(Path(run))
    state = checkpoint.read_state(ckpt) if ckpt is not None else {}
    if "lit" not in state:
        return None
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()})
    frozen = lit.frozen_encoder(cfg.init)
    tuner = LiTTuner.from_run(ckpt, state, frozen.config.vision)
    name = f"mlx-aimv2 LiT-tuned ({cfg.init}, {state['step']} steps)"
    return frozen, tuner, name, _tokenizer_files(cfg, Path(run), frozen)


def _tokenizer_files(cfg: TrainConfig, run: Path, frozen) -> tuple:
    """The files a LiT folder carries for its text side: the LiT init's, the given one, or the run's BPE."""
    if frozen.config.kind == "lit":
        return ckpt_io.tokenizer_files(frozen.folder)
    if cfg.tokenizer:
        t = Path(cfg.tokenizer)
        if t.is_dir() and not (t / "tokenizer.json").is_file():
            return (t / "vocab.json", t / "merges.txt")
        if t.exists():
            return ((t / "tokenizer.json" if t.is_dir() else t, "tokenizer.json"),)
        raise UserError(
            f"{cfg.tokenizer}: a hub tokenizer cannot be bundled with the LiT folder; "
            f"save its tokenizer.json and give that file"
        )
    return (run / "tokenizer.json",)


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
