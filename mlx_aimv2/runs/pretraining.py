"""A pre-training run read back: its encoder, its decoder (captions, next patches), the encoder folder
it exports (with the decoder beside it for `caption` / `complete`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import mlx.core as mx

from .. import cpu, hub, kinds
from ..checkpoints.files import read_weights
from ..checkpoints.load import load_checkpoint
from ..checkpoints.mlx_io import copy_files, load_into, save
from ..config import DecoderConfig, ModelConfig, TrainConfig, VisionConfig, saved_run_config
from ..errors import UserError
from ..models import AIMv2VisionEncoder, lora
from ..models.captioner import Captioner
from ..models.decoder import AIMv2PreTrainer
from ..preprocess import Preprocessor
from ..tokenizer import TextTokenizer, load_tokenizer
from .common import _weights, add_run_lora, encoder_preprocessor, is_run, newest

DECODER, DECODER_WEIGHTS = kinds.DECODER_FILE, "decoder.safetensors"


def save_encoder(
    encoder, vision: VisionConfig, pp: dict, name: str, dst: Path, overwrite: bool = False, weights=None
) -> Path:
    """An encoder folder that `embed` and `load` read (weights: these instead of the encoder's own)."""
    config = ModelConfig(vision=vision, name=name)
    return save(encoder, config, Path(dst), pp, overwrite=overwrite, weights=weights)


def load_encoder(run: Path):
    """(encoder, VisionConfig, preprocessor dict, name) from a pre-training run's newest checkpoint."""
    ckpt, state = newest(
        run,
        (kinds.PRETRAINING_RUN, kinds.CLASSIFIER_RUN),
        f"its encoder stays frozen; use its LiT model {Path(run) / 'lit'} "
        f"(`mlx-aimv2 export {run} DIR` writes one from the latest checkpoint)",
    )
    vision = VisionConfig.from_dict(state["vision"])
    enc = AIMv2VisionEncoder(vision)
    weights = _weights(ckpt, "encoder.")
    cfg = state["config"]
    if cfg.get("tune") == "lora":  # continued with adapters: load them, then fold them in
        adapted = AIMv2VisionEncoder(vision)
        add_run_lora(adapted, cfg)
        load_into(adapted, weights, str(ckpt))
        weights = lora.merged_weights(adapted)
    load_into(enc, weights, str(ckpt))
    pp = encoder_preprocessor(vision, cfg["mean"], cfg["std"])
    return enc, vision, pp, f"{Path(run).resolve().name} step {state['step']}"


def load_pretrainer(run, need: str) -> tuple[AIMv2PreTrainer, TextTokenizer, Preprocessor, TrainConfig]:
    """A pre-training run's encoder and decoder (its newest checkpoint), tokenizer, preprocessing and
    config; or those of a model folder exported with its decoder (`export RUN DIR --decoder`, the
    bundled demo). need: "text" (captions) or "image" (next patches): refused in one line when the
    objective never trained that side."""
    if not is_run(Path(run)):
        folder = _decoder_folder(str(run))
        if folder is None:
            raise UserError(
                f"{run}: not a pre-training run folder, nor a model folder with its decoder; this needs a run's "
                f"decoder (`mlx-aimv2 train`, or `mlx-aimv2 export RUN DIR --decoder`)"
            )
        return _folder_pretrainer(folder, need)
    ckpt, state = newest(run, (kinds.PRETRAINING_RUN,), "it has no decoder; give a pre-training run")
    cfg = saved_run_config(dict(state["config"]))
    _check_learned(run, cfg.objective, need)
    own = Path(run) / "tokenizer.json"
    tokenizer = load_tokenizer(own if own.is_file() else Path(cfg.tokenizer), cfg.context_length)
    vision = VisionConfig.from_dict(state["vision"])
    model = AIMv2PreTrainer(
        vision, cfg.decoder_config(tokenizer.vocab_size), pad_id=tokenizer.pad_id, objective=cfg.objective
    )
    if cfg.tune == "lora":
        add_run_lora(model.encoder, cfg.to_dict())
    load_into(model, _weights(ckpt), str(ckpt))
    mx.eval(model.parameters())
    cpu.use_kernels(model)
    pp = encoder_preprocessor(vision, cfg.mean, cfg.std)
    return model, tokenizer, Preprocessor.from_config(pp, None, f"{run} (its training config)", vision.image_size), cfg


def _check_learned(where, objective: str, need: str) -> None:
    other = {"text": "image", "image": "text"}[need]
    if objective == other:
        learned = "text" if other == "text" else "patches"
        raise UserError(f"{where} was trained with objective '{other}': its decoder learned only {learned}")


def _decoder_folder(name: str):
    """The model folder `name` names (a path, or a bundled name such as demo) when it holds a decoder."""
    try:
        folder = hub.resolve(name) if name in hub.BUNDLED or Path(name).exists() else None
    except UserError:
        return None
    return folder if folder is not None and kinds.model_kind(folder) == kinds.CAPTIONER else None


def save_decoder(run: Path, folder: Path, dtype=None) -> None:
    """A pre-training run's decoder, beside its exported encoder in `folder`: decoder.safetensors,
    decoder.json (what rebuilds it) and the run's tokenizer.json, so caption / complete can use the
    folder alone."""
    ckpt, state = newest(
        run, (kinds.PRETRAINING_RUN,), "--decoder needs a pre-training run (aimv2, image or text objective)"
    )
    cfg = saved_run_config(dict(state["config"]))
    own = Path(run) / "tokenizer.json"
    tokenizer = load_tokenizer(own if own.is_file() else Path(cfg.tokenizer), cfg.context_length)
    weights = {k: v.astype(dtype or v.dtype) for k, v in _weights(ckpt, "decoder.").items()}
    spec = {
        "objective": cfg.objective,
        "decoder": dataclasses.asdict(cfg.decoder_config(tokenizer.vocab_size)),
        "pad_id": tokenizer.pad_id,
        "trained": f"{Path(run).resolve().name} step {state['step']}",
    }
    mx.save_safetensors(str(Path(folder) / DECODER_WEIGHTS), weights)
    (Path(folder) / DECODER).write_text(json.dumps(spec, indent=1) + "\n")
    copy_files([(own if own.is_file() else Path(cfg.tokenizer), "tokenizer.json")], Path(folder))


def _folder_pretrainer(folder: Path, need: str):
    """load_pretrainer for a model folder with its decoder beside the encoder."""
    try:
        spec = json.loads((folder / DECODER).read_text())
        dec = DecoderConfig(**spec["decoder"])
        objective, pad_id = spec["objective"], int(spec["pad_id"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{folder / DECODER}: unreadable ({e}); export the run again with --decoder") from None
    _check_learned(folder, objective, need)
    encoder, config, _ = load_checkpoint(str(folder), dtype=mx.float32)
    model = AIMv2PreTrainer(config.vision, dec, pad_id=pad_id, objective=objective)
    model.encoder = encoder
    weights = read_weights(folder / DECODER_WEIGHTS)
    load_into(model.decoder, dict(weights), str(folder / DECODER_WEIGHTS), dtype=mx.float32)
    cpu.use_kernels(model)
    tokenizer = load_tokenizer(folder / "tokenizer.json", dec.context_length)
    pp = Preprocessor.from_folder(folder, image_size=config.vision.image_size)
    cfg = TrainConfig(
        image_size=config.vision.image_size, patch_size=config.vision.patch_size, mean=pp.mean, std=pp.std,
        objective=objective, context_length=dec.context_length,
    )  # fmt: skip
    return model, tokenizer, pp, cfg


def load_captioner(run: Path, max_tokens: int = 32) -> tuple[Captioner, TextTokenizer, Preprocessor]:
    """A pre-training run's encoder and decoder as a Captioner, its tokenizer and its preprocessing."""
    model, tokenizer, pre, _ = load_pretrainer(run, "text")
    return Captioner(model, tokenizer.eos_id, tokenizer.pad_id, max_tokens), tokenizer, pre
