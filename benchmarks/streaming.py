"""Start-up and memory of `mlx-aimv2 train` against the corpus size (issue 18's table).

Writes img2dataset-layout shards (key.jpg + key.txt + key.json, 64x64 JPEGs, 10,000 samples per
shard) once, then times `mlx-aimv2 train --encoder tiny --steps 2` in a fresh process on the first
8 / 32 / 128 shards (80k / 320k / 1.28M samples, named by a brace pattern) and reads its peak RSS.
The ratio of each size's start-up and memory to the smallest's is the figure: a streaming loader
keeps both flat.

    python benchmarks/streaming.py --sizes 80000 320000 1280000 --out benchmarks/results/streaming.jsonl
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from common import emit

PER_SHARD = 10_000

# runs `train` as a child and prints its wall time and peak RSS (the child's alone)
_MEASURE = """
import resource, subprocess, sys, time
t = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - t
# ru_maxrss: KiB on Linux, bytes on macOS; printed as KiB either way
print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // (1024 if sys.platform == "darwin" else 1), code.returncode)
sys.stderr.write(code.stderr[-2000:] if code.returncode else "")
"""


def write_shards(folder: Path, count: int) -> None:
    """`count` shards; 512 distinct synthetic scenes cycle under unique keys and captions."""
    from mlx_aimv2.data.synth import scene

    rng = np.random.default_rng(0)
    pool = []
    for _ in range(512):
        img, caption, _ = scene(rng, 64, 3)
        b = io.BytesIO()
        img.save(b, format="JPEG", quality=90)
        pool.append((b.getvalue(), caption))
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        path = folder / f"{k:05d}.tar"
        if path.is_file():
            continue
        tmp = folder / f".{k:05d}.tar.partial"
        with tarfile.open(tmp, "w") as tf:
            for i in range(PER_SHARD):
                key = f"{k * PER_SHARD + i:09d}"
                jpg, caption = pool[(k * PER_SHARD + i) % len(pool)]
                caption = f"{caption} (sample {key})"
                members = (("jpg", jpg), ("txt", caption.encode()), ("json", json.dumps({"caption": caption}).encode()))
                for suffix, data in members:
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        os.replace(tmp, path)
        print(f"wrote {path}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[80_000, 320_000])
    ap.add_argument("--shards", default=os.path.join(tempfile.gettempdir(), "mlx-aimv2-stream-shards"))
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    folder = Path(a.shards)
    write_shards(folder, -(-max(a.sizes) // PER_SHARD))
    first = {}
    for n in a.sizes:
        count = -(-n // PER_SHARD)
        pattern = str(folder / f"{{00000..{count - 1:05d}}}.tar")
        walls, rss = [], []
        for _ in range(a.reps):
            with tempfile.TemporaryDirectory() as run:
                cmd = [sys.executable, "-m", "mlx_aimv2", "train", "--data", pattern, "--out", run + "/r"]
                cmd += ["--encoder", "tiny", "--steps", "2", "--no-progress"]
                r = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True)
                wall, kib, code = r.stdout.split()
                if int(code):
                    sys.exit(f"train failed on {n} samples: {r.stderr}")
                walls.append(float(wall))
                rss.append(int(kib) / 1024)
        first = first or {"wall": min(walls), "rss": min(rss)}
        emit(
            {
                "what": "train --encoder tiny --steps 2 (start-up + 2 steps)",
                "samples": count * PER_SHARD,
                "shards": count,
                "wall_s": [round(w, 1) for w in walls],
                "peak_rss_mib": [round(m) for m in rss],
                "wall_vs_smallest": round(min(walls) / first["wall"], 2),
                "rss_vs_smallest_mib": round(min(rss) - first["rss"]),
            },
            a.out,
        )


if __name__ == "__main__":
    main()
