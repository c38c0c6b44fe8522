"""The training stream: mlx-data threads decode and augment samples in a fixed order, then full batches.

Determinism is the point: each epoch's order is a permutation seeded by (seed, epoch), each
sample's crop and flip by (seed, epoch, index), and `position` = (epoch, offset) says where a
resume continues. Ranks take disjoint strided shares of each epoch. A sample that fails to decode
is skipped and counted; the batch is filled from the next ones.
"""

from __future__ import annotations

import io
import math
import re
from typing import Iterator, Optional

import mlx.data as dx
import numpy as np
from PIL import Image

from ..errors import UserError
from ..formats import open_image  # the same decoders and guards as inference
from ..preprocess import to_rgb
from .sources import Dataset, Sample


def random_resized_crop_box(rng: np.random.Generator, w: int, h: int, scale=(0.4, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop box (left, top, width, height): 10 tries, then a centre crop."""
    area = w * h
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ar = math.exp(rng.uniform(*log_r))
        cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def mirror_caption(text: str) -> str:
    """The caption of the horizontally flipped image: 'left' and 'right' swap."""
    return _LR.sub(
        lambda m: _SWAP[m.group(0).lower()] if m.group(0).islower() else _SWAP[m.group(0).lower()].capitalize(), text
    )


_SWAP = {"left": "right", "right": "left"}
_LR = re.compile(r"\b(left|right|Left|Right)\b")


def sample_image(s: Sample) -> Image.Image:
    """A sample's image, oriented by EXIF and in RGB, with the size guards of inference; any failure is
    one UserError naming the sample."""
    try:
        return to_rgb(open_image(io.BytesIO(s.read_bytes()), s.suffix))
    except Exception as e:
        raise UserError(f"{s.name}: cannot read the image ({e})") from None


class TrainStream:
    field = "images"  # what a batch calls its inputs

    def __init__(
        self,
        data: Dataset,
        ids: np.ndarray,
        image_size: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        threads: int = 2,
        augment: bool = True,
        scale=(0.4, 1.0),
        ratio=(3 / 4, 4 / 3),
        mirrored_ids: Optional[np.ndarray] = None,
    ):
        """ids: (len(data), L) int32 pre-tokenised captions; mirrored_ids: those of mirror_caption(),
        used for flipped images (default: the same ids)."""
        if len(data) < world * batch_size:
            raise ValueError(f"{len(data)} samples cannot fill a batch of {batch_size} on {world} rank(s)")
        self.data, self.ids = data, ids
        self.mirrored_ids = ids if mirrored_ids is None else mirrored_ids
        self.size, self.batch_size, self.seed = image_size, batch_size, seed
        self.rank, self.world, self.threads = rank, world, threads
        self.augment, self.scale, self.ratio = augment, scale, ratio
        self.epoch, self.offset = 0, 0  # offset: samples of this rank's share consumed
        self.skipped: list = []  # (sample name, why)

    @property
    def position(self) -> tuple[int, int]:
        return self.epoch, self.offset

    def seek(self, epoch: int, offset: int) -> None:
        self.epoch, self.offset = epoch, offset

    def _share(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.data))
        return order[self.rank :: self.world]

    def _load(self, sample: dict) -> dict:
        i, epoch = int(sample["idx"]), int(sample["epoch"])
        try:
            img = sample_image(self.data.samples[i])
            rng = np.random.default_rng([self.seed, epoch, i])
            flip = False
            if self.augment:
                l, t, w, h = random_resized_crop_box(rng, *img.size, self.scale, self.ratio)
                img = img.resize((self.size, self.size), Image.BICUBIC, box=(l, t, l + w, t + h))
                flip = rng.random() < 0.5
                if flip:
                    img = img.transpose(Image.FLIP_LEFT_RIGHT)
            else:
                img = img.resize((self.size, self.size), Image.BICUBIC)
            return {
                "idx": sample["idx"],
                "x": np.array(img, dtype=np.uint8),
                "flip": np.array(int(flip), dtype=np.uint8),
            }
        except Exception as e:  # corrupt, truncated, unreadable: skip and count, never stop the run
            return {"idx": sample["idx"], "error": np.frombuffer(str(e)[:200].encode(), np.uint8).copy()}

    def _epoch_samples(self) -> Iterator[dict]:
        share = self._share(self.epoch)[self.offset :]
        buf = dx.buffer_from_vector([{"idx": np.array(i), "epoch": np.array(self.epoch)} for i in share])
        yield from buf.sample_transform(self._load).ordered_prefetch(4 * self.batch_size, self.threads)

    def __iter__(self) -> Iterator[dict]:
        """Endless full batches {"images": (B, S, S, 3) uint8, "ids": (B, L) int32} (`field` names the first)."""
        images, rows = [], []
        while True:
            good = pulled = 0
            for s in self._epoch_samples():
                self.offset += 1
                pulled += 1
                i = int(s["idx"])
                if "error" in s:
                    self.skipped.append((self.data.samples[i].name, bytes(s["error"]).decode(errors="replace")))
                    continue
                good += 1
                images.append(s["x"])
                rows.append(self.mirrored_ids[i] if "flip" in s and bool(s["flip"]) else self.ids[i])
                if len(images) == self.batch_size:
                    yield {self.field: np.stack(images), "ids": np.stack(rows)}
                    images, rows = [], []
            if good == 0 and pulled > 0:
                name, why = self.skipped[-1]
                raise UserError(f"no readable image in {pulled} samples (last: {name}: {why}); check the dataset")
            self.epoch, self.offset = self.epoch + 1, 0


class TokenStream(TrainStream):
    """LiT tuning's stream: the same order, shares and resume positions as TrainStream, over the frozen
    encoder's tokens in a TokenCache instead of decoded images (no augmentation: tokens are fixed)."""

    field = "tokens"

    def __init__(
        self, cache, data: Dataset, ids: np.ndarray, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1
    ):
        super().__init__(data, ids, 0, batch_size, seed, rank, world, augment=False)
        self.cache = cache

    def _epoch_samples(self) -> Iterator[dict]:
        for i in self._share(self.epoch)[self.offset :]:
            x = self.cache.get(int(i))
            if x is None:
                yield {"idx": i, "error": np.frombuffer(self.cache.why(int(i)).encode(), np.uint8)}
            else:
                yield {"idx": i, "x": x}
