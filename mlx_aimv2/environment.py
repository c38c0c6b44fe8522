"""What MLX runs on here, and the one Linux pitfall worth a warning: the mlx[cpu] wheel links the
reference BLAS (~5 GFLOP/s); Debian's OpenBLAS preloaded gives ~40x more."""
from __future__ import annotations

import os
import platform
import sys
import time

import mlx.core as mx

OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"
BLAS_FIX = (f"sudo apt-get install libopenblas0-pthread && export LD_PRELOAD={OPENBLAS}")


def backend() -> str:
    if mx.metal.is_available():
        return "metal"
    if hasattr(mx, "cuda") and mx.cuda.is_available():
        return "cuda"
    return "cpu"


def gemm_gflops(n: int = 512, reps: int = 3) -> float:
    """fp32 GEMM rate on the default device, a quick probe (~10 ms with a good BLAS)."""
    a = mx.random.normal((n, n))
    b = mx.random.normal((n, n))
    mx.eval(a @ b)
    t0 = time.perf_counter()
    for _ in range(reps):
        mx.eval(a @ b)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def slow_blas() -> bool:
    """True on Linux CPU when matmuls run on the wheel's reference BLAS."""
    if sys.platform != "linux" or backend() != "cpu":
        return False
    return gemm_gflops(256, 2) < 20.0


def report() -> list[tuple[str, str]]:
    rows = [("python", platform.python_version()), ("platform", f"{platform.system()} {platform.machine()}"),
            ("mlx", mx.__version__), ("backend", backend()), ("default device", str(mx.default_device()))]
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
        preload = os.environ.get("LD_PRELOAD", "")
        ok = not slow_blas()
        rows.append(("BLAS", "OpenBLAS (preloaded)" if ok and "blas" in preload else
                     ("fast" if ok else f"SLOW reference BLAS - fix: {BLAS_FIX}")))
    return rows
