"""The `mlx-aimv2` command: parses, calls the library, prints. Knows nothing of tensors."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import time
import warnings
from pathlib import Path
from typing import List, Optional

import typer

from .config import ENCODERS, TrainConfig  # help texts: the preset names and training defaults
from .errors import UserError, os_error_line
from .errors import printable as shown
from .paths import expand_paths

# A lazy seam (the package has two, README: Layout): each command imports the library it calls in
# its own body, so that `--version`, `--help` and a mistyped command start without loading mlx-data,
# the training loop or matplotlib. Everything else imports at the top.

_TRAIN = TrainConfig()

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="AIMv2 vision encoders in MLX: embed images, convert checkpoints, pre-train.",
)


def user_errors(fn):
    """A UserError ends the command with one line on stderr and exit status 1, no traceback."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except UserError as e:
            typer.echo(f"error: {shown(e)}", err=True)
            raise typer.Exit(1) from None
        except OSError as e:  # the file system refused (a full or read-only disk, a file in the way)
            typer.echo(f"error: {os_error_line(e)}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _version(value: bool):
    if value:
        from . import __version__

        typer.echo(f"mlx-aimv2 {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
):
    """AIMv2 vision encoders in MLX: embed images, convert checkpoints, pre-train."""


def _check_output_file(path: Path, suffixes: tuple, option: str) -> None:
    """Refuse, before any work, an output file that cannot be one: a folder, a wrong extension, a
    file in the way of its folder."""
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name ending in {' or '.join(suffixes)}")
    if path.suffix.lower() not in suffixes:
        raise UserError(f"{option} {path}: give a file name ending in {' or '.join(suffixes)}")
    folder = path.resolve().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{option} {path}: {existing} is a file, so no folder can be made there")


@app.command()
@user_errors
def doctor():
    """Report the MLX version, backend, device, memory and (on Linux) the BLAS in use."""
    from .environment import report

    for k, v in report():
        typer.echo(f"{k:>20}: {v}")


@app.command()
def models():
    """List the published checkpoints this package knows: parameters and size in fp32, bf16, 8 and 4 bits."""
    from .config import PRESETS, checkpoint_bytes, count_params

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


@app.command()
@user_errors
def convert(
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
):
    """Convert a published AIMv2 checkpoint (ml-aim, transformers, timm or MLX layout) to MLX, optionally
    quantized (docs/quantization.md: what it costs in fidelity, size and speed)."""
    from .api import convert as run
    from .quantize import spec

    q = spec(q_bits, q_group_size, q_mode) if quantize else None
    out = run(src, dst, dtype, revision, overwrite, q)
    typer.echo(f"wrote {out}/model.safetensors, config.json, preprocessor_config.json")


@app.command()
@user_errors
def embed(
    paths: List[str] = typer.Argument(..., help="image files, folders (recursive) or globs"),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        show_default=False,
        help="hub id, local checkpoint or 'demo'  \\[default: apple/aimv2-large-patch14-224, else the demo]",
    ),
    pool: str = typer.Option("mean", help="mean | none | attn (LiT head)"),
    layers: Optional[str] = typer.Option(
        None,
        help="comma-separated block indices, e.g. '-1,12': block k's "
        "output before the final norm (transformers' hidden_states[k+1])",
    ),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1),
    output: Optional[Path] = typer.Option(
        None,
        "--output",
        "-o",
        help=".npy (one array; the file order goes to .files.txt), .safetensors or .jsonl (file names kept)",
    ),
    pca: Optional[Path] = typer.Option(None, help="save a PCA picture of the patch features here (.png)"),
    fast_decode: bool = typer.Option(
        False,
        "--fast-decode",
        help="decode large JPEGs at reduced size first (several times faster; "
        "pixels differ slightly from CLIPImageProcessor: docs/performance.md)",
    ),
    revision: Optional[str] = typer.Option(
        None,
        help="hub revision (a branch, tag or commit) of --model; default: the revision this package was tested with",
    ),
):
    """Embed images: pooled embeddings or patch tokens, optionally intermediate layers."""
    from . import writers
    from .api import load, load_default

    if pca is not None:
        _check_output_file(pca, (".png", ".jpg", ".jpeg", ".webp"), "--pca")
    writer = writers.Writer(output) if output is not None else None  # a bad destination fails before any work
    try:
        files, errors = expand_paths(paths)
        if not files:
            raise UserError("no images to embed: " + "; ".join(f"{p}: {why}" for p, why in errors))
        m = load_default("vision", revision)[0] if model is None else load(model, revision)
        layer_ids = m.check_layers(_parse_layers(layers))
        if output is not None and output.suffix == ".npy" and layer_ids:
            raise UserError(f"{output}: .npy holds one array, and --layers adds more; use .safetensors or .jsonl")
        if (
            output is not None
            and output.suffix == ".npy"
            and pool == "none"
            and m.config.vision.native
            and len(files) > 1
        ):
            raise UserError(
                f"{output}: the native model's tokens differ in size per image and .npy holds one "
                f"array; use {' or '.join(writers.RAGGED_FORMATS)}"
            )
        from tqdm import tqdm

        it = m.iter_embed(files, pool, layer_ids, batch_size, errors=errors, fast_decode=fast_decode)
        names = []
        for item, feats in tqdm(it, total=len(files), disable=len(files) <= batch_size, unit="img", desc="embed"):
            names.append(str(item))
            if writer is not None:
                writer.add(str(item), feats)
            else:
                typer.echo(f"{item}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in feats.items()))
        if writer is not None and names:
            writer.close()
            typer.echo(f"embedded {len(names)} image(s) with {m.config.name or model} -> {output}")
    except BaseException:
        if writer is not None:
            kept = writer.abort()
            if kept is not None:
                typer.echo(f"kept the {len(writer)} embedding(s) done so far in {kept}", err=True)
        raise
    if writer is not None and not names:
        writer.abort()
    if pca is not None and names:
        _save_pca(m, names[:8], pca)
        typer.echo(f"saved patch-feature PCA to {pca}")
    if errors:
        typer.echo(f"skipped {len(errors)} file(s):", err=True)
        for p, why in errors:
            typer.echo(f"  {why if str(p) in why else f'{p}: {why}'}", err=True)
        raise typer.Exit(1 if not names else 2)


def _parse_layers(layers: Optional[str]):
    if not layers:
        return None
    try:
        return tuple(int(x) for x in layers.split(","))
    except ValueError:
        raise UserError(f"--layers '{layers}': give comma-separated integers, e.g. '-1,12'") from None


def _save_pca(m, names, out: Path):
    from .preprocess import load_image
    from .viz import save_pca

    imgs, toks, grids = [], [], []
    p = m.config.vision.patch_size
    for name in names:
        x = m.preprocessor(name)
        feats = m.embed([name], pool="none")
        imgs.append(load_image(name))
        toks.append(feats[0])
        grids.append((x.shape[0] // p, x.shape[1] // p))
    save_pca(imgs, toks, grids, out)


@app.command()
@user_errors
def classify(
    image: Path = typer.Argument(...),
    labels: Optional[str] = typer.Option(
        None, help="comma-separated labels for zero-shot (a LiT model), e.g. 'a cat,a dog'; omit for a fine-tuned model"
    ),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        show_default=False,
        help="a LiT model, or a fine-tuned classifier (train --objective classify)  "
        "\\[default: apple/aimv2-large-patch14-224-lit, else the bundled demo-lit]",
    ),
    template: str = typer.Option("a photo of {}.", help="prompt template; {} is the label"),
    top_k: int = typer.Option(5, "--top-k", min=1, help="how many classes to print"),
):
    """Classify an image: zero-shot over --labels with the LiT model, or with a fine-tuned classifier's own classes."""
    from .api import fill_template, load, load_default

    if labels is None:
        if model is None:
            raise UserError("give --labels for zero-shot classification, or --model a fine-tuned classifier")
        m = load(model)
        probs, names = m.predict([str(image)])[0], m.classes
    else:
        names = [l.strip() for l in labels.split(",") if l.strip()]
        if not names:
            raise UserError("--labels is empty; give comma-separated labels")
        fill_template(template, names)  # a bad template fails before the model loads
        m = load_default("lit")[0] if model is None else load(model)
        probs = m.classify([str(image)], names, template)[0]
    for i in probs.argsort()[::-1][:top_k]:
        typer.echo(f"{probs[i]:7.2%}  {names[i]}")


data_app = typer.Typer(no_args_is_help=True, help="Make and inspect training data.")
tokenizer_app = typer.Typer(no_args_is_help=True, help="Train a tokenizer for pre-training.")
app.add_typer(data_app, name="data")
app.add_typer(tokenizer_app, name="tokenizer")


@data_app.command("synth")
@user_errors
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
    from .data.synth import write_labelled, write_synthetic

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


@tokenizer_app.command("train")
@user_errors
def tokenizer_train(
    captions: Path = typer.Argument(..., help="captions file (.jsonl/.csv/.tsv), folder or shards"),
    vocab_size: int = typer.Option(1024, "--vocab-size", min=260),
    out: Path = typer.Option(..., "--out", "-o", help="the tokenizer file to write, e.g. runs/tokenizer.json"),
):
    """Train a byte-level BPE on the captions of a dataset."""
    from .data import open_dataset
    from .tokenizer import train_bpe

    _check_output_file(out, (".json",), "--out")
    ds = open_dataset(str(captions))
    tok = train_bpe((s.caption for s in ds.samples), vocab_size, out)
    typer.echo(f"trained a {tok.vocab_size}-token BPE on {len(ds)} captions -> {out}")


@app.command()
@user_errors
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
    from .config import build_config, read_config
    from .train.checkpoint import saved_config
    from .train.trainer import Trainer

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
        held = f"; held-out top-1 {last['val_top1']} %" if "val_top1" in last else ""
        typer.echo(
            f"step {result['step']}: loss {last.get('loss', float('nan')):.4f}{held}; checkpoint {result['checkpoint']}"
        )
    if result["interrupted"]:
        raise typer.Exit(130)
    if trainer.rank == 0:
        done = trainer.result_folder
        what, use = {
            "lit": ("LiT model", f"mlx-aimv2 index PHOTOS --model {done}"),
            "classify": ("classifier", f"mlx-aimv2 classify IMAGE --model {done}"),
        }.get(cfg.objective, ("encoder", f"mlx-aimv2 embed --model {done}"))
        typer.echo(f"{what} exported to {done} ({use})")


@app.command()
@user_errors
def export(
    src: str = typer.Argument(..., help="a training run folder or checkpoint, or any checkpoint we load"),
    out: Path = typer.Argument(..., help="output folder"),
    format: str = typer.Option("mlx", "--format", help="mlx (for embed) | transformers (for PyTorch)"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="write into a non-empty folder (only our files are replaced)"
    ),
    decoder: bool = typer.Option(
        False, "--decoder", help="a pre-training run: its decoder and tokenizer too, for caption / complete"
    ),
    dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16 (--format mlx) \\[default: as is]"),
):
    """Export a model: a run's encoder for `embed` (with --decoder, a folder that captions), or any model
    for transformers' from_pretrained."""
    from .export import export as run

    done = run(src, out, format, overwrite, decoder, dtype)
    typer.echo(f"wrote {done}" + (" (transformers: from_pretrained)" if format == "transformers" else ""))


@app.command()
@user_errors
def probe(
    model: str = typer.Option(..., "--model", "-m", help="checkpoint to probe (hub id, folder, 'demo')"),
    data: Path = typer.Option(..., help="a synthetic set (captions.jsonl with labels) or an image folder"),
    attributes: str = typer.Option(
        "colour,shape,position,size,count", help="synthetic set: which scene attributes to classify"
    ),
    methods: str = typer.Option("attentive,linear,knn", help="attentive | linear | knn"),
    epochs: int = typer.Option(
        30,
        min=1,
        help="training epochs of the linear and attentive probes; raised "
        "so that each fits for at least 500 steps on small sets",
    ),
    random_init: bool = typer.Option(False, "--random-init", help="re-initialise the weights: the floor"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="save results as JSON"),
    cache: Optional[Path] = typer.Option(
        None, help="where computed features are kept [default: the user cache, ~/.cache/mlx-aimv2]"
    ),
    seed: int = typer.Option(0),
):
    """Frozen-trunk probes (attentive, linear, k-NN): top-1 accuracy on held-out images."""
    from .api import load
    from .eval import probe as P

    if not data.is_dir():
        raise UserError(
            f"--data {data}: no such folder; give a synthetic set or an image folder (one sub-folder per class)"
        )
    if output is not None:
        _check_output_file(output, (".json",), "--output")
    m = load(model)
    if random_init:
        P.reinitialize(m, seed)
    synthetic = (data / "captions.jsonl").is_file()
    tasks = [a.strip() for a in attributes.split(",")] if synthetic else ["folder"]
    sets = {t: P.synthetic_attribute(data, t, seed) if synthetic else P.image_folder(data, seed) for t in tasks}
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlx-aimv2" / "probe"
    top1 = P.probe_all(m, sets, cache if m.folder else None, [x.strip() for x in methods.split(",")], epochs, seed)
    n_train = {t: int(ds.split.sum()) for t, ds in sets.items()}
    results = {
        "model": model,
        "random_init": random_init,
        "data": str(data),
        "epochs_asked": epochs,
        "epochs": {t: P.effective_epochs(epochs, n) for t, n in n_train.items()},
        "top1": top1,
    }
    for t, r in top1.items():
        typer.echo(f"{t:>10}: " + "  ".join(f"{k} {v:5.1f}%" for k, v in r.items()))
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2) + "\n")
        typer.echo(f"saved {output}")


