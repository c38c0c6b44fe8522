"""How MLX runs fast on a CPU: everything this package does differently there, in this module.

The models call MLX's own ops (`mx.fast.scaled_dot_product_attention`, `nn.silu`); that is what
every Mac (Metal) and CUDA user runs. On MLX's CPU backend three things are slow, and this module
fixes each at one place the models expose for it (docs/performance.md has the measurements):

1. exp / sigmoid / softmax run a scalar path (15-30 ns per element) while plain arithmetic is
   vectorised, so `exp` below rebuilds exp from arithmetic; `use_kernels(model)` swaps the models'
   attention and SwiGLU activation for versions built on it.
2. Elementwise kernels are single-threaded: `split_batch` (inference) and `per_stream` (the
   training step) spread a batch over one CPU stream per core, with the BLAS held to one thread
   meanwhile (`blas_threads`, `blas_for`).
3. The Linux `mlx[cpu]` wheel links the reference BLAS (~5 GFLOP/s): `loaded_blas` / `slow_blas`
   detect it, `warn_if_slow_blas` says so, `restart_with_openblas` (the CLI only) fixes it.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from .models.layers import causal_mask
from .quantize import dequantize

OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"
BLAS_FIX = f"sudo apt-get install libopenblas0-pthread && export LD_PRELOAD={OPENBLAS}"
BLAS_PRELOAD = f"OpenBLAS is installed but not loaded: export LD_PRELOAD={OPENBLAS} before starting Python"


class SlowBLASWarning(RuntimeWarning):
    """MLX's matmuls run on the mlx[cpu] wheel's reference BLAS. Filter it with
    `warnings.simplefilter("ignore", mlx_aimv2.SlowBLASWarning)`."""


def backend() -> str:
    if mx.metal.is_available():
        return "metal"
    if hasattr(mx, "cuda") and mx.cuda.is_available():
        return "cuda"
    return "cpu"


def active() -> bool:
    """True when MLX computes on the CPU (the default device), where this module's kernels apply."""
    return mx.default_device() == mx.cpu


# ------------------------------------------------------------------------------------ kernels

_ROUND = 12582912.0  # 1.5 * 2**23: adding it rounds a float32 of magnitude < 2**22 to an integer


@mx.custom_function
def exp(x: mx.array) -> mx.array:
    """exp(x) for float32 from arithmetic only: relative error < 1e-6 wherever the result is above
    2**-125; below that (x < -87) it is 0, inf where float32 overflows (x > 88.72), NaN stays NaN.

    exp(x) = 2**k * e**r with k = round(x / ln 2), |r| <= ln2 / 2: e**r from a degree-6 Taylor
    polynomial, 2**k written straight into the exponent bits. The polynomial is doubled and the
    power halved (2**(k-1)), so 2**k never needs the exponent 255 (inf) before the product is taken:
    float32 overflows exactly where it should."""
    x = mx.clip(x, -88.0, 89.0)  # keeps k in [-127, 128]; NaN passes through clip
    t = x * 1.4426950408889634 + _ROUND  # k = round(x / ln 2), held in t's mantissa
    k = t - _ROUND
    r = (x - k * 0.693359375) + k * 2.12194440e-4  # ln 2 in two parts (Cody-Waite): k * 0.693359375 is exact
    p2 = 2.0 + r * (2.0 + r * (1.0 + r * (0.33333334 + r * (0.083333336 + r * (0.016666668 + r * 0.0027777778)))))
    biased = mx.maximum(t.view(mx.int32) - (0x4B400000 - 126), 0)  # k - 1 + 127, floored at 0 (= +0.0)
    return p2 * (biased << 23).view(mx.float32)


@exp.vjp
def _exp_vjp(primals, cotangent, output):
    return cotangent * output  # d/dx exp(x) = exp(x); the bit trick itself has no derivative


def _fast(x: mx.array) -> bool:
    return x.dtype == mx.float32 and active()


def _custom(forward, backward):
    """mx.custom_function(forward) with backward(primals, cotangent, output) as its vjp, run on the
    stream the forward was built on. MLX runs a custom vjp on the default stream of the thread taking
    the gradient (mx.default_stream inside one says so), which would put the backward passes of
    per_stream's chunks on one stream, one after the other. Made per call, to know that stream."""
    stream = mx.default_stream(mx.default_device())
    fn = mx.custom_function(forward)

    @fn.vjp
    def _vjp(primals, cotangent, output):
        with mx.stream(stream):
            return backward(primals, cotangent, output)

    return fn


