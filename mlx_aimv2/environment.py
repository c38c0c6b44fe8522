"""What MLX runs on here: the backend, its memory, its GEMM rate; `mlx-aimv2 doctor` prints it.
Everything about running fast on a CPU (the BLAS included) lives in cpu.py."""

from __future__ import annotations

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


def wire_memory_for(nbytes: int) -> bool:
    """On Metal, raise the wired-memory limit to the recommended working set for a large model.
    Returns whether it did (never on the CPU or CUDA)."""
    if nbytes < WIRED_THRESHOLD or not mx.metal.is_available():
        return False
    limit = mx.device_info().get("max_recommended_working_set_size")
    if not limit:
        return False
    mx.set_wired_limit(limit)
    return True


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