@app.command()
@user_errors
def index(
    paths: List[str] = typer.Argument(..., help="folders (recursive), image files or globs"),
    db: Path = typer.Option(..., "--db", help="the index file (SQLite), made if missing, e.g. lib.aimv2"),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        show_default=False,
        help="for a new index: a LiT model (text and image search) or any "
        "encoder (image search)  \\[default: apple/aimv2-large-patch14-224-lit, "
        "else demo-lit]",
    ),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="images per batch and per commit"),
    fast_decode: bool = typer.Option(
        False, "--fast-decode", help="decode large JPEGs at reduced size first (several times faster)"
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    watch: bool = typer.Option(
        False, "--watch", help="then keep following the folders: index what is added, changed or deleted"
    ),
):
    """Index a photo library for search: embeds new and changed images, drops deleted ones."""
    from .index import Index

    t0 = time.perf_counter()

    def report(s):
        typer.echo(
            f"{shown(db)}: {s}  (model: {(lib.info['model'] or {}).get('ref', 'none yet')}; "
            f"{time.perf_counter() - t0:.1f} s)"
        )
        for p, why in s.missing:
            typer.echo(f"  {shown(p)}: {why}", err=True)
        _report_bad(s.bad)

    with Index(db, model) as lib:
        try:
            if watch:
                return _watch(lib, paths, report, batch_size=batch_size, progress=progress, fast_decode=fast_decode)
            s = lib.add(paths, batch_size, progress, fast_decode=fast_decode)
        except KeyboardInterrupt:
            typer.echo(
                f"interrupted: the {len(lib)} images committed to {db} are kept; run the same command "
                f"again to continue",
                err=True,
            )
            raise typer.Exit(130) from None
        except BaseException:
            lib.discard_if_empty()  # a failed first run leaves no empty index behind
            raise
        report(s)
        if s.total == 0:
            raise typer.Exit(1)


