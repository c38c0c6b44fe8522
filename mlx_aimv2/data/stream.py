"""The training stream: samples read lazily from the sources, shuffled in a bounded buffer, decoded,
augmented and tokenised by mlx-data threads in a fixed order, then full batches.

Start-up and memory do not grow with the corpus: nothing is indexed up front; the stream holds one
shard's headers, the shuffle buffer and the samples in flight. Determinism is the point: each
epoch's shard order is a permutation seeded by (seed, epoch), the buffer's draws by
(seed, epoch, stream), each sample's crop and flip by (seed, epoch, stream, ordinal), and `state()`
records all of it (shard cursor, buffer, RNG, samples in flight), so a resumed run sees exactly the
batches an uninterrupted one sees. Data-parallel ranks read disjoint shards; with fewer shards than
ranks, every rank reads all of them and keeps every world-th sample. Bad samples are skipped and
counted by reason; the batch is filled from the next ones.
"""

from __future__ import annotations

import collections
import io
import math
import queue
import re
import sys
import threading
from concurrent.futures import Future
from typing import Iterator, Optional

import numpy as np
from PIL import Image

from ..errors import UserError, is_file_fault
from ..formats import HEIF_EXT, RAW_EXT, open_image  # the same decoders and guards as inference
from ..preprocess import to_rgb
from .sources import Bad, Dataset, Sample, Source

SHUFFLE = 4096  # samples in the shuffle buffer (open_clip's webdataset pipeline draws from ~5000)


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


try:  # the stream's worker threads; mlx-data has no wheel for every Python (none for 3.14 yet)
    import mlx.data as dx
except ImportError:
    dx = None
NO_MLX_DATA = (
    "training needs mlx-data, which has no wheel for this Python ({version}); use Python 3.10 to 3.13 for "
    "`train` (e.g. `uv venv -p 3.13` or `brew install python@3.13`), then pip install mlx-aimv2 there. "
    "embed, index, search, serve, classify, convert and export work on this Python"
)


def require_mlx_data() -> None:
    """One line, before any run folder is made, where mlx-data cannot be imported."""
    if dx is None:
        raise UserError(NO_MLX_DATA.format(version=".".join(map(str, sys.version_info[:2]))))


# HEIC and RAW decoders (libheif, LibRaw) recurse deeply; mlx-data's worker threads are C++ threads
# with the platform's default stack (512 KiB on macOS), so these files are decoded on a Python thread,
# whose stack is set here (CPython's own default on macOS is 16 MiB; on Linux 8 MiB).
HEAVY_EXT = HEIF_EXT + RAW_EXT
DECODE_STACK = 16 << 20
DECODE_THREADS = 2
_heavy_lock = threading.Lock()
_heavy_jobs: Optional[queue.SimpleQueue] = None


def _decode_heavy(data: bytes, suffix: str) -> Image.Image:
    """to_rgb(open_image(...)) on one of DECODE_THREADS daemon threads started with DECODE_STACK bytes
    of stack; its result or its exception here."""
    global _heavy_jobs
    with _heavy_lock:
        if _heavy_jobs is None:
            _heavy_jobs = queue.SimpleQueue()
            old = threading.stack_size(DECODE_STACK)
            try:
                for i in range(DECODE_THREADS):
                    threading.Thread(
                        target=_heavy_worker, args=(_heavy_jobs,), name=f"mlx-aimv2-decode-{i}", daemon=True
                    ).start()
            finally:
                threading.stack_size(old)
    done: Future = Future()
    _heavy_jobs.put((done, data, suffix))
    return done.result()


def _heavy_worker(jobs: queue.SimpleQueue) -> None:
    while True:
        done, data, suffix = jobs.get()
        try:
            done.set_result(to_rgb(open_image(io.BytesIO(data), suffix)))
        except BaseException as e:  # handed to the loader thread that asked
            done.set_exception(e)


def sample_image(s: Sample) -> Image.Image:
    """A sample's image, oriented by EXIF and in RGB, with the size guards of inference; any failure is
    one UserError naming the sample. HEIC and RAW are decoded on a thread of known stack (above)."""
    try:
        if s.suffix.lower() in HEAVY_EXT:
            return _decode_heavy(s.read_bytes(), s.suffix)
        return to_rgb(open_image(io.BytesIO(s.read_bytes()), s.suffix))
    except Exception as e:
        if not is_file_fault(e) and not isinstance(e, UserError):
            raise
        raise UserError(f"{s.name}: cannot read the image ({e})") from None


