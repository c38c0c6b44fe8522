"""LiT tuning's pieces around the one trainer: the frozen encoder, its tokens cached on disk, the
tuner's configuration, and the LiT folder a tuned run becomes.

The image encoder never changes in LiT tuning, so each training image goes through it once: its
output tokens (after the final norm, before the attention-pool head) are stored as float16 and
every epoch reads them back. A step then costs the head, the projections and the text tower only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from ..atomic import remove_orphans, write_file
from ..config import ModelConfig, TextConfig
from ..errors import UserError

# ------------------------------------------------------------------------------ the encoder


def frozen_encoder(init: str):
    """An api.AIMv2 for `init`: any checkpoint `load` reads (hub id, folder, file, demo, a quantized
    folder: dequantized, since tokens are computed once) or a training run's latest checkpoint."""
    from ..api import AIMv2, load
    from ..preprocess import Preprocessor

    run = Path(init)
    if (run / "checkpoints").is_dir() and not any((run / f).is_file() for f in ("model.safetensors", "config.json")):
        from .. import cpu
        from .trainer import load_run_encoder

        enc, vision, pp, name = load_run_encoder(run)
        cpu.use_kernels(enc)
        model = AIMv2(
            enc,
            ModelConfig(vision=vision, name=name),
            Preprocessor.from_config(pp, None, f"{run} (its training config)", vision.image_size),
            run,
        )
    else:
        model = load(init, dtype=mx.float32, keep_quantized=False)
    if model.config.vision.native:
        raise UserError(
            f"{init}: a native-resolution encoder gives each image its own token count; LiT tuning "
            f"caches fixed-size tokens, so start from a fixed-resolution encoder"
        )
    return model


def text_config(cfg, tokenizer) -> TextConfig:
    """A text tower from scratch: cfg.text's sizes over the run's tokenizer."""
    t = {"hidden_size": 256, "depth": 4, "num_heads": 4, **cfg.text}
    from ..config import swiglu_hidden

    if t["hidden_size"] % t["num_heads"]:
        raise UserError(f"text.hidden_size {t['hidden_size']} is not divisible by text.num_heads {t['num_heads']}")
    if tokenizer.eos_id is None:
        raise UserError(
            "the tokenizer has no end-of-text token, which the text tower reads its embedding from; "
            "use a tokenizer with one (the BPE trained on the captions has </s>)"
        )
    return TextConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=t["hidden_size"],
        depth=t["depth"],
        num_heads=t["num_heads"],
        mlp_hidden=t.get("mlp_hidden") or swiglu_hidden(t["hidden_size"]),
        context_length=cfg.context_length,
        eos_token_id=tokenizer.eos_id,
    )


# ------------------------------------------------------------------------------ the cache


