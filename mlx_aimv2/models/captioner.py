"""Captions from the decoder that pre-training trains and the paper throws away.

The decoder reads [image tokens; BOS; caption] causally, so after the image and BOS its text head
predicts the caption's first token, and so on. `generate` decodes greedily or by beam search, with
a KV cache (each new token runs one position through the decoder, attending to the cached keys
and values of everything before it) or without (the whole sequence again at every step, the
reference the cache must equal: tests/test_caption.py).
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx
import numpy as np

from .decoder import AIMv2PreTrainer


class Captioner:
    def __init__(self, model: AIMv2PreTrainer, eos_id: Optional[int], pad_id: int = 0, max_tokens: int = 32):
        self.model, self.eos_id, self.pad_id, self.max_tokens = model, eos_id, pad_id, max_tokens
        self.dec = model.decoder

    # -- the decoder, one position at a time ------------------------------------------------------
    def _prefix(self, pixels: mx.array) -> tuple[mx.array, list]:
        """Run [image tokens; BOS] through the decoder: logits at BOS (B, V) and each block's (k, v)."""
        tokens = self.model.encoder(pixels)  # the whole image in view (no prefix mask at inference)
        img = self.dec.vision_proj(tokens)
        b = img.shape[0]
        bos = mx.broadcast_to(self.dec.cls_token, (b, 1, img.shape[-1])) + self.dec.pos_embed[:, :1]
        return self._blocks(mx.concatenate([img, bos], axis=1), [None] * len(self.dec.trunk.blocks), "causal")

    def _next(self, token: mx.array, position: int, cache: list) -> tuple[mx.array, list]:
        """One caption token (B,) at text position `position` (BOS is 0) -> its logits and the new cache."""
        x = self.dec.text_embedding(token)[:, None] + self.dec.pos_embed[:, position : position + 1]
        return self._blocks(x, cache, None)

    def _blocks(self, x: mx.array, cache: list, mask) -> tuple[mx.array, list]:
        new = []
        for block, kv in zip(self.dec.trunk.blocks, cache):
            attn = block.attn
            h = block.norm_1(x)
            b, n, d = h.shape
            q, k, v = attn.qkv(h).reshape(b, n, 3, attn.num_heads, d // attn.num_heads).transpose(2, 0, 3, 1, 4)
            if kv is not None:
                k, v = mx.concatenate([kv[0], k], axis=2), mx.concatenate([kv[1], v], axis=2)
            new.append((k, v))
            o = attn.sdpa(q, k, v, scale=attn.scale, mask=mask)
            x = x + attn.proj(o.transpose(0, 2, 1, 3).reshape(b, n, d))
            x = x + block.mlp(block.norm_2(x))
        x = self.dec.trunk.post_trunk_norm(x[:, -1:])
        return self.dec.text_head(x)[:, 0].astype(mx.float32), new

    def _full(self, pixels: mx.array, ids: list[list[int]]) -> mx.array:
        """Without a cache: the whole sequence again; logits after the last token of each row."""
        tokens = self.model.encoder(pixels)
        seq = mx.array(ids, dtype=mx.int32) if ids and ids[0] else None
        if seq is None:  # nothing generated yet: logits at BOS
            seq = mx.zeros((pixels.shape[0], 0), dtype=mx.int32)
        _, logits = self.dec(tokens, seq)
        return logits[:, -1].astype(mx.float32)

    # -- decoding ----------------------------------------------------------------------------------
    def generate(self, pixels: mx.array, beam: int = 1, cache: bool = True) -> list[list[int]]:
        """Token ids of each image's caption (up to the end token, which is not included)."""
        if beam > 1:
            return [self._beam(pixels[i : i + 1], beam, cache) for i in range(pixels.shape[0])]
        b = pixels.shape[0]
        out: list[list[int]] = [[] for _ in range(b)]
        done = np.zeros(b, bool)
        logits, kv = self._prefix(pixels) if cache else (self._full(pixels, out), None)
        for t in range(self.max_tokens):
            token = mx.argmax(logits, axis=-1)
            for i, tok in enumerate(np.array(token).tolist()):
                if not done[i]:
                    if tok == self.eos_id:
                        done[i] = True
                    else:
                        out[i].append(tok)
            if done.all() or t == self.max_tokens - 1:
                break
            if cache:
                logits, kv = self._next(token, t + 1, kv)
            else:  # finished rows keep growing with their end token; only the unfinished ones are read
                ids = [o + [self.eos_id or self.pad_id] * (t + 1 - len(o)) for o in out]
                logits = self._full(pixels, ids)
        return out

    def _beam(self, pixels: mx.array, width: int, cache: bool) -> list[int]:
        """Beam search over one image: the `width` best partial captions by summed log-probability;
        a caption ends at the end token; the best finished one wins (length-normalised)."""
        logits, kv = self._prefix(pixels) if cache else (self._full(pixels, [[]]), None)
        beams = [([], 0.0, kv)]
        finished = []
        for t in range(self.max_tokens):
            logp = np.array(mx.log(mx.softmax(logits, axis=-1)))
            candidates = []
            for (seq, score, state), row in zip(beams, logp):
                for tok in np.argsort(-row)[:width]:
                    candidates.append((seq, score + float(row[tok]), int(tok), state))
            candidates.sort(key=lambda c: -c[1])
            beams = []
            for seq, score, tok, state in candidates:
                if tok == self.eos_id:
                    finished.append((seq, score / (len(seq) + 1)))
                elif len(beams) < width:
                    beams.append((seq + [tok], score, state))
                if len(beams) == width:
                    break
            if not beams or len(finished) >= width:
                break
            if cache:
                rows = [b[2] for b in beams]
                kv = [
                    (mx.concatenate([r[j][0] for r in rows]), mx.concatenate([r[j][1] for r in rows]))
                    for j in range(len(rows[0]))
                ]
                token = mx.array([b[0][-1] for b in beams])
                logits, kv = self._next(token, t + 1, kv)
                beams = [(s, sc, [(k[i : i + 1], v[i : i + 1]) for k, v in kv]) for i, (s, sc, _) in enumerate(beams)]
            else:
                logits = self._full(mx.broadcast_to(pixels, (len(beams), *pixels.shape[1:])), [b[0] for b in beams])
        finished += [(seq, score / max(len(seq), 1)) for seq, score, _ in beams]
        return max(finished, key=lambda f: f[1])[0]