def _watch(lib, paths, report, **options) -> None:
    """index --watch: until Ctrl-C or SIGTERM, which end it cleanly between passes (exit 0)."""
    import threading

    from .index.watch import watch

    stop = threading.Event()
    old = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    typer.echo("watching for changes; Ctrl-C to stop", err=True)
    try:
        watch(lib, paths, report, stop, **options)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
    typer.echo(f"stopped watching; {len(lib)} images in the index", err=True)


def _report_bad(bad: list) -> None:
    """Bad files, at most 20 lines; files that need a missing extra are one line per extra."""
    extras: dict = {}
    rest = []
    for p, why in bad:
        if "need an optional package" in why:
            hint = why.split("need an optional package: ", 1)[1]
            extras.setdefault(hint, []).append(p)
        else:
            rest.append(why if p in why else f"{p}: {why}")
    for hint, files in extras.items():
        typer.echo(f"{len(files)} file(s) skipped (e.g. {shown(files[0])}): they need {hint}", err=True)
    if rest:
        typer.echo("bad files (recorded; retried when they change):", err=True)
        for line in rest[:20]:
            typer.echo(f"  {shown(line)}", err=True)
        if len(rest) > 20:
            typer.echo(f"  ... and {len(rest) - 20} more", err=True)


@app.command()
@user_errors
def search(
    db: Path = typer.Argument(..., help="an index made by `mlx-aimv2 index`"),
    query: Optional[List[str]] = typer.Argument(
        None,
        help="what to look for: words (a LiT index), an image file, or terms joined by + and - with "
        "weights, e.g. '2:golden retriever' + pool.jpg - fruit",
    ),
    image: Optional[List[str]] = typer.Option(None, "--image", help="find images like this one (repeatable)"),
    k: int = typer.Option(10, "-k", min=1, help="how many results"),
    grid: Optional[Path] = typer.Option(None, "--grid", help="save a contact sheet of the hits (.png/.jpg)"),
    as_json: bool = typer.Option(False, "--json", help="print the hits as JSON, for scripts"),
):
    """Search an index by text, by example images, or both with weights: paths and cosine scores, best first."""
    from .index import Index
    from .index.query import Term, parse

    if not query and not image:
        raise UserError("give a text query, or --image PATH")
    if grid is not None:
        _check_output_file(grid, (".png", ".jpg", ".jpeg", ".webp"), "--grid")
    terms = (parse(query) if query else []) + [Term(p, 1.0, True) for p in image or []]
    with Index(db, create=False, read_only=True) as lib:
        hits = lib.search(query=terms, k=k)
    if as_json:
        typer.echo(json.dumps([{"path": shown(h.path), "score": round(h.score, 6)} for h in hits], indent=1))
    else:
        for i, h in enumerate(hits, 1):
            typer.echo(f"{i:>3}  {h.score:.4f}  {shown(h.path)}")
    if grid is not None:
        from .viz import contact_sheet

        contact_sheet(
            [h.path for h in hits], [f"{i}. {h.score:.3f}\n{Path(h.path).name}" for i, h in enumerate(hits, 1)], grid
        )
        typer.echo(f"saved {grid}", err=as_json)


