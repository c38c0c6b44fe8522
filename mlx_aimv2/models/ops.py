"""The few numeric kernels whose speed differs by backend.

On Metal and CUDA these are MLX's own fused ops. On MLX's CPU backend exp / sigmoid / softmax
run a slow scalar path (../benchmarks and docs/performance.md), while plain arithmetic is
vectorised, so there we build exp from a polynomial and a power-of-two bit trick: the same
function to ~5e-7 relative error, 2-3x faster at the model's shapes.
"""
import mlx.core as mx

_ROUND = 12582912.0  # 1.5 * 2**23: adding it rounds a float32 in [-2**22, 2**22] to an integer


def on_cpu() -> bool:
    return mx.default_device() == mx.cpu


@mx.custom_function
def poly_exp(x: mx.array) -> mx.array:
    """exp(x) for float32 x, from arithmetic only (x below -87 flushes to ~0)."""
    x = mx.maximum(x, -87.0)
    t = x * 1.4426950408889634 + _ROUND          # k = round(x / ln 2), kept in the mantissa
    k = t - _ROUND
    r = x - k * 0.6931471805599453                # |r| <= ln2 / 2
    p = 1.0 + r * (1.0 + r * (0.5 + r * (0.16666667 + r * (0.041666668 + r * (0.008333334 + r * 0.0013888889)))))
    scale = ((t.view(mx.int32) - 0x4B400000 + 127) << 23).view(mx.float32)  # 2**k
    return p * scale


@poly_exp.vjp
def _poly_exp_vjp(primals, cotangent, output):
    return cotangent * output  # d/dx exp(x) = exp(x); the bit trick itself has no derivative


def _cpu_fast(x: mx.array) -> bool:
    return x.dtype == mx.float32 and on_cpu()


def silu_mul(gate: mx.array, up: mx.array) -> mx.array:
    """SwiGLU's silu(gate) * up."""
    if _cpu_fast(gate):
        return gate * up / (1.0 + poly_exp(-gate))
    return gate * mx.sigmoid(gate) * up


def softmax(x: mx.array) -> mx.array:
    """Softmax over the last axis."""
    if _cpu_fast(x):
        e = poly_exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    return mx.softmax(x, axis=-1, precise=True)


def attention(q, k, v, scale: float, mask=None):
    """Scaled dot-product attention on (B, H, L, hd). mask: None, "causal" or a boolean array."""
    if not _cpu_fast(q):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    s = (q * scale) @ k.swapaxes(-1, -2)
    if isinstance(mask, str):
        n = q.shape[-2]
        idx = mx.arange(n)
        mask = idx[:, None] >= idx[None, :]
    if mask is not None:
        s = mx.where(mask, s, -mx.inf) if mask.dtype == mx.bool_ else s + mask
    return softmax(s) @ v