class Skips:
    """Skipped samples, counted by reason ("reason (detail)" groups by what precedes " ("), with the
    first one kept as an example."""

    def __init__(self):
        self.count, self.reasons, self.first = 0, collections.Counter(), None

    def add(self, where: str, why: str) -> None:
        self.count += 1
        self.reasons[why.split(" (")[0]] += 1
        if self.first is None:
            self.first = (where, why)

    def __len__(self) -> int:
        return self.count

    def summary(self) -> str:
        """'N: a reason, b reason (first: where: why)'."""
        counts = ", ".join(f"{n} {r}" for r, n in self.reasons.most_common())
        return f"{self.count}: {counts} (first: {self.first[0]}: {self.first[1]})" if self.count else "0"

    def to_json(self) -> dict:
        return {"count": self.count, "reasons": dict(self.reasons), "first": self.first}

    @classmethod
    def from_json(cls, d: dict) -> "Skips":
        s = cls()
        s.count, s.reasons = d["count"], collections.Counter(d["reasons"])
        s.first = tuple(d["first"]) if d["first"] else None
        return s

    def merge(self, other: "Skips") -> None:
        self.count += other.count
        self.reasons.update(other.reasons)
        self.first = self.first or other.first


class Reader:
    """One stream of samples, in a resumable order: each epoch, the shards (of this stream) in an
    order seeded by (seed, epoch), their entries in order through a shuffle buffer. Everything it
    is in the middle of is in state()."""

    def __init__(self, sources: list, seed: int, stream: int, share: tuple, shuffle: int, skips: Optional[Skips]):
        self.sources, self.seed, self.stream, self.share = sources, seed, stream, share  # share: (rank, ranks)
        self.size, self.skips = max(1, shuffle), skips  # skips: None where another stream counts bad entries
        self.names = {s.name for s in sources}
        self.failed: set = set()  # shards found bad (each counted once)
        self._begin(0)

    def _begin(self, epoch: int) -> None:
        # where the reader is: the shard (its index in `mine`), the entry within it, samples drawn
        self.epoch, self.shard, self.entry, self.drawn, self.found = epoch, 0, 0, 0, 0
        self.rng = np.random.default_rng([self.seed, epoch, self.stream])
        self.buffer: list = []
        self._it = None
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.sources))
        self.mine = order[self.share[0] :: self.share[1]].tolist()

    def _entry(self) -> Optional[Sample]:
        """The next sample of this epoch's shards; bad entries on the way are counted. None: done."""
        while self.shard < len(self.mine):
            if self._it is None:
                self._it = self.sources[self.mine[self.shard]].entries()
                for _ in range(self.entry):  # a resumed cursor: skip what was read before
                    next(self._it, None)
            for e in self._it:
                self.entry += 1
                if isinstance(e, Sample):
                    self.found += 1
                    return e
                if isinstance(e, Bad) and self.skips is not None and self._first_time(e):
                    self.skips.add(e.where, e.why)
            self.shard, self.entry, self._it = self.shard + 1, 0, None
        return None

    def _first_time(self, e: Bad) -> bool:
        """Bad entries count once: those of the first epoch, and a shard that goes bad later (one that
        vanishes mid-run) when it is first found so."""
        shard = e.where in self.names
        if shard and e.where in self.failed:
            return False
        if shard:
            self.failed.add(e.where)
        return self.epoch == 0 or shard

    def next(self) -> tuple:
        """(epoch, ordinal in the epoch, sample), drawn at random from the buffer as it refills."""
        while True:
            while len(self.buffer) < self.size:
                s = self._entry()
                if s is None:
                    break
                self.buffer.append(s)
            if self.buffer:
                i = int(self.rng.integers(len(self.buffer)))
                s = self.buffer[i]
                self.buffer[i] = self.buffer[-1]
                self.buffer.pop()
                self.drawn += 1
                return self.epoch, self.drawn - 1, s
            if self.found == 0:
                raise UserError(self._nothing())
            self._begin(self.epoch + 1)

    def _nothing(self) -> str:
        names = ", ".join(self.sources[i].name for i in self.mine[:2]) or "no shards"
        bad = f"; skipped {self.skips.summary()}" if self.skips is not None and len(self.skips) else ""
        return f"no usable image + caption pair in {len(self.mine)} source(s) ({names}{', ...' if len(self.mine) > 2 else ''}){bad}"

    def state(self) -> dict:
        return {
            "epoch": self.epoch, "shard": self.shard, "entry": self.entry, "drawn": self.drawn, "found": self.found,
            "rng": self.rng.bit_generator.state, "buffer": [s.to_json() for s in self.buffer],
            "failed": sorted(self.failed),
        }  # fmt: skip

    def restore(self, st: dict) -> None:
        self._begin(st["epoch"])
        old = "k" in st  # checkpoints before these keys were named
        self.shard, self.entry = st["k" if old else "shard"], st["j" if old else "entry"]
        self.drawn, self.found = st["n" if old else "drawn"], st["found"]
        self.rng.bit_generator.state = st["rng"]
        self.buffer = [Sample.from_json(r) for r in st["buffer"]]
        self.failed = set(st["failed"])


