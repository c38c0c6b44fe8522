"""A training run's folder, read back: its newest checkpoint, the encoder or LiT model it trained,
and the model folder it exports to. `export`, the CLI and LiT tuning (a run as the frozen encoder)
use it; nothing here runs the training loop.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import mlx.core as mx
from mlx.utils import tree_flatten

from .. import checkpoints, cpu, finetuned, hub, kinds
from ..atomic import check_destination
from ..config import DecoderConfig, ModelConfig, TextConfig, TrainConfig, VisionConfig, saved_run_config
from ..errors import UserError
from ..inference import AIMv2, Encoder, LiTModel, open_model
from ..models import AIMv2LiT, AIMv2VisionEncoder, lora
from ..models import build as build_model
from ..models.captioner import Captioner
from ..models.classifier import Classifier
from ..models.decoder import AIMv2PreTrainer
from ..models.lit import LiTTuner
from ..preprocess import Preprocessor
from ..quantize import quantize
from ..tokenizer import TextTokenizer, load_tokenizer

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
    w = checkpoints.read_weights(Path(ckpt) / "model.safetensors")
    return {k[len(prefix) :]: v for k, v in w.items() if k.startswith(prefix)} if prefix else dict(w)


# ------------------------------------------------------------------------------ pre-training runs


def encoder_preprocessor(vision: VisionConfig, mean, std) -> dict:
    """An encoder trained here: CLIP's transforms, normalising as its training did."""
    pp = checkpoints.default_preprocessor(ModelConfig(vision=vision))
    pp.update(image_mean=list(mean), image_std=list(std))
    return pp


def save_encoder(
    encoder, vision: VisionConfig, pp: dict, name: str, dst: Path, overwrite: bool = False, weights=None
) -> Path:
    """An encoder folder that `embed` and `load` read (weights: these instead of the encoder's own)."""
    config = ModelConfig(vision=vision, name=name)
    return checkpoints.save(encoder, config, Path(dst), pp, overwrite=overwrite, weights=weights)


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
        checkpoints.load_into(adapted, weights, str(ckpt))
        weights = lora.merged_weights(adapted)
    checkpoints.load_into(enc, weights, str(ckpt))
    pp = encoder_preprocessor(vision, cfg["mean"], cfg["std"])
    return enc, vision, pp, f"{Path(run).resolve().name} step {state['step']}"


def add_run_lora(encoder, cfg: dict) -> None:
    """The adapters a run with tune = lora trained, on a fresh encoder (their weights come next)."""
    lora.add_lora(encoder, cfg["lora_rank"], cfg["lora_alpha"], cfg["lora_layers"], cfg["lora_targets"])


def frozen_encoder(init: str) -> AIMv2:
    """LiT tuning's frozen encoder: anything `load` reads (hub id, folder, file, demo, a quantized
    folder: dequantized, since tokens are computed once) or a pre-training run's newest checkpoint."""
    run = Path(init)
    if kinds.is_run(run):
        enc, vision, pp, name = load_encoder(run)
        mx.eval(enc.parameters())  # computed, not lazy: the owner thread may use them (open_model does the same)
        cpu.use_kernels(enc)
        where = f"{run} (its training config)"
        model = Encoder(
            enc,
            ModelConfig(vision=vision, name=name),
            Preprocessor.from_config(pp, None, where, vision.image_size),
            run,
        )
    else:
        model = open_model(init, dtype=mx.float32, keep_quantized=False)
    if model.config.vision.native:
        raise UserError(
            f"{init}: a native-resolution encoder gives each image its own token count; LiT tuning "
            f"caches fixed-size tokens, so start from a fixed-resolution encoder"
        )
    return model


DECODER, DECODER_WEIGHTS = kinds.DECODER_FILE, "decoder.safetensors"


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
    checkpoints.load_into(model, _weights(ckpt), str(ckpt))
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
    checkpoints.copy_files([(own if own.is_file() else Path(cfg.tokenizer), "tokenizer.json")], Path(folder))


