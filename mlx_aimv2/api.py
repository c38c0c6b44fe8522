"""The face for apps: `load(name_or_path)` -> an `AIMv2` with embed / encode_image / encode_text.

import mlx_aimv2
model = mlx_aimv2.load("apple/aimv2-large-patch14-224")   # or a folder, a file, "demo"
emb = model.embed(["cat.jpg", pil_image])                 # (2, 1024) numpy, mean-pooled
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import string
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from . import cpu, finetuned, hub, owner
from .atomic import check_destination
from .checkpoints import load_checkpoint, save, tokenizer_files
from .config import ModelConfig
from .environment import wire_memory_for
from .errors import UserError, check_cancel
from .models import lora
from .preprocess import ImageLike, Preprocessor, decode_ahead
from .quantize import dequantize, quantize
from .tokenizer import load_tokenizer

POOLS = ("mean", "none", "attn")
log = logging.getLogger("mlx_aimv2")  # notes for the user; the CLI prints them, an app routes them


def load(
    name_or_path: str = hub.DEFAULT["vision"],
    revision: Optional[str] = None,
    dtype=None,
    keep_quantized: Optional[bool] = None,
    text_only: bool = False,
) -> "AIMv2":
    """Load any AIMv2 checkpoint: a hub id or short name, a local folder / file, or "demo".

    On MLX's CPU backend the model gets cpu.py's kernels (the same numbers, faster), and a quantized
    checkpoint runs with its layers dequantized (MLX's CPU quantized matmul is ~60x slower; pass
    keep_quantized=True to keep them). On Metal, a model over 1 GiB has its weights wired
    (mx.set_wired_limit), as mlx-lm does. Safe from any thread (owner.py).
    text_only: for a LiT model, read only what encode_text needs (and the patch embedding that
    fingerprints it): MLX loads lazily, so the image tower is never read; image methods then refuse."""
    cpu.warn_if_slow_blas()
    return owner.run(_load, name_or_path, revision, dtype, keep_quantized, text_only)


def _load(name_or_path, revision, dtype, keep_quantized, text_only=False) -> "AIMv2":
    module, config, folder = load_checkpoint(name_or_path, revision, dtype)
    cpu.float_layers(module, keep_quantized)
    cpu.use_kernels(module)
    text_only = text_only and config.kind == "lit"
    if text_only:
        patch = module.image_encoder.preprocessor.patchifier
        module.image_encoder = nn.Module()  # the tower is dropped unread; the fingerprint's tensors stay
        module.image_encoder.preprocessor = nn.Module()
        module.image_encoder.preprocessor.patchifier = patch
    wire_memory_for(sum(v.nbytes for _, v in tree_flatten(module.parameters())))
    # evaluated here: a lazy array belongs to the owner thread's stream, a computed one to no thread,
    # so the module's weights may then be used directly from any (one) thread too
    mx.eval(module.parameters())
    model = AIMv2(module, config, _preprocessor(config, folder), folder)
    model.text_only = text_only
    if config.kind == "vision":  # a fine-tuned classifier's head (finetuned.py), if the folder has one
        found = finetuned.read_classifier(folder, config.vision.hidden_size)
        if found is not None:
            model.head, model.classes = found
    return model


def load_default(kind: str = "vision", revision: Optional[str] = None) -> tuple["AIMv2", str]:
    """(model, its name) for a command given no model: Apple's default of the kind (hub.DEFAULT) when
    the hub or its cache has it, else the bundled stand-in (hub.STAND_IN), with a note (logging)."""
    name = hub.DEFAULT[kind]
    try:
        return load(name, revision), name
    except UserError as e:
        stand_in = hub.STAND_IN[kind]
        log.warning("%s", e)
        log.warning("using the bundled %s checkpoint (%s) instead", stand_in, hub.BUNDLED[stand_in])
        return load(stand_in), stand_in


def _preprocessor(config: ModelConfig, folder: Path) -> Preprocessor:
    """The folder's preprocessor_config.json, checked against the model (or the defaults)."""
    v = config.vision
    return Preprocessor.from_folder(
        folder, native_patch=v.patch_size if v.native else None, image_size=v.image_size or 224
    )


