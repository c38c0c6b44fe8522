"""The files a fine-tuned model folder holds beside its encoder (model.safetensors + config.json):

    classifier.json + classifier.safetensors    the attentive-pool head and its class names
    adapter_config.json + adapters.safetensors  LoRA kept unmerged: applied to the encoder at load
                                                (mlx-lm's names; adapter.safetensors, the older one, is read too)

Every reader of a checkpoint goes through load_checkpoint, which applies the adapter, so `embed`,
`export` and `load` see the fine-tuned encoder whichever form it was saved in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from . import kinds
from .errors import UserError, is_file_fault
from .models import lora
from .models.classifier import AttentiveHead

CLASSIFIER, CLASSIFIER_WEIGHTS = kinds.CLASSIFIER_FILE, "classifier.safetensors"
ADAPTER, ADAPTER_WEIGHTS = "adapter_config.json", "adapters.safetensors"  # mlx-lm's names
LEGACY_ADAPTER_WEIGHTS = "adapter.safetensors"  # what folders exported before were given: still read


def write(folder: Path, head: AttentiveHead, classes: list[str], adapter: Optional[dict], encoder=None) -> None:
    """Write the head (and, when `adapter` gives rank / alpha / layers / targets, the encoder's
    adapter weights) into `folder`."""
    folder = Path(folder)
    mx.save_safetensors(str(folder / CLASSIFIER_WEIGHTS), dict(tree_flatten(head.parameters())))
    spec = {"classes": list(classes), "heads": head.heads, "dim": head.k.weight.shape[0]}
    (folder / CLASSIFIER).write_text(json.dumps(spec, indent=1) + "\n")
    if adapter is not None:
        mx.save_safetensors(str(folder / ADAPTER_WEIGHTS), lora.adapter_weights(encoder))
        (folder / ADAPTER).write_text(json.dumps(adapter, indent=1) + "\n")


def _json(file: Path, keys: tuple) -> dict:
    try:
        d = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{file}: unreadable ({e}); export the model again") from None
    if not isinstance(d, dict) or any(k not in d for k in keys):
        raise UserError(f"{file}: must hold {', '.join(keys)}; export the model again")
    return d


def _weights(file: Path) -> dict:
    try:
        return dict(mx.load(str(file)))
    except Exception as e:
        if not is_file_fault(e):
            raise
        raise UserError(
            f"{file}: unreadable weights ({' '.join(str(e).split())[:160]}); export the model again"
        ) from None


def has_adapter(folder: Path) -> bool:
    return (Path(folder) / ADAPTER).is_file()


def classifier_files(folder: Path) -> tuple:
    """The head's files, for a copy of the folder (convert) to carry."""
    files = tuple(Path(folder) / n for n in (CLASSIFIER, CLASSIFIER_WEIGHTS))
    return files if all(f.is_file() for f in files) else ()


def apply_adapter(encoder: nn.Module, folder: Path) -> bool:
    """Wrap the encoder's layers with the folder's LoRA adapter, if it has one; whether it did."""
    spec_file = Path(folder) / ADAPTER
    if not spec_file.is_file():
        return False
    d = _json(spec_file, ("rank", "alpha", "layers", "targets"))
    try:
        lora.add_lora(encoder, int(d["rank"]), float(d["alpha"]), int(d["layers"]), tuple(d["targets"]))
    except (ValueError, TypeError) as e:
        raise UserError(f"{spec_file}: does not fit this encoder ({e})") from None
    file = Path(folder) / ADAPTER_WEIGHTS
    if not file.is_file() and (Path(folder) / LEGACY_ADAPTER_WEIGHTS).is_file():
        file = Path(folder) / LEGACY_ADAPTER_WEIGHTS
    weights = _weights(file)
    want = lora.adapter_weights(encoder)
    wrong = [k for k in want if k not in weights or weights[k].shape != want[k].shape]
    if wrong or len(weights) != len(want):
        raise UserError(
            f"{file}: does not match {spec_file} ({len(weights)} tensors for {len(want)} expected"
            + (f"; first mismatch: {wrong[0]}" if wrong else "")
            + "); export the model again"
        )
    encoder.load_weights(list(weights.items()), strict=False)
    return True


def read_classifier(folder: Path, dim: int) -> Optional[tuple[AttentiveHead, list[str]]]:
    """The folder's classifier head and class names, or None when it has none."""
    spec_file = Path(folder) / CLASSIFIER
    if not spec_file.is_file():
        return None
    d = _json(spec_file, ("classes", "heads", "dim"))
    classes = d["classes"]
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise UserError(f"{spec_file}: 'classes' must list at least 2 names; export the model again")
    if d["dim"] != dim:
        raise UserError(f"{spec_file}: a head for width {d['dim']}, the encoder is {dim} wide; export the model again")
    head = AttentiveHead(dim, len(classes), d["heads"])
    try:
        head.load_weights(list(_weights(Path(folder) / CLASSIFIER_WEIGHTS).items()), strict=True)
    except ValueError as e:
        raise UserError(f"{Path(folder) / CLASSIFIER_WEIGHTS}: does not fit {spec_file} ({e})") from None
    mx.eval(head.parameters())
    return head, classes
