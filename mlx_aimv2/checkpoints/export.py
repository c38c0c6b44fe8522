"""Hand a model back to PyTorch: any checkpoint we load (float or quantized) or a training run, written
as a folder that transformers' `Aimv2VisionModel` / `Aimv2Model.from_pretrained` loads with no
missing or unexpected keys. Safetensors only; quantized layers are dequantized on the way out.

The key mapping is layouts.py's transformers tables, read backwards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import mlx.core as mx
import numpy as np

from .. import finetuned, hub, kinds, modelcard, owner, runs
from ..atomic import check_destination, write_folder
from ..config import ModelConfig
from ..errors import UserError
from ..inference import preprocessor_of
from ..models import lora
from ..quantize import dequantize, quantize
from ..runs.snapshots import saved_config
from ..vlm.extra import converter
from .layouts import peft_adapter, transformers_config, transformers_weights
from .load import load_checkpoint
from .mlx_io import copy_files, default_preprocessor, drop_stale_weights, save, tokenizer_files, write_weights

FORMATS = ("mlx", "transformers", "peft")


@owner.owned
def export(
    src: str,
    dst: Path,
    format: str = "mlx",
    overwrite: bool = False,
    decoder: bool = False,
    dtype: Optional[str] = None,
    max_shard_size: Optional[int] = None,
    command: Optional[str] = None,
) -> Path:
    """A model as `format`: mlx (a run's trained model, or any checkpoint converted, for `embed` and
    `load`; with `decoder`, a pre-training run's decoder beside it for caption / complete) or
    transformers (for from_pretrained). dtype: float32 | bfloat16 | float16 (default: as it is)."""
    if format not in FORMATS:
        raise UserError(f"--format {format}: use mlx, transformers or peft")
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: use one of {', '.join(DTYPES)}")
    is_run = kinds.is_run(src)
    if decoder and (format != "mlx" or not is_run):
        raise UserError(
            "--decoder exports a pre-training run's decoder beside its encoder: give a run and --format mlx"
        )
    if dtype is not None and format != "mlx":
        raise UserError(f"--dtype applies to --format mlx; a {format} export keeps the weights' type")
    if format == "peft":
        return export_peft(src, dst, overwrite, command)
    if format == "transformers":
        return export_transformers(src, dst, overwrite, max_shard_size, command)
    if is_run:
        return runs.export_run(
            Path(src), dst, overwrite, decoder=decoder, dtype=DTYPES.get(dtype), max_shard_size=max_shard_size
        )
    return convert(src, dst, dtype=dtype, overwrite=overwrite, max_shard_size=max_shard_size, command=command)


DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


@owner.owned
def export_transformers(
    src: str, dst: Path, overwrite: bool = False, max_shard_size: Optional[int] = None, command: Optional[str] = None
) -> Path:
    """A checkpoint (any layout we read, quantized too) or a training run -> a transformers folder."""
    dst = check_destination(dst, overwrite)
    module, config, preprocessor, extra = _source(src)
    lora.merge(module)  # a fine-tuned folder's adapter, folded in
    dequantize(module)
    weights = transformers_weights(module, config)
    dtype = {mx.float32: "float32", mx.bfloat16: "bfloat16", mx.float16: "float16"}.get(
        next(iter(weights.values())).dtype, "float32"
    )
    cfg = transformers_config(config, dtype)

    written: list = []

    def write(tmp: Path):
        written.extend(write_weights(tmp, weights, {"format": "pt"}, max_shard_size))
        kind = kinds.folder_kind(config)
        modelcard.write(tmp, config, kind, library="transformers", command=command, **_provenance(src))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        (tmp / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
        copy_files(extra, tmp)

    return write_folder(dst, write, overwrite, finish=lambda out: drop_stale_weights(out, written))


def _provenance(src: str) -> dict:
    """base_model and licence for the card of a folder made from `src` (modelcard.provenance): a run's
    are those of the checkpoint it started from."""
    if kinds.is_run(src):
        init = saved_config(Path(src)).get("init")
        return _provenance(str(init)) if init else modelcard.provenance(None, None)
    local = hub.BUNDLED.get(src) or Path(src).expanduser()
    folder = (local.parent if local.is_file() else local) if local.exists() else None
    return modelcard.provenance(hub.repo_of(str(src)), folder)


def _source(src: str):
    """(float or quantized module, config, preprocessor dict, extra files) of a run or a checkpoint."""
    if kinds.is_run(src):
        return runs.trained_model(Path(src))
    module, config, folder = load_checkpoint(src)
    f = folder / "preprocessor_config.json"
    pp = json.loads(f.read_text()) if f.is_file() else default_preprocessor(config)
    return module, config, pp, tokenizer_files(folder)


@owner.owned
def convert(
    src: str,
    dst: Path,
    dtype: Optional[str] = None,
    revision: Optional[str] = None,
    overwrite: bool = False,
    quantization: Optional[dict] = None,
    max_shard_size: Optional[int] = None,
    command: Optional[str] = None,
) -> Path:
    """Any supported checkpoint -> an MLX folder (model.safetensors, config.json, preprocessor_config.json).
    dtype: float32 | bfloat16 | float16, default the source's own. quantization: quantize.spec(...) to
    quantize the blocks' linear layers. An existing destination must be empty or one of our
    checkpoints unless `overwrite` (which replaces only the files we write)."""
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"unknown dtype '{dtype}'; use float32, bfloat16 or float16")
    check_destination(dst, overwrite)
    local = hub.resolve(str(src), revision)
    if kinds.is_ovis2(local):  # a vision-language model: its own converter
        return converter()(local, dst, DTYPES.get(dtype), quantization, overwrite, max_shard_size, command,
                           repo=hub.repo_of(str(src)))  # fmt: skip
    module, config, folder = load_checkpoint(src, revision, DTYPES.get(dtype), local)
    if finetuned.has_adapter(folder):  # LoRA over a (maybe quantized) base: written as plain float layers
        dequantize(lora.merge(module))
        config.quantization = None
    fidelity = None
    if quantization is not None:
        if config.quantization:
            raise UserError(
                f"{src}: already quantized ({config.quantization['bits']}-bit); convert from the float "
                f"checkpoint it was made from"
            )
        pixels = sample_pixels(config, folder)
        before = _pooled(module, config, pixels)
        quantize(module, quantization)
        config.quantization = quantization
        fidelity = _cosines(before, _pooled(module, config, pixels))
    pp = folder / "preprocessor_config.json"
    preprocessor_of(config, folder)  # refuse an invalid one before writing anything
    preprocessor = json.loads(pp.read_text()) if pp.is_file() else None
    extra = tokenizer_files(folder) + finetuned.classifier_files(folder)
    kind = kinds.model_kind(folder) or (kinds.folder_kind(config))
    if kind == kinds.CAPTIONER:  # the decoder stays behind: the copy is the encoder
        kind = kinds.ENCODER
    card = dict(**_provenance(src), fidelity=fidelity, command=command)
    return save(module, config, Path(dst), preprocessor, extra, overwrite=overwrite, kind=kind,
                max_shard_size=max_shard_size, card=card)  # fmt: skip


FIDELITY_IMAGES = 8  # seeded pictures a quantized folder's card measures its fidelity on


def sample_pixels(config: ModelConfig, folder: Path) -> np.ndarray:
    """FIDELITY_IMAGES pictures (a colour gradient, noise and a few boxes each, seeded), preprocessed
    as the model's own inputs."""
    pre = preprocessor_of(config, folder)
    rng, ramp = np.random.default_rng(0), np.linspace(0, 1, 256)
    out = []
    for _ in range(FIDELITY_IMAGES):
        px = rng.uniform(0, 255, 3) * ramp[:, None, None] + rng.uniform(0, 255, 3) * ramp[None, :, None] / 2
        px = px + rng.normal(0, 12, (256, 256, 3))
        for _ in range(3):
            y, x, h, w = rng.integers(0, 200, 2).tolist() + rng.integers(16, 56, 2).tolist()
            px[y : y + h, x : x + w] = rng.uniform(0, 255, 3)
        out.append(pre(np.clip(px, 0, 255).astype(np.uint8)))
    return np.stack(out)


def _pooled(module, config: ModelConfig, pixels: np.ndarray) -> np.ndarray:
    vision = module.image_encoder if kinds.is_lit(config) else module
    dtype = vision.preprocessor.patchifier.proj.weight.dtype
    dtype = dtype if mx.issubdtype(dtype, mx.floating) else mx.float32
    return np.array(vision(mx.array(pixels).astype(dtype)).mean(axis=1).astype(mx.float32))


def _cosines(a: np.ndarray, b: np.ndarray) -> dict:
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"images": len(cos), "mean": float(cos.mean()), "min": float(cos.min())}


