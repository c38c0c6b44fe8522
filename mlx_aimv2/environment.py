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


def loaded_blas() -> str:
    """The BLAS MLX's matmuls use on Linux: a preloaded library (it interposes cblas_sgemm), else
    'reference' when the mlx[cpu] wheel's own libblas is mapped, else 'unknown'. (numpy's bundled
    scipy-openblas does not count: its symbols are renamed.)"""
    try:
        maps = open("/proc/self/maps").read()
    except OSError:
        return "unknown"
    for lib in os.environ.get("LD_PRELOAD", "").replace(" ", ":").split(":"):
        if "blas" in lib and lib in maps:
            return f"{lib} (preloaded)"
    return "reference" if "mlx_cpu.libs/libblas" in maps else "unknown"


def slow_blas() -> bool:
    """True on Linux CPU when matmuls run on the mlx[cpu] wheel's reference BLAS."""
    return sys.platform == "linux" and backend() == "cpu" and loaded_blas() == "reference"


def warn_if_slow_blas() -> None:
    """One line on stderr when MLX's matmuls run on the reference BLAS."""
    if slow_blas():
        print(f"warning: MLX is using the mlx[cpu] wheel's reference BLAS (~40x slower matmuls); {BLAS_FIX}",
              file=sys.stderr)


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
        blas = loaded_blas()
        rows.append(("BLAS", f"SLOW reference BLAS of the mlx[cpu] wheel - fix: {BLAS_FIX}" if blas == "reference"
                     else blas))
    return rows


def reexec_with_openblas(argv: list[str]) -> None:
    """On Linux, when Debian's OpenBLAS is installed but not preloaded, restart this process with it
    preloaded (the mlx[cpu] wheel's own BLAS is ~40x slower). A no-op elsewhere, and at most once."""
    if sys.platform != "linux" or os.environ.get("MLX_AIMV2_NO_REEXEC") or not os.path.exists(OPENBLAS):
        return
    if "openblas" in os.environ.get("LD_PRELOAD", ""):
        return
    env = dict(os.environ, MLX_AIMV2_NO_REEXEC="1")
    env["LD_PRELOAD"] = ":".join(p for p in (OPENBLAS, os.environ.get("LD_PRELOAD", "")) if p)
    os.execve(sys.executable, [sys.executable, *argv], env)


class blas_threads:
    """Temporarily set the preloaded OpenBLAS's thread count (a no-op without one). Used while several
    MLX CPU streams each run their own matmuls, so the streams do not oversubscribe the cores."""

    def __init__(self, n: int):
        self.n, self.lib, self.old = n, None, None
        if sys.platform == "linux" and "blas" in loaded_blas():
            import ctypes
            try:
                lib = ctypes.CDLL(loaded_blas().split()[0])
                self.lib = lib if hasattr(lib, "openblas_set_num_threads") else None
            except OSError:
                self.lib = None

    def __enter__(self):
        if self.lib is not None:
            self.old = self.lib.openblas_get_num_threads()
            self.lib.openblas_set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self.lib is not None:
            self.lib.openblas_set_num_threads(self.old)