def _silu_forward(x: mx.array) -> mx.array:
    return x / (1.0 + exp(-x))


def _silu_backward(x, cotangent, output):  # a one-argument custom_function gets its primal bare
    # the derivative written out: autodiff of x / (1 + e^-x) gives inf / inf = NaN for x < -88
    s = 1.0 / (1.0 + exp(-x))
    return cotangent * s * (1.0 + x * (1.0 - s))


def silu(x: mx.array) -> mx.array:
    """x * sigmoid(x) = x / (1 + e^-x); nn.silu off the CPU or outside float32."""
    return _custom(_silu_forward, _silu_backward)(x) if _fast(x) else nn.silu(x)


def _rows(x: mx.array) -> mx.array:
    e = exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _rows_vjp(cotangent: mx.array, y: mx.array) -> mx.array:
    # the textbook form, y * (g - sum(g * y)): two passes over the scores, where autodiff through the
    # max, exp and division takes several (the max's share is zero in exact arithmetic anyway)
    return y * (cotangent - (cotangent * y).sum(axis=-1, keepdims=True))


def _masked_rows(x: mx.array, keep: mx.array) -> mx.array:
    return _rows(mx.where(keep, x, -mx.inf))


def _masked_rows_vjp(primals, cotangent, output):
    # masked scores have y = 0, so their gradient is 0 without a pass of `where` (the mask has none)
    return _rows_vjp(cotangent, output), mx.zeros_like(primals[1])


def softmax(x: mx.array, keep: mx.array | None = None) -> mx.array:
    """Softmax over the last axis, with positions where the boolean `keep` is False left out; rows
    that are all -inf (or all left out) give NaN, as mx.softmax does."""
    if not _fast(x):
        x = x if keep is None else mx.where(keep, x, -mx.inf)
        return mx.softmax(x, axis=-1, precise=True)
    if keep is None:
        return _custom(_rows, lambda x, cotangent, output: _rows_vjp(cotangent, output))(x)
    return _custom(_masked_rows, _masked_rows_vjp)(x, keep)


def attention(q, k, v, scale: float, mask=None):
    """mx.fast.scaled_dot_product_attention's contract on (B, H, L, hd): mask None, "causal" or an
    array (boolean: True attends; else additive). The CPU version is matmul + `softmax` above, every
    head at once: a few heads at a time (scores in cache) measured 1.55x slower in the training step
    and 1.9x in embedding at batch 8, as MLX's per-op cost on the CPU streams outweighs the cache
    (docs/performance.md)."""
    if not _fast(q):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    if q.shape[0] < streams() <= q.shape[1] and k.shape[1] == q.shape[1]:
        return _heads_on_streams(q, k, v, scale, mask)
    return _attention(q, k, v, scale, mask)


def _heads_on_streams(q, k, v, scale: float, mask=None):
    """A batch too small to spread (one long image, 1,024 tokens at 448 px) spreads its heads instead:
    each stream's softmax then runs on a core of its own (MLX's CPU elementwise ops use one thread)."""
    outs = []
    for stream, part in _chunks(q.shape[1]):
        with mx.stream(stream):
            m = mask[:, part] if isinstance(mask, mx.array) and mask.ndim == 4 and mask.shape[1] > 1 else mask
            outs.append(_attention(q[:, part], k[:, part], v[:, part], scale, m))
    return mx.concatenate(outs, axis=1)


def _attention(q, k, v, scale: float, mask=None):
    s = (q * scale) @ k.swapaxes(-1, -2)
    if isinstance(mask, str):
        mask = causal_mask(q.shape[-2])
    if mask is not None and mask.dtype != mx.bool_:
        s, mask = s + mask, None
    return softmax(s, mask) @ v


def float_layers(model: nn.Module, keep_quantized: bool | None = None) -> nn.Module:
    """On the CPU, run a quantized model with its layers dequantized to float: MLX's CPU quantized
    matmul measured ~60x slower than sgemm on AIMv2-L (docs/quantization.md), while the numbers are
    the same (the same dequantized weights). The file stays small; memory in use is float-sized.
    Metal and CUDA keep the quantized layers (fast kernels there). keep_quantized overrides."""
    keep = not active() if keep_quantized is None else keep_quantized
    if not keep:
        dequantize(model)
    return model