@app.command()
@user_errors
def dupes(
    db: Path = typer.Argument(..., help="an index made by `mlx-aimv2 index`"),
    threshold: float = typer.Option(
        0.95, "--threshold", "-t", min=0.0, max=1.0, help="cosine similarity at which two images are near-duplicates"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the groups as JSON, for scripts"),
    grid: Optional[Path] = typer.Option(None, "--grid", help="save a contact sheet of the groups (.png/.jpg)"),
):
    """Group near-duplicate photos: re-encodes, resizes, small crops and edits of one photo."""
    from .index import Index

    if grid is not None:
        _check_output_file(grid, (".png", ".jpg", ".jpeg", ".webp"), "--grid")
    with Index(db, create=False, read_only=True) as lib:
        groups = lib.dupes(threshold)
        total = len(lib)
    if as_json:
        out = [[{"path": shown(h.path), "score": round(h.score, 6)} for h in g] for g in groups]
        typer.echo(json.dumps(out, indent=1))
    else:
        for i, g in enumerate(groups, 1):
            typer.echo(f"group {i} ({len(g)} images)")
            for h in g:
                typer.echo(f"  {h.score:.4f}  {shown(h.path)}")
    extra = sum(len(g) - 1 for g in groups)
    typer.echo(f"{len(groups)} group(s) of near-duplicates among {total} images; {extra} could go", err=as_json)
    if grid is not None and groups:
        from .viz import contact_sheet

        shown_groups = groups[:12]
        paths = [h.path for g in shown_groups for h in g[:6]]
        labels = [
            f"group {i}: {h.score:.3f}\n{Path(h.path).name}" for i, g in enumerate(shown_groups, 1) for h in g[:6]
        ]
        contact_sheet(paths, labels, grid)
        typer.echo(f"saved {grid}", err=as_json)


@app.command()
@user_errors
def caption(
    paths: List[str] = typer.Argument(..., help="image files, folders (recursive) or globs"),
    model: Path = typer.Option(..., "--model", "-m", help="a pre-training run folder (its encoder and decoder)"),
    beam: int = typer.Option(1, "--beam", min=1, max=16, help="beam width; 1 is greedy"),
    max_tokens: int = typer.Option(32, "--max-tokens", min=1, max=512),
    as_json: bool = typer.Option(False, "--json", help="print [{path, caption}] as JSON"),
):
    """Caption images with a pre-training run's decoder (the part of AIMv2 the paper throws away)."""
    from .caption import load

    files, missing = expand_paths(paths)
    if not files:
        raise UserError("no images to caption: " + "; ".join(f"{p}: {why}" for p, why in missing))
    captioner = load(model, max_tokens)
    captions = captioner([str(f) for f in files], beam=beam)
    if as_json:
        typer.echo(json.dumps([{"path": shown(f), "caption": c} for f, c in zip(files, captions)], indent=1))
    else:
        for f, c in zip(files, captions):
            typer.echo(f"{shown(f)}: {c}")


@app.command()
@user_errors
def complete(
    image: Path = typer.Argument(..., help="an image"),
    model: Path = typer.Option(..., "--model", "-m", help="a pre-training run folder (its encoder and decoder)"),
    prefix: int = typer.Option(..., "--prefix", "-k", min=1, help="how many patches the decoder is given"),
    out: Path = typer.Option(Path("completion.png"), "--out", "-o", help="the picture (.png/.jpg)"),
):
    """Show the decoder's next-patch predictions after the first K patches: what AIMv2's image objective learns."""
    import mlx.core as mx
    import numpy as np

    from . import owner
    from .models.completion import next_patches, unpatchify
    from .train.runs import load_pretrainer
    from .viz import save_completion

    _check_output_file(out, (".png", ".jpg", ".jpeg", ".webp"), "--out")
    net, _, pre, cfg = owner.run(load_pretrainer, model, "image")
    size, p = cfg.image_size, net.patch
    n = (size // p) ** 2
    if prefix >= n:
        raise UserError(f"--prefix {prefix}: this model sees {n} patches; give 1 to {n - 1}")
    x = pre(str(image))
    result = owner.run(next_patches, net, mx.array(x[None]), prefix)
    mean, std = np.asarray(cfg.mean, np.float32), np.asarray(cfg.std, np.float32)

    def show(a):  # normalised pixels back to 8-bit RGB
        return (np.clip(a * std + mean, 0, 1) * 255).astype(np.uint8)

    real = show(x)
    filled = show(unpatchify(result["predicted"], size, size, p))
    save_completion(real, filled, result["error"].reshape(size // p, size // p), prefix, out)
    typer.echo(f"next-patch MSE after {prefix} of {n} patches: {result['mse']:.4f}; saved {out}")


@app.command()
@user_errors
def serve(
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        show_default=False,
        help="the model for /v1/embeddings  \\[default: the index's own, else apple/aimv2-large-patch14-224-lit, "
        "else demo-lit]",
    ),
    db: Optional[Path] = typer.Option(None, "--db", help="an index to search (POST /v1/search) and browse (the page)"),
    host: str = typer.Option("127.0.0.1", help="where to listen; anything but localhost needs --token"),
    port: int = typer.Option(8000, min=1, max=65535),
    token: Optional[str] = typer.Option(
        None, envvar="MLX_AIMV2_TOKEN", help="require 'Authorization: Bearer TOKEN' on every route"
    ),
    allow_dir: Optional[List[Path]] = typer.Option(
        None, "--allow-dir", help="a folder whose files requests may name by path (repeatable; default: none)"
    ),
    cors_origin: Optional[List[str]] = typer.Option(
        None, "--cors-origin", help="a web origin allowed to call the API from a browser (repeatable)"
    ),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="inputs per model call when requests are batched"),
):
    """Serve embeddings (OpenAI-style /v1/embeddings) and, with --db, search and a page, on localhost."""
    from .serve import check_host, open_settings, run

    check_host(host, token)  # before any model loads
    settings = open_settings(model, db, token, allow_dir or [], cors_origin or [], max_batch)
    shown_host = f"[{host}]" if ":" in host else host
    typer.echo(f"serving {settings.name} on http://{shown_host}:{port}/ (Ctrl-C stops)", err=True)
    run(settings, host, port)


@app.command()
@user_errors
def retrieval(
    model: str = typer.Option(..., "--model", "-m", help="a LiT model (folder, hub id, 'demo-lit')"),
    data: str = typer.Option(..., help="captioned images: a captions file or folder, as train reads"),
    limit: Optional[int] = typer.Option(None, min=2, help="use the first N pairs"),
    random_init: bool = typer.Option(
        False, "--random-init", help="re-initialise the head, projections and text tower: the floor"
    ),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="save results as JSON"),
    seed: int = typer.Option(0),
):
    """Text->image and image->text recall@1 and @5 of a LiT model on held-out captioned images."""
    from .api import load
    from .eval import retrieval as R

    m = load(model)
    m._need_lit()
    if random_init:
        R.randomize_text_side(m, seed)
    r = {"model": model, "random_init": random_init, "data": data, **R.evaluate(m, data, limit)}
    typer.echo(
        f"{r['n']} pairs ({r['distinct_captions']} distinct captions): "
        + "  ".join(f"{k} {r[k]:.1f}%" for k in r if "@" in k)
    )
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(r, indent=2) + "\n")
        typer.echo(f"saved {output}")


