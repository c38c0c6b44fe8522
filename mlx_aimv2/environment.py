"""What MLX runs on here: the backend, its memory, its GEMM rate; `mlx-aimv2 doctor` prints it.
Everything about running fast on a CPU (the BLAS included) lives in cpu.py."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import time

import mlx.core as mx

from .cpu import BLAS_FIX, backend, loaded_blas


def gemm_gflops(n: int = 512, reps: int = 3) -> float:
    """fp32 GEMM rate on the default device, a quick probe (~10 ms with a good BLAS)."""
    a = mx.random.normal((n, n))
    b = mx.random.normal((n, n))
    mx.eval(a @ b)
    t0 = time.perf_counter()
    for _ in range(reps):
        mx.eval(a @ b)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


# Above this many bytes of weights, load() wires them on Metal (as mlx-lm does) so macOS does not
# page a large model out between calls; small models do not need it.
WIRED_THRESHOLD = 1 << 30


def wired_limit_for(nbytes: int) -> int:
    """The wired-memory limit a model of `nbytes` runs best under on Metal (its weights kept resident,
    as mlx-lm does): the recommended working set for a model over WIRED_THRESHOLD; 0 for no change
    (smaller models, the CPU and CUDA)."""
    if nbytes < WIRED_THRESHOLD or not mx.metal.is_available():
        return 0
    return int(mx.device_info().get("max_recommended_working_set_size") or 0)


@contextlib.contextmanager
def wired(limit: int):
    """The wired limit raised for the calls inside, and restored after: an idle app or server keeps
    nothing pinned (mlx-lm's wired_limit does the same around generation). Inert when limit is 0."""
    if not limit:
        yield
        return
    old = mx.set_wired_limit(limit)
    try:
        yield
    finally:
        mx.synchronize()  # the work that needed the pages is done before they are unpinned
        mx.set_wired_limit(old)


# a long-lived process (serve, index --watch, an app) keeps at most this much freed memory for reuse
CACHE_LIMIT = 1 << 30


def release_cache() -> None:
    """Give MLX's cached buffers back (an index pass or a burst of requests is over)."""
    mx.clear_cache()


def limit_cache() -> None:
    """Cap MLX's buffer cache for a long-lived process: freed buffers beyond CACHE_LIMIT go back to the
    system instead of piling up across requests of many shapes."""
    mx.set_cache_limit(min(CACHE_LIMIT, int(mx.device_info().get("memory_size", CACHE_LIMIT * 8)) // 8))


def report() -> list[tuple[str, str]]:
    rows = [
        ("python", platform.python_version()),
        ("platform", f"{platform.system()} {platform.machine()}"),
        ("mlx", mx.__version__),
        ("backend", backend()),
        ("default device", str(mx.default_device())),
    ]
    info = mx.device_info() if hasattr(mx, "device_info") else {}
    for k in ("device_name", "architecture", "memory_size", "max_recommended_working_set_size"):
        if k in info:
            v = info[k]
            rows.append((k.replace("_", " "), f"{v / 2**30:.1f} GiB" if "size" in k else str(v)))
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        rows.append(("system memory", f"{mem:.1f} GiB"))
    except (ValueError, OSError, AttributeError):
        pass
    rows.append(("fp32 GEMM (1024^3)", f"{gemm_gflops(1024):.0f} GFLOP/s"))
    if sys.platform == "linux" and backend() == "cpu":
        blas = loaded_blas()
        rows.append(
            ("BLAS", f"SLOW reference BLAS of the mlx[cpu] wheel - fix: {BLAS_FIX}" if blas == "reference" else blas)
        )
    return rows
