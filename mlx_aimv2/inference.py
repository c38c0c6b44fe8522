"""The model classes `load()` returns, one per kind of model folder (kinds.py), over one base:

    AIMv2            the shared base: an image encoder with its preprocessing; embed / iter_embed / features
    Encoder          a plain encoder (published, converted, or a pre-training run's export)
    ImageClassifier  an encoder with a fine-tuned head: + predict, classes
    LiTModel         the image-text model: + encode_image / encode_text / classify, pool="attn"

Every image embedding goes one way: iter_embed (decode in worker threads, batch by shape, the model
on MLX's owner thread). Methods marked @owner.owned run their body on that thread, so every call is
safe from any thread. Inputs are checked once, where they enter a public method.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from . import cpu, finetuned, kinds, owner
from .checkpoints.load import load_checkpoint
from .config import ModelConfig
from .environment import wired, wired_limit_for
from .errors import UserError, check_cancel
from .preprocess import ImageLike, Preprocessor, decode_ahead
from .prompts import fill_template
from .tokenizer import load_tokenizer, not_unicode


class AIMv2:
    """An AIMv2 image encoder with its preprocessing (the base of every kind load() returns)."""

    kind = kinds.ENCODER
    pools = ("mean", "none")

    def __init__(self, module, config: ModelConfig, preprocessor: Preprocessor, folder: Optional[Path] = None):
        self.module, self.config, self.preprocessor, self.folder = module, config, preprocessor, folder
        # on Metal, a model over 1 GiB keeps its weights wired while it computes, and only then
        self.wired_limit = wired_limit_for(sum(v.nbytes for _, v in tree_flatten(module.parameters())))

    def __repr__(self) -> str:
        v = self.config.vision
        size = f"{v.image_size} px" if v.image_size else "native resolution"
        return (
            f"AIMv2({self.config.name or 'unnamed'!r}, {self.kind}, width {v.hidden_size}, "
            f"{v.depth} blocks, patch {v.patch_size}, {size}, {self.dtype}, from {self.folder})"
        )

    @property
    def vision(self):
        """The image encoder (an AIMv2VisionEncoder)."""
        return self.module

    @property
    def dtype(self):
        return self.vision.preprocessor.patchifier.proj.weight.dtype

    @owner.owned
    def fingerprint(self) -> str:
        """Identifies the weights: config plus the patch embedding's bytes (and, for LiT, the image
        projection), enough to tell any two checkpoints apart (an index records it)."""
        h = hashlib.sha1(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for t in self._fingerprint_tensors():
            h.update(np.array(t.astype(mx.float32)).tobytes())
        return h.hexdigest()[:16]

    def _fingerprint_tensors(self) -> list:
        return [self.vision.preprocessor.patchifier.proj.weight]

    @property
    def embedding_dim(self) -> int:
        """The width of a pooled embedding."""
        return self.config.vision.hidden_size

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

    def _check_images(self) -> None:
        """Refuse image work the model cannot do (a LiT model loaded text_only)."""

    def check_pool(self, pool: str) -> str:
        if pool == "attn" and "attn" not in self.pools:
            raise UserError(
                "--pool attn needs a model with an attention-pool head (the LiT model); use --pool mean or none"
            )
        if pool not in self.pools:
            raise UserError(f"unknown pool '{pool}'; use one of {', '.join(self.pools)}")
        return pool

    def features(self, pixels: mx.array, pool: str = "mean", layers: Optional[Sequence[int]] = None) -> dict:
        """pixels (B, H, W, 3) -> {"embedding"|"tokens": ..., "layer_i": ...} as MLX arrays, on the
        calling thread (use it from one thread; embed / iter_embed are safe from any).

        On MLX's CPU backend the batch is split over one CPU stream per core (cpu.split_batch)."""
        self._check_images()
        return self._features(pixels, self.check_pool(pool), self.check_layers(layers))

    def _features(self, pixels: mx.array, pool: str, layers: Optional[tuple]) -> dict:
        return cpu.split_batch(self._forward, pixels, pool, layers)

    def _forward(self, pixels: mx.array, pool: str, layers) -> dict:
        out = self.vision(pixels.astype(self.dtype), output_layers=layers)
        tokens, feats = out if layers is not None else (out, {})
        result = {"tokens": tokens} if pool == "none" else {"embedding": self._pool(tokens, pool)}
        for i, f in feats.items():
            result[f"layer_{i}"] = f if pool == "none" else f.mean(axis=1)
        return result

    def _pool(self, tokens: mx.array, pool: str) -> mx.array:
        return tokens.mean(axis=1)

    @owner.owned
    def _numpy_features(self, pixels: np.ndarray, pool: str, layers) -> dict:
        with wired(self.wired_limit):
            res = self._features(mx.array(pixels), pool, layers)
            mx.eval(res)
            return {k: np.array(v.astype(mx.float32)) for k, v in res.items()}

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
            return {} if layers is not None else np.zeros((0, self.embedding_dim), np.float32)
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
        self._check_images()
        pool, layers = self.check_pool(pool), self.check_layers(layers)
        return self._iter_embed(items, pool, layers, batch_size, errors, read, fast_decode, progress, cancel)

    def _iter_embed(self, items, pool, layers, batch_size, errors, read, fast_decode, progress, cancel):
        pending: list = []
        total = len(items) if hasattr(items, "__len__") else None
        done = 0

        def flush():
            nonlocal done
            check_cancel(cancel)
            res = self._numpy_features(np.stack([p for _, p in pending]), pool, layers)
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


