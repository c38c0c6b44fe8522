"""What every kind of run shares: its newest checkpoint (of the kind a caller wants), its tensors read
once and guarded, the preprocessing it trained with, its LoRA adapters."""

from __future__ import annotations

from pathlib import Path

from .. import kinds
from ..checkpoints.files import read_weights
from ..checkpoints.mlx_io import default_preprocessor
from ..config import ModelConfig, VisionConfig
from ..errors import UserError
from ..models import lora

is_run = kinds.is_run


def newest(run: Path, want: tuple = (), what: str = "") -> tuple[Path, dict]:
    """A run's newest checkpoint and its state; refused in one line when the run is not of a kind
    in `want` (kinds.*_RUN), saying what it is and `what` the command needs."""
    ckpt = kinds.newest_checkpoint(Path(run))
    if ckpt is None:
        raise UserError(f"{run}: no checkpoint found")
    state = kinds.read_run_state(ckpt)
    if want and kinds.run_kind(state) not in want:
        raise UserError(f"{run} is {kinds.describe(kinds.run_kind(state))}: {what}")
    return ckpt, state


def _weights(ckpt: Path, prefix: str = "") -> dict:
    """A checkpoint's tensors (those under `prefix`, without it), read once, guarded."""
    w = read_weights(Path(ckpt) / "model.safetensors")
    return {k[len(prefix) :]: v for k, v in w.items() if k.startswith(prefix)} if prefix else dict(w)


def encoder_preprocessor(vision: VisionConfig, mean, std) -> dict:
    """An encoder trained here: CLIP's transforms, normalising as its training did."""
    pp = default_preprocessor(ModelConfig(vision=vision))
    pp.update(image_mean=list(mean), image_std=list(std))
    return pp


def add_run_lora(encoder, cfg: dict) -> None:
    """The adapters a run with tune = lora trained, on a fresh encoder (their weights come next)."""
    lora.add_lora(encoder, cfg["lora_rank"], cfg["lora_alpha"], cfg["lora_layers"], cfg["lora_targets"])