class _Notes(logging.Handler):
    """The library's notes (logging) as `note: ...` lines on the stderr of the moment."""

    def emit(self, record):
        typer.echo(f"note: {record.getMessage()}", err=True)


@contextlib.contextmanager
def messages():
    """While the CLI runs: a warning (the slow BLAS) and a library note are one line each on stderr,
    as errors are; afterwards the host's warning and logging set-up are as they were."""
    shown_before = warnings.showwarning
    warnings.showwarning = lambda msg, cat, *_a, **_k: typer.echo(f"warning: {msg}", err=True)
    notes, log = _Notes(), logging.getLogger("mlx_aimv2")
    log.addHandler(notes)
    propagate, log.propagate = log.propagate, False
    try:
        yield
    finally:
        warnings.showwarning = shown_before
        log.removeHandler(notes)
        log.propagate = propagate


def main():
    """The CLI, for programs that call it: runs in this process as it is."""
    try:
        with messages():
            app(prog_name="mlx-aimv2")
    except KeyboardInterrupt:  # before a command's own handling is in place (imports, start-up)
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None


def console():
    """The `mlx-aimv2` command (and `python -m mlx_aimv2`): on Linux's CPU backend it first restarts
    itself with Debian's OpenBLAS when that is installed but not loaded (cpu.restart_with_openblas)."""
    try:
        from .cpu import restart_with_openblas

        restart_with_openblas()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    main()