class AIMv2:
    def __init__(self, module, config: ModelConfig, preprocessor: Preprocessor, folder: Optional[Path] = None):
        self.module, self.config, self.preprocessor, self.folder = module, config, preprocessor, folder
        self._tokenizer = None
        self.text_only = False  # load(text_only=True): the image tower was not read
        self.head, self.classes = None, None  # a fine-tuned classifier's head and its class names

    def _need_images(self):
        if self.text_only:
            raise UserError("this model was loaded with text_only=True; load it without to embed images")

    def __repr__(self) -> str:
        v = self.config.vision
        size = f"{v.image_size} px" if v.image_size else "native resolution"
        return (
            f"AIMv2({self.config.name or 'unnamed'!r}, {self.config.kind}, width {v.hidden_size}, "
            f"{v.depth} blocks, patch {v.patch_size}, {size}, {self.dtype}, from {self.folder})"
        )

    @property
    def vision(self):
        return self.module.image_encoder if self.config.kind == "lit" else self.module

    @property
    def dtype(self):
        return self.vision.preprocessor.patchifier.proj.weight.dtype

    def fingerprint(self) -> str:
        """Identifies the weights: config plus the patch embedding's bytes (and, for LiT, the image
        projection), enough to tell any two checkpoints apart (an index records it)."""
        return owner.run(self._fingerprint)

    def _fingerprint(self) -> str:
        h = hashlib.sha1(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        tensors = [self.vision.preprocessor.patchifier.proj.weight]
        if self.config.kind == "lit":
            tensors.append(self.module.image_projector.weight)
        for t in tensors:
            h.update(np.array(t.astype(mx.float32)).tobytes())
        return h.hexdigest()[:16]

    @property
    def embedding_dim(self) -> int:
        """The width of a pooled embedding: LiT's projection, else the encoder's."""
        return self.config.projection_dim if self.config.kind == "lit" else self.config.vision.hidden_size

    # -- images ------------------------------------------------------------------------------
    def preprocessor_for(self, fast_decode: bool = False) -> Preprocessor:
        """This model's preprocessor, with fast decoding on or off (a copy: the model's own stays as is)."""
        return dataclasses.replace(self.preprocessor, fast_decode=fast_decode)

    def preprocess(self, images: Sequence[ImageLike]) -> list[np.ndarray]:
        return [self.preprocessor(im) for im in images]

    def check_layers(self, layers: Optional[Sequence[int]]) -> Optional[tuple]:
        """Block indices made absolute (negative ones count back), refused when out of range. layer_k
        is block k's output before the final norm: transformers' hidden_states[k + 1]."""
        if layers is None:
            return None
        try:
            return self.vision.block_indices(layers)
        except ValueError as e:
            raise UserError(str(e)) from None

    def features(self, pixels: mx.array, pool: str = "mean", layers: Optional[Sequence[int]] = None) -> dict:
        """pixels (B, H, W, 3) -> {"embedding"|"tokens": ..., "layer_i": ...} as MLX arrays.

        On MLX's CPU backend the batch is split over one CPU stream per core (cpu.split_batch)."""
        self._need_images()
        return cpu.split_batch(self._features, pixels, pool, self.check_layers(layers))

    def _features(self, pixels: mx.array, pool: str, layers) -> dict:
        if pool not in POOLS:
            raise UserError(f"unknown pool '{pool}'; use one of {', '.join(POOLS)}")
        if pool == "attn" and self.config.kind != "lit":
            raise UserError(
                "--pool attn needs a model with an attention-pool head (the LiT model); use --pool mean or none"
            )
        out = self.vision(pixels.astype(self.dtype), output_layers=layers)
        tokens, feats = out if layers is not None else (out, {})
        result = {}
        if pool == "none":
            result["tokens"] = tokens
        elif pool == "mean":
            result["embedding"] = tokens.mean(axis=1)
        else:
            result["embedding"] = self.module.embed_tokens(tokens)
        for i, f in feats.items():
            result[f"layer_{i}"] = f if pool == "none" else f.mean(axis=1)
        return result

    def embed(
        self,
        images: Sequence[ImageLike] | ImageLike,
        pool: str = "mean",
        layers: Optional[Sequence[int]] = None,
        batch_size: int = 8,
        fast_decode: bool = False,
        progress: Optional[Callable[[int, Optional[int]], None]] = None,
        cancel=None,
    ):
        """Images (paths, PIL images or HWC arrays) -> numpy features.

        A list gives a batch: (B, D) pooled or (B, N, D) tokens; one image (not in a list) gives its
        own (D,) or (N, D). With `layers`, a dict that adds "layer_k" entries. The native model's
        tokens (pool="none") differ in N per image, so there each entry is a list of (N_i, D) arrays.
        progress(done, total) and cancel (a threading.Event): as for iter_embed."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        rows = [
            f
            for _, f in self.iter_embed(
                items, pool, layers, batch_size, fast_decode=fast_decode, progress=progress, cancel=cancel
            )
        ]
        if not rows:
            return {} if layers is not None else np.zeros((0, self.vision.config.hidden_size), np.float32)
        keys = list(rows[0])
        if single:
            out = rows[0]
        elif pool == "none" and self.config.vision.native:
            out = {k: [r[k] for r in rows] for k in keys}
        else:
            out = {k: np.stack([r[k] for r in rows]) for k in keys}
        return out if layers is not None else out["tokens" if pool == "none" else "embedding"]

    def iter_embed(
        self,
        items: Iterable[ImageLike],
        pool: str = "mean",
        layers=None,
        batch_size: int = 8,
        errors: Optional[list] = None,
        read=None,
        fast_decode: bool = False,
        progress: Optional[Callable[[int, Optional[int]], None]] = None,
        cancel=None,
    ) -> Iterator[tuple]:
        """Yields (item, {name: np.ndarray}) per image, in input order, batching images of the same
        size; images are decoded in worker threads ahead of the model (preprocess.decode_ahead). With
        an `errors` list, unreadable images are appended as (item, message) instead of raising.
        `read`: item -> image, for items that are not images themselves (run in the workers too).
        fast_decode: large JPEGs decode at reduced size before the exact resize (Preprocessor.fast_decode).
        progress(done, total): called as images finish (total: len(items), None for an iterator).
        cancel: anything with is_set() (a threading.Event); once set, raises errors.Cancelled between
        batches. The model runs on the owner thread (owner.py): safe from any thread."""
        self._need_images()
        pending: list = []
        if pool not in POOLS:
            raise UserError(f"unknown pool '{pool}'; use one of {', '.join(POOLS)}")
        layers = self.check_layers(layers)
        total = len(items) if hasattr(items, "__len__") else None
        done = 0

        def flush():
            nonlocal done
            check_cancel(cancel)
            res = owner.run(self._numpy_features, np.stack([p for _, p in pending]), pool, layers)
            for j, (item, _) in enumerate(pending):
                row = {k: v[j] for k, v in res.items()}
                if not all(np.isfinite(v).all() for v in row.values()):
                    why = f"{item}: the model gave non-finite values (NaN/inf); its weights are broken or overflow"
                    if errors is None:
                        raise UserError(why)
                    errors.append((item, why))
                    continue
                yield item, row
            done += len(pending)
            pending.clear()
            if progress is not None:
                progress(done, total)

        pre = self.preprocessor_for(fast_decode)
        prepare = pre if read is None else (lambda item: pre(read(item)))
        for item, x in decode_ahead(prepare, items):
            check_cancel(cancel)
            if isinstance(x, Exception):
                if errors is None or not isinstance(x, UserError):
                    raise x
                errors.append((item, str(x)))
                done += 1
                continue
            if pending and pending[0][1].shape != x.shape:  # native sizes differ: new batch
                yield from flush()
            pending.append((item, x))
            if len(pending) == batch_size:
                yield from flush()
        if pending:
            yield from flush()

    def _numpy_features(self, pixels: np.ndarray, pool: str, layers) -> dict:
        res = self.features(mx.array(pixels), pool, layers)
        mx.eval(res)
        return {k: np.array(v.astype(mx.float32)) for k, v in res.items()}

    # -- a fine-tuned classifier ----------------------------------------------------------------
    def predict(self, images: Sequence[ImageLike], batch_size: int = 8) -> np.ndarray:
        """Class probabilities (B, len(self.classes)) from a fine-tuned classifier's head
        (`mlx-aimv2 train --objective classify`); `classes` names the columns."""
        if self.head is None:
            raise UserError(
                f"{self.config.name or self.folder}: has no classifier head; fine-tune one with "
                f"`mlx-aimv2 train --objective classify`, or give labels for zero-shot classification (a LiT model)"
            )
        items = _nonempty(images, "images", "an image")
        tokens = [f["tokens"] for _, f in self.iter_embed(items, pool="none", batch_size=batch_size)]
        return np.concatenate(
            [
                owner.run(self._head_probs, np.stack(tokens[i : i + batch_size]))
                for i in range(0, len(tokens), batch_size)
            ]
        )

    def _head_probs(self, tokens: np.ndarray) -> np.ndarray:
        return np.array(mx.softmax(self.head(mx.array(tokens)).astype(mx.float32), axis=-1))

    # -- LiT -------------------------------------------------------------------------------
    def _need_lit(self):
        if self.config.kind != "lit":
            raise UserError("this needs the LiT image-text model (apple/aimv2-large-patch14-224-lit)")

    @property
    def tokenizer(self):
        self._need_lit()
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.folder, self.config.text.context_length)
        return self._tokenizer

    def encode_image(self, images: Sequence[ImageLike]) -> np.ndarray:
        """L2-normalised image embeddings (B, projection_dim)."""
        self._need_lit()
        self._need_images()
        pixels = np.stack(self.preprocess(_nonempty(images, "images", "an image")))
        return owner.run(self._encode_image, pixels)

    def _encode_image(self, pixels: np.ndarray) -> np.ndarray:
        return np.array(self.module.encode_image(mx.array(pixels).astype(self.dtype)).astype(mx.float32))

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings (B, projection_dim)."""
        self._need_lit()
        texts = _nonempty(texts, "texts", "a string")
        bad = [t for t in texts if not isinstance(t, str)]
        if bad:
            raise UserError(f"texts: every item must be a string, got {type(bad[0]).__name__} {bad[0]!r}")
        return owner.run(self._encode_text, texts)

    def _encode_text(self, texts: list) -> np.ndarray:
        ids = mx.array(self.tokenizer(texts))
        return np.array(self.module.encode_text(ids).astype(mx.float32))

    def classify(
        self, images: Sequence[ImageLike], labels: Sequence[str], template: str = "a photo of {}."
    ) -> np.ndarray:
        """Zero-shot label probabilities (B_images, len(labels))."""
        labels = _nonempty(labels, "labels", "a label")
        prompts = fill_template(template, labels)
        img = self.encode_image(images)
        txt = self.encode_text(prompts)
        logits = owner.run(lambda: float(self.module.logit_scale().item())) * img @ txt.T
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def _nonempty(items, name: str, what: str) -> list:
    """A list argument (one item alone counts as a list of one); one UserError naming it when empty."""
    if not isinstance(items, (list, tuple)):
        items = [items]
    if not items:
        raise UserError(f"{name}: the list is empty; give at least {what}")
    return list(items)


def fill_template(template: str, labels: Sequence[str]) -> list[str]:
    """template.format(label) for each label; a template that is not one '{}' is one clear error."""
    fields = []
    if isinstance(template, str):
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError:
            fields = None  # worded below, by format itself
    if not isinstance(template, str) or fields == []:  # no '{}': every label would get the same prompt
        raise UserError(f"template {template!r}: write one '{{}}' where the label goes, e.g. 'a photo of {{}}.'")
    try:
        return [template.format(str(label)) for label in labels]
    except (IndexError, KeyError, ValueError) as e:
        raise UserError(
            f"template {template!r}: {type(e).__name__} {e}; write one '{{}}' where the label goes, "
            f"and double literal braces ('{{{{')"
        ) from None


@owner.owned
def convert(
    src: str,
    dst: Path,
    dtype: Optional[str] = None,
    revision: Optional[str] = None,
    overwrite: bool = False,
    quantization: Optional[dict] = None,
) -> Path:
    """Any supported checkpoint -> an MLX folder (model.safetensors, config.json, preprocessor_config.json).
    dtype: float32 | bfloat16 | float16, default the source's own. quantization: quantize.spec(...) to
    quantize the blocks' linear layers. An existing destination must be empty or one of our
    checkpoints unless `overwrite` (which replaces only the files we write)."""
    dtypes = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
    if dtype is not None and dtype not in dtypes:
        raise UserError(f"unknown dtype '{dtype}'; use float32, bfloat16 or float16")
    check_destination(dst, overwrite)
    module, config, folder = load_checkpoint(src, revision, dtypes.get(dtype))
    if finetuned.has_adapter(folder):  # LoRA over a (maybe quantized) base: written as plain float layers
        dequantize(lora.merge(module))
        config.quantization = None
    if quantization is not None:
        if config.quantization:
            raise UserError(
                f"{src}: already quantized ({config.quantization['bits']}-bit); convert from the float "
                f"checkpoint it was made from"
            )
        quantize(module, quantization)
        config.quantization = quantization
    pp = folder / "preprocessor_config.json"
    _preprocessor(config, folder)  # refuse an invalid one before writing anything
    preprocessor = json.loads(pp.read_text()) if pp.is_file() else None
    extra = tokenizer_files(folder) + finetuned.classifier_files(folder)
    return save(module, config, Path(dst), preprocessor, extra, overwrite=overwrite)