class TrainStream:
    field = "images"  # what a batch calls its inputs

    def __init__(
        self,
        sources: list[Source],
        tokenizer,
        image_size: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        threads: int = 2,
        augment: bool = True,
        scale=(0.4, 1.0),
        ratio=(3 / 4, 4 / 3),
        mirror: bool = False,
        hflip: bool = True,
        shuffle: int = SHUFFLE,
    ):
        """tokenizer: captions -> (n, L) int32 ids, called in the loader threads; mirror: flipped
        images get mirror_caption() of their caption; hflip: whether augmentation flips at all."""
        self.sources, self.tokenizer = sources, tokenizer
        self.size, self.batch_size, self.seed = image_size, batch_size, seed
        self.rank, self.world, self.threads = rank, world, threads
        self.augment, self.scale, self.ratio, self.mirror, self.hflip = augment, scale, ratio, mirror, hflip
        self.by_shards = len(sources) >= world  # else every rank reads all, keeping every world-th sample
        self.skipped = Skips()
        self.reader = Reader(
            sources, seed, rank if self.by_shards else 0, (rank, world) if self.by_shards else (0, 1), shuffle,
            self.skipped if self.by_shards or rank == 0 else None,
        )  # fmt: skip
        self.pending: collections.deque = collections.deque()  # (epoch, ordinal, sample) drawn, not yet in a batch
        self.tally: dict = {}  # epoch -> [samples, readable]: an epoch with none readable stops the run
        self.samples = 0  # samples that went into batches

    def _draw(self) -> tuple:
        while True:
            epoch, n, s = self.reader.next()
            if self.by_shards or n % self.world == self.rank:
                return epoch, n, s

    # -- where the stream is ---------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "kind": "stream", "sources": [len(self.sources), self.sources[0].name], "ranks": self.world,
            "reader": self.reader.state(), "pending": [[e, n, s.to_json()] for e, n, s in self.pending],
            "skipped": self.skipped.to_json(), "tally": self.tally, "samples": self.samples,
        }  # fmt: skip

    def restore(self, st: dict) -> Optional[str]:
        """Continue exactly where `st` was; a note when it cannot (other data, an older checkpoint)."""
        if st.get("kind") != "stream" or st.get("sources") != [len(self.sources), self.sources[0].name]:
            return "the data differs from the checkpoint's (or it records no stream): the stream starts over"
        self.reader.restore(st["reader"])
        self.pending = collections.deque((e, n, Sample.from_json(s)) for e, n, s in st["pending"])
        self.skipped = Skips.from_json(st["skipped"])
        if self.reader.skips is not None:
            self.reader.skips = self.skipped
        self.tally = {int(k): v for k, v in st["tally"].items()}
        self.samples = st["samples"]
        return None

    @property
    def epoch(self) -> int:
        return self.pending[0][0] if self.pending else self.reader.epoch

    # -- the work of the loader threads -----------------------------------------------------------------
    def _load(self, epoch: int, n: int, s: Sample) -> dict:
        try:
            img = sample_image(s)
            rng = np.random.default_rng([self.seed, epoch, self.reader.stream, n])
            flip = False
            if self.augment:
                l, t, w, h = random_resized_crop_box(rng, *img.size, self.scale, self.ratio)
                img = img.resize((self.size, self.size), Image.BICUBIC, box=(l, t, l + w, t + h))
                flip = rng.random() < 0.5 and self.hflip  # drawn either way: the crops stay the same
                if flip:
                    img = img.transpose(Image.FLIP_LEFT_RIGHT)
            else:
                img = img.resize((self.size, self.size), Image.BICUBIC)
            caption = mirror_caption(s.caption) if flip and self.mirror else s.caption
            return {"x": np.array(img, dtype=np.uint8), "ids": self.tokenizer([caption])[0]}
        except Exception as e:  # corrupt, truncated, vanished: skip and count, never stop the run
            return {"error": np.frombuffer(str(e)[:300].encode(), np.uint8).copy()}

    def _decoded(self) -> Iterator[dict]:
        """Results for the pending samples, in order, from mlx-data threads (a chunk at a time)."""
        chunk = max(32, 2 * self.batch_size)  # drawn ahead of decoding: cheap references, not images
        while True:
            while len(self.pending) < chunk:
                self.pending.append(self._draw())
            work = list(self.pending)
            ahead = min(len(work), max(4 * self.threads, self.batch_size))
            keys = dx.buffer_from_vector([{"k": np.array(i)} for i in range(len(work))])
            yield from keys.sample_transform(lambda d, work=work: self._load(*work[int(d["k"])])).ordered_prefetch(
                ahead, self.threads
            )

    def __iter__(self) -> Iterator[dict]:
        """Endless full batches {"images": (B, S, S, 3) uint8, "ids": (B, L) int32} (`field` names the first)."""
        images, rows = [], []
        for r in self._decoded():
            epoch, _, s = self.pending.popleft()
            tally = self.tally.setdefault(epoch, [0, 0])
            tally[0] += 1
            if "error" in r:
                if epoch == 0:  # each bad sample counts once
                    self.skipped.add(s.name, "unreadable image (" + bytes(r["error"]).decode(errors="replace") + ")")
                done = self.tally.get(epoch - 1)
                if tally[1] == 0 and done is not None and done[1] == 0:
                    raise UserError(
                        f"no readable image in {done[0]} samples (last: {s.name}: "
                        f"{bytes(r['error']).decode(errors='replace')}); check the dataset"
                    )
                continue
            tally[1] += 1
            self.tally = {e: t for e, t in self.tally.items() if e >= epoch - 1}
            done = self.tally.get(epoch - 1)
            if self.samples == 0 and done is not None and done[1] < self.batch_size:
                share = f" per rank on {self.world} ranks" if self.world > 1 else ""
                raise UserError(
                    f"{done[1]} usable samples cannot fill a batch of {self.batch_size}{share}; "
                    f"lower --batch-size or add data"
                )
            images.append(r["x"])
            rows.append(r["ids"])
            if len(images) == self.batch_size:
                self.samples += len(images)
                yield {self.field: np.stack(images), "ids": np.stack(rows)}
                images, rows = [], []


