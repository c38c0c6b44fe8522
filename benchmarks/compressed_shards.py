"""What reading compressed shards costs against plain ones (data/unpacked.py), side by side in one run.

Writes the same samples (JPEGs with captions, img2dataset's layout) as plain `.tar` shards and as
`.tar.gz` / `.tar.xz` ones, then times, per format, reading every sample's bytes through the
training stream's sources (`find_sources` -> entries -> read_bytes), once with an empty unpack cache
(the first epoch: each shard is decompressed to a plain copy) and once with the cache warm (every
later epoch, and a resume). The figure is each time over the plain shards' time, and the bytes on disk.

    python benchmarks/compressed_shards.py --samples 4000 --out benchmarks/results/compressed_shards.jsonl
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from common import emit
from PIL import Image

from mlx_aimv2.data import sources, unpacked

MODES = {"tar": "w", "tar.gz": "w:gz", "tar.xz": "w:xz"}


def write(folder: Path, ext: str, samples: int, per_shard: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for s in range(0, samples, per_shard):
        with tarfile.open(folder / f"{s // per_shard:05d}.{ext}", MODES[ext]) as tf:
            for i in range(s, min(s + per_shard, samples)):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
                for name, data in ((f"{i:07d}.jpg", buf.getvalue()), (f"{i:07d}.txt", f"sample {i}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return folder


def read_all(folder: Path) -> tuple[float, int]:
    t = time.perf_counter()
    n = 0
    for e in sources.entries(sources.find_sources(str(folder))):
        if isinstance(e, sources.Sample):
            n += len(e.read_bytes())
    return time.perf_counter() - t, n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--per-shard", type=int, default=1000)
    ap.add_argument("--out")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLX_AIMV2_SHARD_CACHE"] = str(Path(tmp) / "cache")
        plain = None
        for ext in MODES:
            folder = write(Path(tmp) / ext.replace(".", "_"), ext, args.samples, args.per_shard)
            disk = sum(p.stat().st_size for p in folder.iterdir())
            shutil.rmtree(Path(tmp) / "cache", ignore_errors=True)
            unpacked._known.clear()
            cold, n = read_all(folder)
            warm, _ = read_all(folder)
            plain = plain or (cold, warm)
            emit({"bench": "compressed_shards", "format": ext, "samples": args.samples, "bytes_read": n,
                  "disk_mb": round(disk / 1e6, 2), "cold_s": round(cold, 3), "warm_s": round(warm, 3),
                  "cold_vs_plain": round(cold / plain[0], 2), "warm_vs_plain": round(warm / plain[1], 2)}, args.out)  # fmt: skip


if __name__ == "__main__":
    main()