# ------------------------------------------------------------------------------------ streams

_THREAD = threading.local()  # MLX streams belong to the thread that made them: one set per thread


def _streams() -> list:
    if not hasattr(_THREAD, "streams"):
        _THREAD.streams = [mx.new_stream(mx.cpu) for _ in range(max(1, min(os.cpu_count() or 1, 8)))]
    return _THREAD.streams


def streams() -> int:
    """How many CPU streams a batch is spread over: one per core (at most 8) on the CPU, else 1."""
    return len(_streams()) if active() else 1


def _chunks(n: int) -> list[tuple[object, slice]]:
    """(stream, contiguous slice of a batch of n) pairs: one per core, never more than n."""
    k = min(streams(), n)
    return [(s, slice(i * n // k, (i + 1) * n // k)) for i, s in enumerate(_streams()[:k])]


def split_batch(fn, x: mx.array, *args) -> dict:
    """fn(x, *args) -> {name: array with the batch first}, computed in contiguous chunks of x on
    one CPU stream each, so every core runs elementwise work, and evaluated; in one piece elsewhere."""
    if min(streams(), x.shape[0]) <= 1:
        return fn(x, *args)
    with blas_threads(1):  # the streams are the parallelism now; threaded matmuls would oversubscribe
        outs = []
        for stream, part in _chunks(x.shape[0]):
            with mx.stream(stream):
                outs.append(fn(x[part], *args))
        mx.eval(outs)
    return {key: mx.concatenate([o[key] for o in outs]) for key in outs[0]}


def per_stream(fn, *args) -> tuple:
    """fn(*args) -> a tuple of batch-first arrays (or None), computed in contiguous chunks of the batch
    (every array argument's first axis; None passes through) on one CPU stream each, outputs
    concatenated. Lazy, unlike split_batch: it sits inside a differentiated, compiled training step,
    whose backward ops run on the stream of their forward op, so the backward is spread too. Whoever
    evaluates it holds the BLAS at one thread meanwhile (`blas_for`)."""
    n = next(a.shape[0] for a in args if a is not None)
    if min(streams(), n) <= 1:
        return fn(*args)
    outs = []
    for stream, part in _chunks(n):
        with mx.stream(stream):
            outs.append(fn(*(None if a is None else a[part] for a in args)))
    return tuple(None if o[0] is None else mx.concatenate(list(o)) for o in zip(*outs))


def spreads(model: nn.Module) -> bool:
    """True when evaluating `model` runs work on several CPU streams (per_stream is in use)."""
    return streams() > 1 and any(m.__dict__.get("per_stream") is per_stream for _, m in model.named_modules())


def blas_for(model: nn.Module):
    """The BLAS setting to hold while `model`'s training steps run: one thread where the step spreads
    over the CPU streams (two threaded matmuls at once would oversubscribe the cores), else the
    default. mlx-data's loader threads set OpenBLAS's process-wide count to 1 as they start (its
    ThreadController::limit, seen in gdb), which is why the spread steps use exactly that count: the
    trainer holds it for the whole run, so every step computes at one count (sgemm's last bits depend
    on it), then `reset_blas_threads` gives the process its default back."""
    return blas_threads(1 if spreads(model) else default_blas_threads())


def default_blas_threads() -> int:
    """OpenBLAS's own count for this process: OPENBLAS_NUM_THREADS / OMP_NUM_THREADS, else one per
    core this process may use."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def reset_blas_threads() -> None:
    """Put OpenBLAS back to its default count (after mlx-data's loader has set it to 1), so that what
    the process computes next - an app's embedding after a training run - has every core."""
    blas = blas_threads(default_blas_threads())
    if blas.lib is not None:
        blas.lib.openblas_set_num_threads(blas.n)


# The models name their kernels as class attributes (MLX's ops); use_kernels replaces them with these.
KERNELS = {"sdpa": attention, "act": silu, "per_stream": per_stream}


def use_kernels(model: nn.Module, enabled: bool | None = None) -> nn.Module:
    """Give every layer of `model` this module's kernels (enabled, the default on the CPU) or MLX's
    own (disabled). The kernels fall back to MLX's ops per call off the CPU or outside float32."""
    enabled = active() if enabled is None else enabled
    for _, m in model.named_modules():
        for name, kernel in KERNELS.items():
            if hasattr(type(m), name):
                if enabled:
                    setattr(m, name, kernel)
                elif name in m.__dict__:
                    delattr(m, name)
    return model


# ------------------------------------------------------------------------------------ BLAS


def loaded_blas() -> str:
    """The BLAS MLX's matmuls use on Linux: a preloaded library (it interposes cblas_sgemm), else
    'reference' when the mlx[cpu] wheel's own libblas is mapped, else 'unknown'. (numpy's bundled
    scipy-openblas does not count: its symbols are renamed.)"""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return "unknown"
    for lib in os.environ.get("LD_PRELOAD", "").replace(" ", ":").split(":"):
        if "blas" in lib and lib in maps:
            return f"{lib} (preloaded)"
    return "reference" if "mlx_cpu.libs/libblas" in maps else "unknown"


def slow_blas() -> bool:
    """True on Linux when MLX computes on the CPU with the mlx[cpu] wheel's reference BLAS."""
    return sys.platform == "linux" and backend() == "cpu" and loaded_blas() == "reference"


_warned = []


def warn_if_slow_blas() -> None:
    """A SlowBLASWarning (once per process) when matmuls run on the reference BLAS."""
    if not _warned and slow_blas():
        _warned.append(True)
        warnings.warn(
            f"MLX is using the mlx[cpu] wheel's reference BLAS (~40x slower matmuls); "
            f"{BLAS_PRELOAD if os.path.exists(OPENBLAS) else BLAS_FIX}",
            SlowBLASWarning,
            stacklevel=3,
        )


class blas_threads:
    """Temporarily set the preloaded OpenBLAS's thread count (a no-op without one)."""

    def __init__(self, n: int):
        self.n, self.lib, self.old = n, None, None
        blas = loaded_blas()
        if sys.platform == "linux" and "(preloaded)" in blas:
            try:
                lib = ctypes.CDLL(blas.split()[0])
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


def interpreter_flags() -> list[str]:
    """This interpreter's command-line flags (-X, -W, -O, -I, ...), for a restart that behaves as this
    process does. The standard library has no public API for it; CPython's subprocess and
    multiprocessing use the private `subprocess._args_from_interpreter_flags`. This is the one place
    the package touches another library's private name; tests/test_architecture.py fails if it changes."""
    return list(subprocess._args_from_interpreter_flags())


def openblas_env() -> dict | None:
    """The environment for a restart with Debian's OpenBLAS preloaded, or None where none is wanted:
    not Linux, not MLX's CPU backend, OpenBLAS absent or already preloaded, MLX_AIMV2_NO_RESTART set."""
    if (
        sys.platform != "linux"
        or os.environ.get("MLX_AIMV2_NO_RESTART")
        or not os.path.exists(OPENBLAS)
        or "openblas" in os.environ.get("LD_PRELOAD", "")
        or backend() != "cpu"
    ):
        return None
    env = dict(os.environ, MLX_AIMV2_NO_RESTART="1")
    env["LD_PRELOAD"] = ":".join(p for p in (OPENBLAS, os.environ.get("LD_PRELOAD", "")) if p)
    return env


def restart_with_openblas() -> None:
    """For the `mlx-aimv2` command only: on Linux's CPU backend, when Debian's OpenBLAS is installed
    but not loaded, replace this process with the same command, the same interpreter flags and the
    same mlx_aimv2 package, with OpenBLAS preloaded (LD_PRELOAD only acts at process start). At most
    once; never on Metal or CUDA; MLX_AIMV2_NO_RESTART=1 turns it off. (tests/conftest.py does the
    same for the test suite.)"""
    env = openblas_env()
    if env is None:
        return
    # `-c` with sys.path[0] set to where *this* package was imported from: neither the working
    # directory nor a script's folder decides which mlx_aimv2 runs in the new process.
    home = str(Path(__file__).resolve().parent.parent)
    boot = f"import sys; sys.path[0] = {home!r}; from mlx_aimv2.cli import main; main()"
    flags = interpreter_flags()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *flags, "-c", boot, *sys.argv[1:]], env)
