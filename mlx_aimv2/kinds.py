"""What a folder this package wrote is, recorded in the folder and read back here alone.

A model folder's config.json says `"format": "mlx_aimv2"` and its kind under KIND_KEY; a training
run's checkpoints say theirs in state.json (and their config names the objective). Every other
module asks here: `model_kind(folder)`, `run_kind(state)`, `is_run(path)`, `newest_checkpoint(run)`.
Folders written before kinds were recorded are told by one fallback, `_sniffed_model_kind`.

The layout of a run folder (checkpoints/step_NNNNNNNN/{state.json, model.safetensors,
optimizer.safetensors} and a `latest` pointer) is read here too, to tell a run; runs/snapshots.py writes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .errors import UserError
from .paths import children

FORMAT = "mlx_aimv2"  # config.json's "format" in every model folder we write
KIND_KEY = "mlx_aimv2_kind"

# model folders
ENCODER = "encoder"  # embed, index, export
LIT = "lit"  # the image-text model: + encode_text, zero-shot classify, text search
CLASSIFIER = "classifier"  # an encoder with a fine-tuned head (classifier.json) and maybe a LoRA adapter
CAPTIONER = "captioner"  # an encoder with a pre-training run's decoder beside it (decoder.json): caption, complete
OVIS2 = "ovis2"  # AIDC-AI's Ovis2 vision-language model on an AIMv2 encoder (vlm/): chat
MODEL_KINDS = (ENCODER, LIT, CLASSIFIER, CAPTIONER, OVIS2)

# training runs, by the objective their config names
PRETRAINING_RUN, LIT_RUN, CLASSIFIER_RUN = "pretraining-run", "lit-run", "classifier-run"
RUN_OF_OBJECTIVE = {
    "aimv2": PRETRAINING_RUN,
    "image": PRETRAINING_RUN,
    "text": PRETRAINING_RUN,
    "lit": LIT_RUN,
    "classify": CLASSIFIER_RUN,
}
EXPORTS_TO = {PRETRAINING_RUN: ENCODER, LIT_RUN: LIT, CLASSIFIER_RUN: CLASSIFIER}
DESCRIBED = {
    ENCODER: "an encoder",
    LIT: "a LiT image-text model",
    CLASSIFIER: "a fine-tuned classifier",
    CAPTIONER: "an encoder with its caption decoder",
    OVIS2: "an Ovis2 vision-language model",
    PRETRAINING_RUN: "a pre-training run",
    LIT_RUN: "a LiT tuning run",
    CLASSIFIER_RUN: "a fine-tuning run",
}

# what a model is built of (ModelConfig.kind): an image tower, or image and text towers (LiT)
VISION_MODEL, LIT_MODEL = "vision", "lit"


def is_lit(config) -> bool:
    """Whether a ModelConfig (or its stored dict) has a text tower: encode_text, zero-shot, text search."""
    kind = config.get("kind") if isinstance(config, dict) else config.kind
    return kind == LIT_MODEL


def folder_kind(config) -> str:
    """The model-folder kind a plain model of this config is written as: LIT or ENCODER."""
    return LIT if is_lit(config) else ENCODER


# the files that mark a model folder's kind, for folders written before the kind was recorded
CLASSIFIER_FILE, DECODER_FILE = "classifier.json", "decoder.json"


# -- model folders -------------------------------------------------------------------------------


def _config(folder: Path) -> Optional[dict]:
    try:
        d = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def is_ours(folder: Path) -> bool:
    """Whether `folder` is a model folder this package wrote."""
    d = _config(folder)
    return d is not None and d.get("format") == FORMAT


def model_kind(folder: Path) -> Optional[str]:
    """The kind of a model folder we wrote (MODEL_KINDS); None for any other folder (a published
    checkpoint: an encoder or a LiT model by its tensors)."""
    d = _config(folder)
    if d is None or d.get("format") != FORMAT:
        return None
    recorded = d.get(KIND_KEY)
    return recorded if recorded in MODEL_KINDS else _sniffed_model_kind(Path(folder), d)


def _sniffed_model_kind(folder: Path, config: dict) -> str:
    """The one fallback: a folder written before kinds were recorded, told by the files it holds."""
    if is_lit(config):
        return LIT
    if (folder / CLASSIFIER_FILE).is_file():
        return CLASSIFIER
    if (folder / DECODER_FILE).is_file():
        return CAPTIONER
    return ENCODER


def is_ovis2(folder: Path) -> bool:
    """Whether `folder` holds an Ovis2 model: one we converted, one in transformers' layout (config.json's
    model_type "ovis2": the -hf folders), or AIDC-AI's original (is_original_ovis2)."""
    d = _config(folder)
    if d is None:
        return False
    return (
        d.get("model_type") == "ovis2"
        or is_original_ovis2(d)
        or (d.get("format") == FORMAT and d.get(KIND_KEY) == OVIS2)
    )