def _folder_pretrainer(folder: Path, need: str):
    """load_pretrainer for a model folder with its decoder beside the encoder."""
    try:
        spec = json.loads((folder / DECODER).read_text())
        dec = DecoderConfig(**spec["decoder"])
        objective, pad_id = spec["objective"], int(spec["pad_id"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{folder / DECODER}: unreadable ({e}); export the run again with --decoder") from None
    _check_learned(folder, objective, need)
    encoder, config, _ = checkpoints.load_checkpoint(str(folder), dtype=mx.float32)
    model = AIMv2PreTrainer(config.vision, dec, pad_id=pad_id, objective=objective)
    model.encoder = encoder
    weights = checkpoints.read_weights(folder / DECODER_WEIGHTS)
    checkpoints.load_into(model.decoder, dict(weights), str(folder / DECODER_WEIGHTS), dtype=mx.float32)
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


# ------------------------------------------------------------------------------ LiT tuning runs


def load_tuner(ckpt: Path, state: dict, vision: VisionConfig) -> LiTTuner:
    """The tuner of a LiT run's checkpoint (its config is in the checkpoint's state)."""
    d = state["lit"]
    config = ModelConfig(
        kind="lit",
        vision=vision,
        text=TextConfig.from_dict(d["text"]),
        projection_dim=d["projection_dim"],
        init_temperature=d["init_temperature"],
        max_logit_scale=d["max_logit_scale"],
    )
    tuner = LiTTuner(vision.hidden_size, vision.num_heads, config, state["config"].get("lit_loss", "softmax"))
    tuner.load_weights(list(_weights(ckpt).items()), strict=True)
    return tuner


def load_lit(run: Path):
    """(frozen encoder, tuner, name, tokenizer files) of a LiT tuning run's newest checkpoint; None for
    a run of another objective (or no run)."""
    ckpt = kinds.newest_checkpoint(Path(run))
    state = kinds.read_run_state(ckpt) if ckpt is not None else None
    if state is None or kinds.run_kind(state) != kinds.LIT_RUN:
        return None
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()})
    frozen = frozen_encoder(cfg.init)
    tuner = load_tuner(ckpt, state, frozen.config.vision)
    name = f"mlx-aimv2 LiT-tuned ({cfg.init}, {state['step']} steps)"
    return frozen, tuner, name, lit_tokenizer_files(cfg, Path(run), frozen)


def lit_tokenizer_files(cfg: TrainConfig, run: Path, frozen: AIMv2) -> tuple:
    """The files a LiT folder carries for its text side: the LiT init's, the given one, or the run's BPE."""
    if isinstance(frozen, LiTModel):
        return checkpoints.tokenizer_files(frozen.folder)
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
    return (Path(run) / "tokenizer.json",)


def lit_module(frozen: AIMv2, tuner: LiTTuner, name: str):
    """The published LiT layout (AIMv2LiT) from the frozen encoder and a tuner's weights."""
    vision = dataclasses.replace(frozen.config.vision, use_head=True, head_bias=True)
    c = tuner.config
    config = ModelConfig(
        kind="lit",
        vision=vision,
        text=c.text,
        projection_dim=c.projection_dim,
        init_temperature=c.init_temperature,
        max_logit_scale=c.max_logit_scale,
        name=name,
    )
    lit = AIMv2LiT(config)
    weights = {
        f"image_encoder.{k}": v for k, v in tree_flatten(frozen.vision.parameters()) if not k.startswith("head.")
    }
    weights.update(tuner.lit_weights())
    lit.load_weights(list(weights.items()), strict=True)
    return lit, config


def lit_preprocessor(frozen: AIMv2) -> dict:
    """The frozen encoder's preprocessor_config.json, or for a training run its transforms as one."""
    pp = frozen.folder / "preprocessor_config.json" if frozen.folder else None
    if pp is not None and pp.is_file():
        return json.loads(pp.read_text())
    p = frozen.preprocessor
    d = checkpoints.default_preprocessor(frozen.config)
    d.update(
        size={"shortest_edge": p.size},
        crop_size={"height": p.crop[0], "width": p.crop[1]},
        image_mean=list(p.mean),
        image_std=list(p.std),
    )
    return d


def save_lit(frozen: AIMv2, tuner: LiTTuner, name: str, files: tuple, dst: Path, overwrite: bool = False) -> Path:
    """A LiT folder that load / encode_text / classify / export read like the published one."""
    lit, config = lit_module(frozen, tuner, name)
    return checkpoints.save(
        lit, config, Path(dst), lit_preprocessor(frozen), files, overwrite=overwrite, kind=kinds.LIT
    )


# ------------------------------------------------------------------------------ fine-tuning runs


def save_classifier(model: Classifier, config: ModelConfig, pp: dict, name: str, classes: list, cfg: TrainConfig,
                    dst: Path, overwrite: bool = False, max_shard_size=None) -> Path:  # fmt: skip
    """A fine-tuned model folder: the encoder (LoRA merged in, or its frozen base with the adapter
    beside it when merge_lora is off) and the classifier head; `classify`, `embed` and `export` read it."""
    adapter = cfg.tune == "lora" and not cfg.merge_lora
    keep = {
        "rank": cfg.lora_rank,
        "alpha": cfg.lora_alpha,
        "layers": cfg.lora_layers,
        "targets": list(cfg.lora_targets),
    }
    weights = lora.base_weights(model.encoder) if adapter else lora.merged_weights(model.encoder)
    vision = dataclasses.replace(config.vision, use_head=False)
    out = ModelConfig(vision=vision, name=name, quantization=config.quantization if adapter else None)

    def more(folder: Path):
        finetuned.write(folder, model.classifier, classes, keep if adapter else None, model.encoder)

    return checkpoints.save(
        None,
        out,
        Path(dst),
        pp,
        weights=weights,
        more=more,
        overwrite=overwrite,
        kind=kinds.CLASSIFIER,
        max_shard_size=max_shard_size,
    )


