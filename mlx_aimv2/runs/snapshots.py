"""A training run's snapshots (its checkpoints): model, optimizer, step, data positions and config,
written atomically (a temp folder renamed into place), with a `latest` pointer and the last K kept;
the run folder's lock. kinds.py tells a run folder by this layout (newest_checkpoint, read_run_state)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from .. import kinds
from ..atomic import write_file, write_folder
from ..errors import UserError, is_file_fault
from ..paths import children

try:
    import fcntl
except ImportError:  # Windows has no fcntl: runs are not locked there
    fcntl = None


def save(run: Path, step: int, model, optimizer, state: dict, keep: int = 2) -> Path:
    ckpts = Path(run) / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    final = ckpts / f"step_{step:08d}"
    if final.exists():  # a step saved again (a resumed run): ours, replaced whole
        shutil.rmtree(final)

    def write(tmp: Path):
        mx.save_safetensors(str(tmp / "model.safetensors"), dict(tree_flatten(model.parameters())))
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))

    write_folder(final, write)
    write_file(ckpts / "latest", lambda tmp: tmp.write_text(final.name))
    for old in children(ckpts, "step_*", kind="dir")[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def lock_run(run: Path, warn=None):
    """Hold an OS lock on the run folder for this process's life: a second `train` on the same
    --out is refused. The OS drops it when the process dies, so a killed run never blocks a resume.
    Only EWOULDBLOCK / EAGAIN mean "held": a volume that cannot lock (SMB and some NAS shares answer
    ENOTSUP, NFS without lockd ENOLCK) gets a warning (`warn`) and the run goes on unlocked."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    f = open(run / ".lock", "a+")
    if fcntl is None:  # not a POSIX system: no lock
        return f
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            if warn is not None:
                warn(
                    f"note: {run}: this volume cannot lock files ({os.strerror(e.errno or 0)}); "
                    f"the run goes on unlocked, so start no second `train` on this folder"
                )
            return f
        f.close()
        raise UserError(
            f"{run}: another training process is using this run folder; wait for it to end or choose another --out"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def saved_config(run: Path) -> dict:
    """The training config stored in a run's newest readable checkpoint."""
    found = kinds.run_checkpoints(run)
    if not found:
        raise UserError(f"{run}: no checkpoint to resume from; start without --resume (or give the run's --out)")
    for ckpt in found:
        try:
            return kinds.read_run_state(ckpt)["config"]
        except UserError:
            continue
    raise UserError(f"{run}: no checkpoint has a readable state.json; start a new run")


def restore(ckpt: Path, model, optimizer) -> None:
    """Load weights strictly and the optimizer state in place (a compiled step keeps its dict)."""
    ckpt = Path(ckpt)
    try:
        weights = mx.load(str(ckpt / "model.safetensors"))
        saved = mx.load(str(ckpt / "optimizer.safetensors"))
    except Exception as e:  # truncated, missing or unreadable: the caller falls back to an older one
        if not is_file_fault(e):
            raise
        raise UserError(f"{ckpt}: unreadable checkpoint files ({' '.join(str(e).split())[:160]})") from None
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise UserError(
            f"{ckpt}: this checkpoint is of another architecture ({' '.join(str(e).split())[:200]}); "
            f"resume with the config it was trained with"
        ) from None
    try:  # leaf by leaf: a frozen submodule's empty branch of the state must stay (flattening drops it)
        for key, value in saved.items():
            *path, last = key.split(".")
            node = optimizer.state
            for k in path:
                node = node[int(k)] if isinstance(node, list) else node[k]
            if isinstance(node, list):
                node[int(last)] = value
            else:
                node[last] = value
    except (KeyError, IndexError, ValueError) as e:
        raise UserError(
            f"{ckpt}: its optimizer state does not fit this model ({e}); resume with the config it was trained with"
        ) from None


def healthy(tree) -> bool:
    """Every array finite and below 1e15 in magnitude (weights beyond that turn the loss into NaN)."""
    return all(bool(mx.all(mx.abs(v) < 1e15).item()) for _, v in tree_flatten(tree))