def is_original_ovis2(config: dict) -> bool:
    """AIDC-AI's remote-code config.json of an Ovis on an AIMv2 tower (Ovis2; Ovis1.6 had SigLIP's)."""
    tower = (config.get("visual_tokenizer_config") or {}).get("backbone_config") or {}
    return config.get("model_type") == "ovis" and "llm_config" in config and tower.get("model_type") == "aimv2"


def record(config: dict, kind: str) -> dict:
    """A model folder's config.json with its kind recorded."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}")
    return {**config, KIND_KEY: kind}


# -- training runs -------------------------------------------------------------------------------


def run_checkpoints(run: Path) -> list[Path]:
    """A run's complete checkpoints, newest first (the `latest` pointer's first), or the checkpoint
    folder itself."""
    run = Path(run)
    if (run / "state.json").is_file():
        return [run]
    ckpts = run / "checkpoints"
    if not ckpts.is_dir():
        return []
    done = [p for p in children(ckpts, "step_*", kind="dir") if (p / "state.json").is_file()][::-1]
    pointer = ckpts / "latest"
    if pointer.is_file():
        named = ckpts / pointer.read_text().strip()
        if named in done:
            done.remove(named)
            done.insert(0, named)
    return done


def newest_checkpoint(run: Path) -> Optional[Path]:
    """The newest complete checkpoint of a run folder (or the checkpoint folder itself)."""
    found = run_checkpoints(run)
    return found[0] if found else None


def is_run(path) -> bool:
    """Whether `path` is a training run folder (or one of its checkpoints): the one test."""
    return newest_checkpoint(Path(path)) is not None


def read_run_state(ckpt: Path) -> dict:
    f = Path(ckpt) / "state.json"
    try:
        state = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{f}: unreadable checkpoint state ({e})") from None
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("step"), int)
        or not isinstance(state.get("config"), dict)
    ):
        raise UserError(f"{f}: not a checkpoint state of ours (needs an integer 'step' and a 'config')")
    return state


def run_kind(state: dict) -> str:
    """A run checkpoint's kind: recorded, else (older runs) from the objective its config names."""
    recorded = state.get("kind")
    if recorded in EXPORTS_TO:
        return recorded
    return RUN_OF_OBJECTIVE.get(state["config"].get("objective", "aimv2"), PRETRAINING_RUN)


def path_kind(path) -> Optional[str]:
    """The kind of whatever `path` names: a run (its newest checkpoint's), a model folder of ours,
    or None (not ours, or not there)."""
    ckpt = newest_checkpoint(Path(path)) if Path(path).is_dir() else None
    if ckpt is not None:
        return run_kind(read_run_state(ckpt))
    return model_kind(Path(path)) if Path(path).is_dir() else None


def classifier_folder(name) -> Path:
    """What `classify --model` names: a fine-tuning run stands for the classifier it exported
    (RUN/classifier); anything else is itself."""
    path = Path(name)
    if path_kind(path) != CLASSIFIER_RUN:
        return path
    done = path / "classifier"
    if model_kind(done) != CLASSIFIER:
        raise UserError(
            f"{path}: this fine-tuning run has not exported its classifier yet (it is running or was "
            f"stopped); `mlx-aimv2 export {path} DIR` writes one from its newest checkpoint"
        )
    return done


def describe(kind: Optional[str]) -> str:
    return DESCRIBED.get(kind, "a published checkpoint")
