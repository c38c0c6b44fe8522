"""The prefix mask against a brute-force construction; both losses against plain numpy."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_aimv2.config import VisionConfig
from mlx_aimv2.models.decoder import AIMv2PreTrainer, DecoderConfig
from mlx_aimv2.models.encoder import prefix_mask
from mlx_aimv2.models.losses import image_loss, patchify, text_loss


def test_prefix_mask_brute_force():
    n = 9
    m = np.array([1, 4, 8])
    ours = np.array(prefix_mask(mx.array(m), n))
    for b, M in enumerate(m):
        for i in range(n):
            for j in range(n):
                assert ours[b, 0, i, j] == (j <= i or j < M)


def _np_patchify(img, p):  # NCHW einsum nchpwq->nhwpqc, as l3m does it
    x = img.transpose(0, 3, 1, 2)
    b, c, H, W = x.shape
    x = x.reshape(b, c, H // p, p, W // p, p)
    return np.einsum("nchpwq->nhwpqc", x).reshape(b, (H // p) * (W // p), p * p * c)


def test_image_loss_matches_numpy():
    rng = np.random.default_rng(0)
    p, b = 4, 3
    img = rng.standard_normal((b, 12, 16, 3)).astype(np.float32)
    n = 12
    pred = rng.standard_normal((b, n, p * p * 3)).astype(np.float32)
    prefix = np.array([1, 5, 11])
    t = _np_patchify(img, p).astype(np.float64)
    assert np.allclose(np.array(patchify(mx.array(img), p)), t)
    t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, ddof=1, keepdims=True) + 1e-6)
    num = den = 0.0
    for i in range(b):
        for j in range(n - 1):  # output j predicts patch j+1
            if j + 1 >= prefix[i]:  # only targets past the prefix count
                num += ((pred[i, j] - t[i, j + 1]) ** 2).mean()
                den += 1
    ours = image_loss(mx.array(pred), mx.array(img), mx.array(prefix), p).item()
    assert abs(ours - num / den) < 1e-5


def test_text_loss_matches_numpy_and_ignores_pads():
    rng = np.random.default_rng(1)
    b, L, V, pad = 2, 6, 11, 0
    logits = rng.standard_normal((b, L + 1, V)).astype(np.float32)
    ids = rng.integers(1, V, (b, L))
    ids[0, 4:] = pad
    ids[1, 2:] = pad
    num = den = 0.0
    for i in range(b):
        for t in range(L):  # logits[t] (BOS at 0) predicts ids[t]
            if ids[i, t] != pad:
                z = logits[i, t] - logits[i, t].max()
                num += -(z[ids[i, t]] - np.log(np.exp(z).sum()))
                den += 1
    ours = text_loss(mx.array(logits), mx.array(ids), pad).item()
    assert abs(ours - num / den) < 1e-5


def test_decoder_is_causal_and_objectives():
    enc = VisionConfig(hidden_size=32, depth=1, num_heads=2, mlp_hidden=64, image_size=28)
    dec = DecoderConfig(width=32, depth=1, num_heads=2, vocab_size=20, context_length=5)
    model = AIMv2PreTrainer(enc, dec, objective="aimv2")
    x = mx.random.normal((1, 28, 28, 3))
    ids = mx.array([[3, 4, 5, 6, 7]])
    tok = model.encoder(x)
    _, a = model.decoder(tok, ids)
    _, b = model.decoder(tok, mx.array([[3, 4, 9, 9, 9]]))
    # positions up to the change see the same prefix: logits at BOS, 3, 4 equal
    assert np.allclose(np.array(a[:, :3]), np.array(b[:, :3]), atol=1e-6)
    assert not np.allclose(np.array(a[:, 3:]), np.array(b[:, 3:]))
    pm = mx.array([2])
    assert set(model.losses(x, ids, pm)) == {"loss", "loss_image", "loss_text"}
    model.objective = "image"
    assert set(model.losses(x, ids, pm)) == {"loss", "loss_image"}
    model.objective = "text"
    assert set(model.losses(x, ids, pm)) == {"loss", "loss_text"}


@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.125])
def test_decoder_sized_as_a_fraction_of_the_encoder(ratio):
    from mlx.utils import tree_flatten

    enc = VisionConfig(hidden_size=384, depth=12, num_heads=6, mlp_hidden=1024, image_size=224)
    model = AIMv2PreTrainer(enc, DecoderConfig(width=384, depth=6, num_heads=6, vocab_size=100, ratio=ratio))

    def count(m):
        return sum(v.size for k, v in tree_flatten(m.trunk.parameters()))

    got = count(model.decoder) / count(model.encoder)
    assert abs(np.log(got / ratio)) < np.log(1.5)