class TokenStream:
    """LiT tuning's stream: the frozen encoder's tokens in a TokenCache over an in-memory Dataset,
    each epoch a permutation seeded by (seed, epoch), ranks taking strided shares (no augmentation:
    the tokens are fixed)."""

    field = "tokens"

    def __init__(
        self, cache, data: Dataset, ids: np.ndarray, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1
    ):
        if len(data) < world * batch_size:
            raise UserError(f"{len(data)} samples cannot fill a batch of {batch_size} on {world} rank(s)")
        self.cache, self.data, self.ids = cache, data, ids
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.epoch, self.offset, self.samples = 0, 0, 0  # offset: samples of this rank's share consumed
        self.skipped = Skips()

    def state(self) -> dict:
        return {"kind": "tokens", "epoch": self.epoch, "offset": self.offset, "skipped": self.skipped.to_json()}

    def restore(self, st: dict) -> Optional[str]:
        if st.get("kind") != "tokens":
            return "the checkpoint records no token stream: the stream starts over"
        self.epoch, self.offset, self.skipped = st["epoch"], st["offset"], Skips.from_json(st["skipped"])
        return None

    def __iter__(self) -> Iterator[dict]:
        rows, tokens = [], []
        while True:
            good = 0
            share = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.data))[self.rank :: self.world]
            for i in share[self.offset :].tolist():
                self.offset += 1
                x = self.cache.get(i)
                if x is None:
                    self.skipped.add(self.data.samples[i].name, self.cache.why(i))
                    continue
                good += 1
                tokens.append(x)
                rows.append(self.ids[i])
                if len(tokens) == self.batch_size:
                    self.samples += len(tokens)
                    yield {self.field: np.stack(tokens), "ids": np.stack(rows)}
                    rows, tokens = [], []
            if good == 0:
                raise UserError(f"no cached tokens in {len(share)} samples; check the dataset")
            self.epoch, self.offset = self.epoch + 1, 0