def classifier_folder(name) -> Path:
    """What `classify --model` names: a fine-tuning run stands for the classifier it exported
    (RUN/classifier); anything else is itself."""
    path = Path(name)
    if kinds.is_run(path) and kinds.path_kind(path) == kinds.CLASSIFIER_RUN:
        done = path / "classifier"
        if kinds.model_kind(done) != kinds.CLASSIFIER:
            raise UserError(
                f"{path}: this fine-tuning run has not exported its classifier yet (it is running or was "
                f"stopped); `mlx-aimv2 export {path} DIR` writes one from its newest checkpoint"
            )
        return done
    return path


def classifier_run(run: Path) -> tuple:
    """(Classifier, ModelConfig of its encoder, preprocessor dict, classes, TrainConfig, step) of a
    fine-tuning run's newest checkpoint; None for a run of another objective."""
    ckpt, state = newest(run)
    if kinds.run_kind(state) != kinds.CLASSIFIER_RUN:
        return None
    cfg = saved_run_config(dict(state["config"]))
    config = ModelConfig(vision=VisionConfig.from_dict(state["vision"]), quantization=state.get("quantization"))
    encoder = build_model(config)
    if config.quantization and cfg.tune == "lora":
        quantize(encoder, config.quantization)
    model = Classifier(encoder, len(state["classes"]))
    if cfg.tune == "lora":
        add_run_lora(encoder, cfg.to_dict())
    checkpoints.load_into(model, _weights(ckpt), str(ckpt))
    if not (config.quantization and cfg.tune == "lora"):
        config.quantization = None
    return model, config, state["preprocessor"], state["classes"], cfg, state["step"]


# ------------------------------------------------------------------------------ either kind


def trained_model(run: Path) -> tuple:
    """(module, ModelConfig, preprocessor dict, extra files) of what a run trained: a LiT run's model in
    the published LiT layout (built in memory), else its encoder."""
    fine = classifier_run(Path(run))
    if fine is not None:  # the fine-tuned encoder, adapters merged (the head has no transformers form)
        model, config, pp, _, cfg, step = fine
        enc = build_model(dataclasses.replace(config, quantization=None))
        enc.load_weights(list(lora.merged_weights(model.encoder).items()), strict=True)
        return enc, dataclasses.replace(config, name=f"{Path(run).resolve().name} step {step}"), pp, ()
    tuned = load_lit(Path(run))
    if tuned is not None:
        frozen, tuner, name, files = tuned
        module, config = lit_module(frozen, tuner, name)
        return module, config, lit_preprocessor(frozen), files
    enc, vision, pp, name = load_encoder(Path(run))
    return enc, ModelConfig(vision=vision, name=name), pp, ()


def export_run(
    run: Path,
    dst: Path,
    overwrite: bool = False,
    merge_lora: Optional[bool] = None,
    decoder: bool = False,
    dtype=None,
    max_shard_size: Optional[int] = None,
) -> Path:
    """The model folder of a run's newest checkpoint, without training (a LiT run: its LiT folder).
    merge_lora: a LoRA fine-tune's adapters merged in or kept beside (default: as the run was set).
    decoder: a pre-training run's decoder and tokenizer go beside the encoder (caption, complete).
    dtype: the weights' float type (default: as trained)."""
    check_destination(dst, overwrite)
    if decoder:
        newest(
            Path(run), (kinds.PRETRAINING_RUN,), "--decoder needs a pre-training run (aimv2, image or text objective)"
        )
    fine = classifier_run(Path(run))
    if fine is not None:
        model, config, pp, classes, cfg, step = fine
        if dtype is not None:
            model.set_dtype(dtype, predicate=lambda d: mx.issubdtype(d, mx.floating))
        if merge_lora is not None:
            cfg = dataclasses.replace(cfg, merge_lora=merge_lora)
        name = f"mlx-aimv2 classifier ({cfg.init}, tune {cfg.tune}, {step} steps)"
        return save_classifier(model, config, pp, name, classes, cfg, dst, overwrite, max_shard_size)
    module, config, pp, files = trained_model(Path(run))
    if dtype is not None:
        module.set_dtype(dtype, predicate=lambda d: mx.issubdtype(d, mx.floating))
    more = (lambda folder: save_decoder(Path(run), folder, dtype)) if decoder else None
    kind = kinds.CAPTIONER if decoder else None  # else an encoder or a LiT model, by the config
    return checkpoints.save(
        module, config, Path(dst), pp, files, overwrite=overwrite, more=more, kind=kind, max_shard_size=max_shard_size
    )
