"""Training commands: train, and the data it needs (data synth, tokenizer train)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..config import ENCODERS, TrainConfig  # help texts: the preset names and training defaults
from ..errors import UserError
from .common import check_output

_TRAIN = TrainConfig()


def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML or YAML config file"),
    data: Optional[str] = typer.Option(None, help="captions file (.jsonl/.csv/.tsv), folder or tar shards"),
    out: Optional[str] = typer.Option(None, help=f"run folder (checkpoints, metrics, plots) \\[default: {_TRAIN.out}]"),
    encoder: Optional[str] = typer.Option(None, help=f"{' | '.join(ENCODERS)} \\[default: {_TRAIN.encoder}]"),
    init: Optional[str] = typer.Option(None, help="start the encoder from this checkpoint (hub id, folder, file)"),
    image_size: Optional[int] = typer.Option(
        None, "--image-size", help=f"training resolution in px \\[default: {_TRAIN.image_size}]"
    ),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", "-b", help=f"global batch \\[default: {_TRAIN.batch_size}]"
    ),
    steps: Optional[int] = typer.Option(None, help=f"optimizer steps \\[default: {_TRAIN.steps}]"),
    lr: Optional[float] = typer.Option(None, help=f"peak learning rate \\[default: {_TRAIN.lr}]"),
    objective: Optional[str] = typer.Option(
        None,
        help=f"aimv2 | image | text | lit (LiT tuning of the frozen --init encoder) | classify (fine-tune --init "
        f"on a labelled --data) \\[default: {_TRAIN.objective}]",
    ),
    dtype: Optional[str] = typer.Option(None, help=f"float32 | bfloat16 compute \\[default: {_TRAIN.dtype}]"),
    set_: List[str] = typer.Option([], "--set", help="any config key, e.g. --set warmup=200 (README: Config)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
):
    """Pre-train an AIMv2 encoder with the paper's objective (from scratch or from --init), LiT-tune a
    text side onto a frozen --init encoder (--objective lit), or fine-tune --init as a classifier
    (--objective classify; --set tune=lora|full|head)."""
    from ..config import build_config, read_config
    from ..runs.snapshots import saved_config
    from ..train.trainer import Trainer

    flags = dict(
        data=data,
        out=out,
        encoder=encoder,
        init=init,
        image_size=image_size,
        batch_size=batch_size,
        steps=steps,
        lr=lr,
        objective=objective,
        dtype=dtype,
    )
    given = read_config(config, flags, set_)
    # a resumed run continues with the config saved in its checkpoint; flags change only what may change
    cfg = build_config(given, saved_config(Path(given.get("out", "runs/aimv2"))) if resume else None)
    trainer = Trainer(cfg, resume=resume, log=lambda m: typer.echo(m, err=True), progress=progress)
    result = trainer.run(progress=progress)
    last = result["last"]
    if trainer.rank == 0:  # the rank that writes checkpoints and the export
        # each figure with its step: the loss is the final step's own, the held-out score the last probe's
        held = f"; held-out top-1 {last['val_top1']} % (step {last['step']})" if "val_top1" in last else ""
        typer.echo(f"step {result['step']}: loss {result['loss']:.4f}{held}; checkpoint {result['checkpoint']}")
    if result["interrupted"]:
        raise typer.Exit(130)
    if trainer.rank == 0:
        done = trainer.result_folder
        what, use = {
            "lit": ("LiT model", f"mlx-aimv2 index PHOTOS --model {done}"),
            "classify": ("classifier", f"mlx-aimv2 classify IMAGE --model {done}"),
        }.get(cfg.objective, ("encoder", f"mlx-aimv2 embed --model {done}"))
        typer.echo(f"{what} exported to {done} ({use})")


def data_synth(
    out: Path = typer.Argument(..., help="output folder"),
    n: int = typer.Option(1000, "--n", min=1, help="number of scenes"),
    size: int = typer.Option(128, min=32, max=4096, help="image side in pixels"),
    max_objects: int = typer.Option(
        3, "--max-objects", min=1, max=3, help="1 makes a probe set where every attribute is defined"
    ),
    seed: int = typer.Option(0),
    shards: int = typer.Option(0, min=0, help="write N webdataset tar shards (key.jpg/.txt/.json) instead"),
    classes: Optional[str] = typer.Option(
        None, help="write a labelled image folder of one-object scenes by colour | shape | position | size instead"
    ),
):
    """Write a synthetic captioned set: coloured shapes, captions saying what is where (or, with
    --classes, a labelled train/ val/ image folder for fine-tuning)."""
    from ..data.synth import write_labelled, write_synthetic

    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file; give a folder for the data set")
    if classes is not None:
        if shards:
            raise UserError("--classes writes an image folder; drop --shards")
        write_labelled(out, n, classes, size, seed, progress=n > 200)
        typer.echo(f"wrote {n} one-object scenes by {classes} to {out}/train and {out}/val")
        return
    if shards > n:
        raise UserError(f"--shards {shards} is more than --n {n}: each shard needs a sample")
    write_synthetic(out, n, size, seed, progress=n > 200, max_objects=max_objects, shards=shards)
    where = f"{shards} shards {out}/{{00000..{shards - 1:05d}}}.tar" if shards else f"{out}/captions.jsonl"
    typer.echo(f"wrote {n} images and their captions to {where}")


def tokenizer_train(
    captions: Path = typer.Argument(..., help="captions file (.jsonl/.csv/.tsv), folder or shards"),
    vocab_size: int = typer.Option(1024, "--vocab-size", min=260),
    out: Path = typer.Option(..., "--out", "-o", help="the tokenizer file to write, e.g. runs/tokenizer.json"),
):
    """Train a byte-level BPE on the captions of a dataset."""
    from ..data import open_dataset
    from ..tokenizer import train_bpe

    check_output(out, (".json",), "--out")
    ds = open_dataset(str(captions))
    tok = train_bpe((s.caption for s in ds.samples), vocab_size, out)
    typer.echo(f"trained a {tok.vocab_size}-token BPE on {len(ds)} captions -> {out}")


COMMANDS = [train]
GROUPS = {
    "data": ("Make and inspect training data.", {"synth": data_synth}),
    "tokenizer": ("Train a tokenizer for pre-training.", {"train": tokenizer_train}),
}