class TokenCache:
    """Frozen-encoder tokens of every sample, float16, memory-mapped from `folder`: part r holds the
    samples r, r + W, r + 2W, ... of a W-rank run (rank r computes it), with a mask of those that
    decoded and the reason for those that did not."""

    def __init__(self, folder: Path, ranks: int):
        self.folder, self.ranks = Path(folder), ranks
        self.parts = [np.load(self.folder / f"part{r}.npy", mmap_mode="r") for r in range(ranks)]
        info = [json.loads((self.folder / f"part{r}.json").read_text()) for r in range(ranks)]
        self.ok = [np.array(i["ok"], dtype=bool) for i in info]
        self.errors = [{int(k): v for k, v in i["errors"].items()} for i in info]

    def get(self, i: int) -> Optional[np.ndarray]:
        r, row = i % self.ranks, i // self.ranks
        return np.asarray(self.parts[r][row]) if self.ok[r][row] else None

    def why(self, i: int) -> str:
        return self.errors[i % self.ranks].get(i // self.ranks, "not cached")

    @classmethod
    def open_or_build(
        cls,
        folder: Path,
        key: dict,
        model,
        samples: list,
        rank: int,
        ranks: int,
        barrier=lambda: None,
        log=print,
        batch_size: int = 16,
        progress: bool = True,
    ) -> "TokenCache":
        """The cache for `key` (what made it: encoder, data, ranks); rebuilt when any of that differs.
        Each rank computes its own part; `barrier` waits for all of them."""
        folder = Path(folder)
        meta = folder / "meta.json"
        if (
            meta.is_file()
            and _read_json(meta) == key
            and all((folder / f"part{r}.npy").is_file() for r in range(ranks))
        ):
            if rank == 0:
                log(f"using the encoder tokens cached in {folder}")
            return cls(folder, ranks)
        folder.mkdir(parents=True, exist_ok=True)
        barrier()  # every rank has read the old meta before rank 0 removes it
        if rank == 0:
            meta.unlink(missing_ok=True)
            for p in remove_orphans(folder):
                log(f"removed {p.name}, left by a cache build that was killed")
        barrier()  # and no rank starts its part before the orphans are gone (its own temporary is one)
        _build_part(folder, rank, ranks, model, samples, key["tokens"], log, batch_size, progress and rank == 0)
        barrier()
        if rank == 0:
            write_file(meta, lambda tmp: tmp.write_text(json.dumps(key, indent=1)))
        barrier()
        return cls(folder, ranks)


def _read_json(f: Path):
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _build_part(
    folder: Path, rank: int, ranks: int, model, samples: list, shape, log, batch_size: int, progress: bool
) -> None:
    from ..data.stream import sample_image

    mine = samples[rank::ranks]
    n, d = shape
    if rank == 0:
        gib = len(samples) * n * d * 2 / 2**30
        log(
            f"caching the frozen encoder's tokens of {len(samples)} images ({n} x {d} each, {gib:.2f} GiB) "
            f"in {folder}; later epochs and resumed runs read them back"
        )
    ok = np.zeros(len(mine), dtype=bool)
    errors: list = []

    def fill(tmp: Path):
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(mine), n, d))
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(mine), unit="img", desc="encode", dynamic_ncols=True)
        for j, row in model.iter_embed(
            range(len(mine)), pool="none", errors=errors, batch_size=batch_size, read=lambda j: sample_image(mine[j])
        ):
            out[j] = row["tokens"].astype(np.float16)
            ok[j] = True
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        out.flush()

    write_file(folder / f"part{rank}.npy", fill)
    info = {"ok": ok.tolist(), "errors": {str(j): why for j, why in errors}}
    write_file(folder / f"part{rank}.json", lambda tmp: tmp.write_text(json.dumps(info)))
    if errors and rank == 0:
        log(f"{len(errors)} image(s) could not be encoded and are skipped (first: {errors[0][1]})")


# ------------------------------------------------------------------------------ the result


def lit_module(frozen, tuner, name: str):
    """The published LiT layout (AIMv2LiT) from the frozen encoder and a tuner's weights."""
    import dataclasses

    from ..models import AIMv2LiT

    vision = dataclasses.replace(frozen.config.vision, use_head=True, head_bias=True)
    c = tuner.config
    config = ModelConfig(
        kind="lit",
        vision=vision,
        text=c.text,
        projection_dim=c.projection_dim,
        init_temperature=c.init_temperature,
        max_logit_scale=c.max_logit_scale,
        name=name,
    )
    lit = AIMv2LiT(config)
    weights = {
        f"image_encoder.{k}": v for k, v in tree_flatten(frozen.vision.parameters()) if not k.startswith("head.")
    }
    weights.update(tuner.lit_weights())
    lit.load_weights(list(weights.items()), strict=True)
    return lit, config


def save_lit(frozen, tuner, name: str, tokenizer_files: tuple, dst: Path, overwrite: bool = False) -> Path:
    """A LiT folder that load / encode_text / classify / export read like the published one."""
    from ..checkpoints import save

    lit, config = lit_module(frozen, tuner, name)
    return save(lit, config, Path(dst), preprocessor_config(frozen), tokenizer_files, overwrite=overwrite)


def preprocessor_config(frozen) -> dict:
    """The frozen encoder's preprocessor_config.json, or for a training run its transforms as one."""
    pp = frozen.folder / "preprocessor_config.json" if frozen.folder else None
    return json.loads(pp.read_text()) if pp is not None and pp.is_file() else _preprocessor_dict(frozen)


def _preprocessor_dict(frozen) -> dict:
    from ..checkpoints import default_preprocessor

    p = frozen.preprocessor
    d = default_preprocessor(frozen.config)
    d.update(
        size={"shortest_edge": p.size},
        crop_size={"height": p.crop[0], "width": p.crop[1]},
        image_mean=list(p.mean),
        image_std=list(p.std),
    )
    return d
