"""Training checkpoints: model, optimizer, step, data positions and config, written atomically
(a temp folder renamed into place), with a `latest` pointer and the last K kept."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from ..errors import UserError


def save(run: Path, step: int, model, optimizer, state: dict, keep: int = 2) -> Path:
    ckpts = Path(run) / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=ckpts))
    try:
        mx.save_safetensors(str(tmp / "model.safetensors"), dict(tree_flatten(model.parameters())))
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
        final = ckpts / f"step_{step:08d}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    pointer = ckpts / ".latest.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, ckpts / "latest")
    for old in sorted(p for p in ckpts.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run: Path) -> Optional[Path]:
    """The newest complete checkpoint of a run folder (or the checkpoint folder itself)."""
    run = Path(run)
    if (run / "state.json").is_file():
        return run
    pointer = run / "checkpoints" / "latest"
    if pointer.is_file() and (run / "checkpoints" / pointer.read_text().strip() / "state.json").is_file():
        return run / "checkpoints" / pointer.read_text().strip()
    done = sorted(p for p in (run / "checkpoints").glob("step_*") if (p / "state.json").is_file())
    return done[-1] if done else None


def read_state(ckpt: Path) -> dict:
    try:
        return json.loads((Path(ckpt) / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{ckpt}/state.json: unreadable checkpoint state ({e})") from None


def restore(ckpt: Path, model, optimizer) -> None:
    """Load weights strictly and the optimizer state in place (a compiled step keeps its dict)."""
    ckpt = Path(ckpt)
    try:
        model.load_weights(str(ckpt / "model.safetensors"), strict=True)
    except ValueError as e:
        raise UserError(f"{ckpt}: this checkpoint is of another architecture ({' '.join(str(e).split())[:200]}); "
                        f"resume with the config it was trained with") from None
    saved = tree_unflatten(list(mx.load(str(ckpt / "optimizer.safetensors")).items()))
    optimizer.state.update(saved)