@owner.owned
def export_peft(src: str, dst: Path, overwrite: bool = False, command: Optional[str] = None) -> Path:
    """A LoRA fine-tune's adapters as PEFT's folder (adapter_config.json, adapter_model.safetensors),
    for transformers' Aimv2VisionModel with peft.PeftModel.from_pretrained: from a `tune = lora`
    fine-tuning run, or a folder exported with its adapter beside the encoder (merge_lora = false)."""
    dst = check_destination(dst, overwrite)
    base, from_run = None, kinds.is_run(src)
    if from_run:
        found = runs.classifier_run(Path(src))
        module = found[0].encoder if found is not None else None
        base = found[4].init if found is not None else None
    else:
        module, _, folder = load_checkpoint(src)
        base = modelcard.base_model_of(folder)
    weights, config = peft_adapter(module) if module is not None else ({}, {})
    if not weights:
        raise UserError(
            f"{src}: holds no LoRA adapters; --format peft needs a `tune = lora` fine-tuning run, or a folder it "
            f"exported with merge_lora = false"
        )
    # a base transformers loads: the hub id it came from, else its transformers export in base/
    hub_base = hub.repo_of(str(base)) if base is not None else None
    local_base = base if from_run and hub_base is None and base is not None else None
    config["base_model_name_or_path"] = hub_base or (str(dst / PEFT_BASE) if local_base is not None else None)

    def write(tmp: Path):
        mx.save_safetensors(str(tmp / "adapter_model.safetensors"), weights, metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        if local_base is not None:
            export_transformers(str(local_base), tmp / PEFT_BASE, command=command)
        modelcard.write_adapter(tmp, hub_base, command)

    return write_folder(dst, write, overwrite)


PEFT_BASE = "base"  # an adapter folder's base encoder in transformers' layout, when it has no hub id
