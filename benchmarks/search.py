"""Search over an index: the exact brute force that mlx-aimv2 uses (index/ranking.py top_k) at 10k,
100k and 1M random unit vectors, the cost of reading the vectors out of the SQLite store when a
search process starts, and, when faiss-cpu is installed (pip install faiss-cpu), an HNSW graph for
comparison: its query time, its build time and its recall@10 against the exact answer.

    python benchmarks/search.py --out benchmarks/results/search_cpu.jsonl

Random vectors are the worst case for an approximate index (no cluster structure) and the same
case for brute force, whose cost does not depend on the data.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from common import emit, median, timed  # noqa: E402

from mlx_aimv2.index.ranking import top_k  # noqa: E402
from mlx_aimv2.index.store import Row, Store  # noqa: E402


def unit(rng, n, d):
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def store_load(n: int, d: int, rng) -> dict:
    """Write n rows to a fresh store (batches of 256, as add() commits), then time reading the matrix."""
    with tempfile.TemporaryDirectory() as tmp:
        s = Store(Path(tmp) / "lib.aimv2", create=True)
        t = time.perf_counter()
        for i in range(0, n, 256):
            vecs = unit(rng, min(256, n - i), d)
            s.put(Row(f"/photos/{i + j:07d}.jpg", 1000, 0, "0" * 40, 4000, 3000, v) for j, v in enumerate(vecs))
            s.commit()
        write = time.perf_counter() - t
        size = (Path(tmp) / "lib.aimv2").stat().st_size
        loads = timed(lambda: s.matrix(d)[1].astype(np.float32), 3)
        s.close()
    return {"write_s": round(write, 2), "load_s": round(median(loads), 3), "db_mib": round(size / 2**20, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--dims", default="128,768", help="demo-lit's and Apple's LiT embedding widths")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument(
        "--ann-max",
        type=float,
        default=1.5e8,
        help="build the HNSW graph only while n * dim is at most this (its build is slow on 2 cores)",
    )
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    try:
        import faiss
    except ImportError:
        faiss = None
        print("faiss-cpu not installed: the approximate index is skipped", file=sys.stderr)
    for d in map(int, a.dims.split(",")):
        for n in map(int, a.sizes.split(",")):
            m = unit(rng, n, d)
            qs = unit(rng, a.queries, d)
            ts = [timed(lambda q=q, m=m: top_k(m, q, 10), 1)[0] for q in qs]
            rec = {
                "what": "search",
                "n": n,
                "dim": d,
                "method": "exact (numpy, float32)",
                "k": 10,
                "query_ms": round(1e3 * median(ts), 2),
                "memory_mib": round(m.nbytes / 2**20, 1),
            }
            if n <= 100_000:
                rec.update(store_load(n, d, rng))
            emit(rec, a.out)
            if faiss is not None and n * d <= a.ann_max:
                exact = [set(top_k(m, q, 10)[0].tolist()) for q in qs]
                index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efSearch = 64
                t = time.perf_counter()
                index.add(m)
                build = time.perf_counter() - t
                ts, hits = [], 0
                for q, want in zip(qs, exact):
                    t = time.perf_counter()
                    _, got = index.search(q[None], 10)
                    ts.append(time.perf_counter() - t)
                    hits += len(want & set(got[0].tolist()))
                emit(
                    {
                        "what": "search",
                        "n": n,
                        "dim": d,
                        "method": "faiss HNSW (M 32, efSearch 64)",
                        "k": 10,
                        "query_ms": round(1e3 * median(ts), 3),
                        "build_s": round(build, 1),
                        "recall_at_10": round(hits / (10 * len(qs)), 3),
                    },
                    a.out,
                )
            m = None  # free the matrix before the next size is drawn


if __name__ == "__main__":
    main()