class Encoder(AIMv2):
    """A plain AIMv2 encoder: patch tokens and pooled embeddings."""


class ImageClassifier(Encoder):
    """An encoder with a fine-tuned attentive-pool head (`mlx-aimv2 train --objective classify`)."""

    kind = kinds.CLASSIFIER

    def __init__(self, module, config, preprocessor, folder, head, classes: list[str]):
        super().__init__(module, config, preprocessor, folder)
        self.head, self.classes = head, classes

    def predict(self, images: Sequence[ImageLike], batch_size: int = 8) -> np.ndarray:
        """Class probabilities (B, len(self.classes)); `classes` names the columns."""
        items = nonempty(images, "images", "an image")
        return np.stack([p for _, p in self.iter_predict(items, batch_size)])

    def iter_predict(self, items: Iterable[ImageLike], batch_size: int = 8, errors: Optional[list] = None):
        """Yields (item, class probabilities) in input order; with an `errors` list, unreadable images
        go there as (item, why) and the rest go on (iter_embed)."""
        pending: list = []
        for item, f in self.iter_embed(items, pool="none", batch_size=batch_size, errors=errors):
            pending.append((item, f["tokens"]))
            if len(pending) == batch_size:
                yield from zip([i for i, _ in pending], self._head_probs(np.stack([t for _, t in pending])))
                pending = []
        if pending:
            yield from zip([i for i, _ in pending], self._head_probs(np.stack([t for _, t in pending])))

    @owner.owned
    def _head_probs(self, tokens: np.ndarray) -> np.ndarray:
        return np.array(mx.softmax(self.head(mx.array(tokens)).astype(mx.float32), axis=-1))


