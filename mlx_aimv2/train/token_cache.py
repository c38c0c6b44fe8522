"""LiT tuning's token cache: the frozen image encoder's output tokens (after the final norm, before
the attention-pool head) of every training image, computed once and stored as float16, so that each
epoch reads them back and a step costs the head, the projections and the text tower only.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from ..atomic import remove_orphans, write_file
from ..data.stream import sample_image


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


def files_fingerprint(samples: list) -> str:
    """A digest of where each sample's image bytes are and their files' size and mtime: images replaced
    in place (same names) change it, so a cache never serves tokens of images that are gone."""
    h = hashlib.sha1()
    stats: dict = {}
    for s in samples:
        f = s.path if s.path is not None else s.tar
        if f not in stats:
            try:
                st = os.stat(f)
                stats[f] = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stats[f] = "missing"
        h.update(f"{os.fsencode(f)!r}\t{s.offset}\t{s.size}\t{stats[f]}\n".encode())
    return h.hexdigest()


def _read_json(f: Path):
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _build_part(
    folder: Path, rank: int, ranks: int, model, samples: list, shape, log, batch_size: int, progress: bool
) -> None:
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
