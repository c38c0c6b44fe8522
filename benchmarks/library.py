"""A photo library end to end at scale: a generated library of small JPEG (and some HEIC) files
indexed with demo-lit, then what a user waits for.

- indexing throughput and resident memory at each tenth of the library (flat = independent of size);
- a re-run that finds nothing new;
- search in a fresh process: the model load, and the first query after it, with the memory-mapped
  vectors file and without it (the SQLite blobs), both for a text query (text tower only);
- near-duplicate grouping over the whole library.

    python benchmarks/library.py --n 100000 --out benchmarks/results/library_100k.jsonl

The files are synthetic scenes of 96 x 96 px (a thumbnail's cost to decode; the model sees 112 px
either way), 1000 to a folder. HEIC needs the heif extra (pip install 'mlx-aimv2[heif]'); without it --heic 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from common import emit, rss_mib  # noqa: E402

import mlx_aimv2  # noqa: E402
from mlx_aimv2 import formats  # noqa: E402
from mlx_aimv2.data import write_synthetic  # noqa: E402
from mlx_aimv2.index import vectors  # noqa: E402


def make_library(root: Path, n: int, heic: float, seed: int = 0) -> None:
    """n synthetic scenes (coloured shapes, data/synth.py) at 96 px, 1000 to a folder; every
    1/heic-th one saved as HEIC instead of JPEG."""
    scenes = write_synthetic(root.parent / "scenes", n, size=96, seed=seed, progress=True)
    every = int(1 / heic) if heic > 0 else 0
    if every:
        formats.needs(".heic")  # registers pillow-heif's opener for saving
    for i, f in enumerate(tqdm(sorted((scenes / "images").iterdir()), desc="library", unit="file")):
        folder = root / f"{i // 1000:04d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        if every and i % every == 0:
            Image.open(f).save(folder / f"{f.stem}.heic", quality=85)
            f.unlink()
        else:
            f.rename(folder / f.name)


SEARCH = """
import json, sys, time
t0 = time.perf_counter()
import mlx_aimv2
t1 = time.perf_counter()
lib = mlx_aimv2.Index(sys.argv[1], read_only=True)
lib._text_model()
t2 = time.perf_counter()
hits = lib.search(text="a red circle on the left", k=10)
t3 = time.perf_counter()
lib.search(text="two blue squares", k=10)
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "model_load_s": t2 - t1, "first_query_s": t3 - t2, "next_query_s": t4 - t3}))
"""


def fresh_search(db: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", SEARCH, str(db)], capture_output=True, text=True, check=True)
    return {k: round(v, 3) for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--heic", type=float, default=0.02, help="the share of HEIC files")
    ap.add_argument("--root", default=None, help="where the library goes (default: a temporary folder)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    tmp = tempfile.TemporaryDirectory() if a.root is None else None
    root = Path(a.root or tmp.name)
    photos, db = root / "photos", root / "lib.aimv2"
    if not photos.is_dir():
        make_library(photos, a.n, a.heic)
    base = {"bench": "library", "images": a.n, "heic_share": a.heic, "model": "demo-lit"}

    marks, t0 = [], time.perf_counter()

    def progress(done, total):
        if done == total or done % max(total // 10, 1) == 0:
            marks.append((done, time.perf_counter() - t0, rss_mib()))

    with mlx_aimv2.Index(db, model="demo-lit") as lib:
        _ = lib.model  # loaded before the clock's first mark
        t0 = time.perf_counter()
        s = lib.add([photos], batch_size=64, progress=progress)
        took = time.perf_counter() - t0
        emit({**base, "step": "index", "seconds": round(took, 1), "images_per_s": round(a.n / took, 1),
              "new": s.new, "bad": len(s.bad)}, a.out)  # fmt: skip
        last = (0, 0.0)
        for done, t, rss in marks:
            rate = (done - last[0]) / max(t - last[1], 1e-9)
            emit({**base, "step": "index_progress", "done": done, "images_per_s": round(rate, 1),
                  "rss_mib": round(rss)}, a.out)  # fmt: skip
            last = (done, t)
        t = time.perf_counter()
        again = lib.add([photos], batch_size=64)
        emit({**base, "step": "rerun", "seconds": round(time.perf_counter() - t, 2), "new": again.new}, a.out)
        t = time.perf_counter()
        groups = lib.dupes()
        emit({**base, "step": "dupes", "seconds": round(time.perf_counter() - t, 2), "groups": len(groups)}, a.out)
    emit({**base, "step": "fresh_search_mapped", **fresh_search(db)}, a.out)
    mapped = vectors.path_for(db)
    mapped.rename(mapped.with_suffix(".off"))  # without the vectors file: SQLite's blobs (read-only: not rewritten)
    try:
        emit({**base, "step": "fresh_search_sqlite", **fresh_search(db)}, a.out)
    finally:
        mapped.with_suffix(".off").rename(mapped)


if __name__ == "__main__":
    main()
