"""Commands about models: doctor, models (the published list), convert, export."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import typed_command


def doctor():
    """Report the MLX version, backend, device, memory and (on Linux) the BLAS in use."""
    from ..environment import report

    for k, v in report():
        typer.echo(f"{k:>20}: {v}")


def models():
    """List the published checkpoints this package knows: parameters and size in fp32, bf16, 8 and 4 bits
    (and Ovis2's, the vision-language models on AIMv2: their weights in bf16 and 4 bits)."""
    from ..config import PRESETS, checkpoint_bytes, count_params
    from ..config.ovis2 import OVIS2, ovis2_bytes, ovis2_params

    typer.echo(f"{'':<44} {'params':>9} {'fp32':>9} {'bf16':>9} {'8-bit':>9} {'4-bit':>9}")
    typer.echo(f"{'demo':<44} the small checkpoint bundled in weights/demo")
    typer.echo(f"{'demo-lit':<44} its LiT text side (weights/demo-lit): text search offline")
    gb = lambda n: f"{n / 1e9:8.2f}G"  # noqa: E731
    for name, cfg in PRESETS.items():
        # quantized sizes as `convert -q` writes them from the published fp32 files (group 64)
        typer.echo(
            f"{'apple/' + name:<44} {count_params(cfg) / 1e6:8.1f}M {gb(checkpoint_bytes(cfg))} "
            f"{gb(checkpoint_bytes(cfg, 2))} {gb(checkpoint_bytes(cfg, 4, 8))} {gb(checkpoint_bytes(cfg, 4, 4))}"
        )
    typer.echo(f"\n{'Ovis2 (chat; sizes derived from shapes)':<44} {'params':>9} {'':>9} {'bf16':>9} "
               f"{'8-bit':>9} {'4-bit':>9}")  # fmt: skip
    for name, (tower, lm) in OVIS2.items():
        typer.echo(
            f"{name:<44} {ovis2_params(tower, lm)[0] / 1e9:8.2f}B {'':>9} {gb(ovis2_bytes(tower, lm))} "
            f"{gb(ovis2_bytes(tower, lm, 8))} {gb(ovis2_bytes(tower, lm, 4))}"
        )


def convert(
    ctx: typer.Context,
    src: str = typer.Argument(..., help="hub id, model name, local folder or weight file"),
    dst: Path = typer.Argument(..., help="output folder"),
    dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16 [default: the source's]"),
    revision: Optional[str] = typer.Option(None, help="hub revision (default: the pinned one)"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="write into a non-empty folder (only our files are replaced)"
    ),
    quantize: bool = typer.Option(False, "--quantize", "-q", help="quantize the transformer blocks"),
    q_bits: int = typer.Option(8, "--q-bits", help="bits per weight: 4, 6 or 8 (affine also 2, 3, 5)"),
    q_group_size: int = typer.Option(64, "--q-group-size", help="weights per scale: 32, 64 or 128"),
    q_mode: str = typer.Option("affine", "--q-mode", help="affine | mxfp4 | mxfp8 | nvfp4"),
    max_shard_size: str = typer.Option(
        "5GiB", "--max-shard-size", help="weights over this go in shards with an index, as mlx-lm writes them"
    ),
    upload_repo: Optional[str] = typer.Option(
        None, "--upload-repo", help="then push the folder to the Hugging Face hub as OWNER/NAME (`hf auth login` first)"
    ),
    private: bool = typer.Option(False, "--private", help="with --upload-repo: make the hub repo private"),
):
    """Convert a published AIMv2 checkpoint (ml-aim, transformers, timm or MLX layout) to MLX, optionally
    quantized (docs/quantization.md: what it costs in fidelity, size and speed)."""
    from ..api import convert as run
    from ..checkpoints.mlx_io import parse_size
    from ..quantize import spec

    q = spec(q_bits, q_group_size, q_mode) if quantize else None
    shard = parse_size(max_shard_size)  # a bad size fails before any work
    _check_repo(upload_repo)
    out = run(src, dst, dtype, revision, overwrite, q, max_shard_size=shard, command=typed_command(ctx))
    typer.echo(f"wrote {out}: the weights, config.json, preprocessor_config.json and a model card (README.md)")
    _upload(out, upload_repo, private)


def export(
    ctx: typer.Context,
    src: str = typer.Argument(..., help="a training run folder or checkpoint, or any checkpoint we load"),
    out: Path = typer.Argument(..., help="output folder"),
    format: str = typer.Option(
        "mlx", "--format", help="mlx (for embed) | transformers (for PyTorch) | peft (a LoRA run's adapters)"
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="write into a non-empty folder (only our files are replaced)"
    ),
    decoder: bool = typer.Option(
        False, "--decoder", help="a pre-training run: its decoder and tokenizer too, for caption / complete"
    ),
    dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16 (--format mlx) \\[default: as is]"),
    max_shard_size: str = typer.Option(
        "5GiB", "--max-shard-size", help="weights over this go in shards with an index, as mlx-lm writes them"
    ),
    upload_repo: Optional[str] = typer.Option(
        None, "--upload-repo", help="then push the folder to the Hugging Face hub as OWNER/NAME (`hf auth login` first)"
    ),
    private: bool = typer.Option(False, "--private", help="with --upload-repo: make the hub repo private"),
):
    """Export a model: a run's encoder for `embed` (with --decoder, a folder that captions), or any model
    for transformers' from_pretrained."""
    from ..checkpoints.export import export as run
    from ..checkpoints.mlx_io import parse_size

    shard = parse_size(max_shard_size)
    _check_repo(upload_repo)
    done = run(src, out, format, overwrite, decoder, dtype, max_shard_size=shard, command=typed_command(ctx))
    typer.echo(f"wrote {done}" + (" (transformers: from_pretrained)" if format == "transformers" else ""))
    _upload(done, upload_repo, private)


def _check_repo(repo: Optional[str]) -> None:
    """A malformed --upload-repo is refused before any work."""
    if repo is not None:
        from ..hub import check_repo_id

        check_repo_id(repo)


def _upload(folder, repo: Optional[str], private: bool) -> None:
    if repo is None:
        return
    from ..hub import upload

    typer.echo(f"uploaded {folder} to {upload(folder, repo, private)}")


COMMANDS = [doctor, models, convert, export]