class LiTModel(AIMv2):
    """The image-text model (AIMv2-L LiT): image and text embeddings in one space, zero-shot labels.
    text_only (load(text_only=True)): the image tower was never read; image methods refuse."""

    kind = kinds.LIT
    pools = ("mean", "none", "attn")

    def __init__(self, module, config, preprocessor, folder, text_only: bool = False):
        super().__init__(module, config, preprocessor, folder)
        self.text_only = text_only
        self._tokenizer = None

    @property
    def vision(self):
        return self.module.image_encoder

    @property
    def embedding_dim(self) -> int:
        return self.config.projection_dim

    def _fingerprint_tensors(self) -> list:
        return [*super()._fingerprint_tensors(), self.module.image_projector.weight]

    def _pool(self, tokens: mx.array, pool: str) -> mx.array:
        return self.module.embed_tokens(tokens) if pool == "attn" else super()._pool(tokens, pool)

    def _check_images(self) -> None:
        if self.text_only:
            raise UserError("this model was loaded with text_only=True; load it without to embed images")

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.folder, self.config.text.context_length)
        return self._tokenizer

    def encode_image(self, images: Sequence[ImageLike], batch_size: int = 8) -> np.ndarray:
        """L2-normalised image embeddings (B, projection_dim): iter_embed's attention-pooled ones."""
        items = nonempty(images, "images", "an image")
        return np.stack([f["embedding"] for _, f in self.iter_embed(items, pool="attn", batch_size=batch_size)])

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings (B, projection_dim)."""
        texts = nonempty(texts, "texts", "a string")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise UserError(f"texts: every item must be a string, got {type(t).__name__} {t!r}")
            why = not_unicode(t)  # the tokenizer would fail with a TypeError
            if why:
                raise UserError(f"texts[{i}] is not valid Unicode ({why}); pass UTF-8 text")
        return self._text_embeddings(texts)

    @owner.owned
    def _text_embeddings(self, texts: list) -> np.ndarray:
        ids = mx.array(self.tokenizer(texts))
        with wired(self.wired_limit):
            return np.array(self.module.encode_text(ids).astype(mx.float32))

    @owner.owned
    def logit_scale(self) -> float:
        return float(self.module.logit_scale().item())

    def classify(
        self, images: Sequence[ImageLike], labels: Sequence[str], template: str = "a photo of {}."
    ) -> np.ndarray:
        """Zero-shot label probabilities (B_images, len(labels))."""
        items = nonempty(images, "images", "an image")
        return np.stack([p for _, p in self.iter_classify(items, labels, template)])

    def iter_classify(self, items: Iterable[ImageLike], labels: Sequence[str], template: str = "a photo of {}.",
                      errors: Optional[list] = None, batch_size: int = 8):  # fmt: skip
        """Yields (item, zero-shot label probabilities) in input order; bad images go to `errors`."""
        labels = nonempty(labels, "labels", "a label")
        text = self.encode_text(fill_template(template, labels))
        scale = self.logit_scale()
        for item, f in self.iter_embed(items, pool="attn", batch_size=batch_size, errors=errors):
            logits = scale * f["embedding"] @ text.T
            e = np.exp(logits - logits.max())
            yield item, e / e.sum()


def needs(model: AIMv2, cls: type, what: str) -> None:
    """Refuse, in one line, a model of the wrong kind for a command (`what`)."""
    if isinstance(model, cls):
        return
    name = model.config.name or model.folder
    if cls is ImageClassifier:
        raise UserError(
            f"{name}: has no classifier head; fine-tune one with `mlx-aimv2 train --objective classify`, "
            f"or give labels for zero-shot classification (a LiT model)"
        )
    raise UserError(
        f"{name}: {what} needs the LiT image-text model (apple/aimv2-large-patch14-224-lit, or a "
        f"`train --objective lit` run's export); this is {kinds.describe(model.kind)}"
    )


@owner.owned
def open_model(name_or_path, revision=None, dtype=None, keep_quantized=None, text_only=False, local=None) -> AIMv2:
    """The model class of the folder's kind, its weights read and evaluated (see api.load); local: the
    folder hub.resolve found for the name, when the caller looked first."""
    module, config, folder = load_checkpoint(name_or_path, revision, dtype, local)
    cpu.float_layers(module, keep_quantized)
    cpu.use_kernels(module)
    text_only = text_only and kinds.is_lit(config)
    if text_only:
        patch = module.image_encoder.preprocessor.patchifier
        module.image_encoder = nn.Module()  # the tower is dropped unread; the fingerprint's tensors stay
        module.image_encoder.preprocessor = nn.Module()
        module.image_encoder.preprocessor.patchifier = patch
    # evaluated here: a lazy array belongs to the owner thread's stream, a computed one to no thread,
    # so the module's weights may then be used directly from any (one) thread too
    mx.eval(module.parameters())
    pre = preprocessor_of(config, folder)
    if kinds.is_lit(config):
        return LiTModel(module, config, pre, folder, text_only)
    if kinds.model_kind(folder) == kinds.CLASSIFIER:
        head, classes = finetuned.read_classifier(folder, config.vision.hidden_size)
        return ImageClassifier(module, config, pre, folder, head, classes)
    return Encoder(module, config, pre, folder)


def preprocessor_of(config: ModelConfig, folder: Path) -> Preprocessor:
    """The folder's preprocessor_config.json, checked against the model (or the defaults)."""
    v = config.vision
    return Preprocessor.from_folder(
        folder, native_patch=v.patch_size if v.native else None, image_size=v.image_size or 224
    )


def nonempty(items, name: str, what: str) -> list:
    """A list argument (one item alone counts as a list of one); one UserError naming it when empty."""
    if not isinstance(items, (list, tuple)):
        items = [items]
    if not items:
        raise UserError(f"{name}: the list is empty; give at least {what}")
    return list(items)
