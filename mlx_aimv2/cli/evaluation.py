"""Evaluation commands: probe (frozen-trunk probes), retrieval (a LiT model's recall)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError
from ..writers import save_json
from .common import check_output, model_option, report_skipped


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
    from ..api import load_aimv2
    from ..eval import probe as P

    if not data.is_dir():
        raise UserError(
            f"--data {data}: no such folder; give a synthetic set or an image folder (one sub-folder per class)"
        )
    if output is not None:
        check_output(output, (".json",), "--output")
    m = load_aimv2(model)
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
        save_json(output, results)
        typer.echo(f"saved {output}")


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
    from ..api import LiTModel, load_aimv2
    from ..eval import retrieval as R
    from ..inference import needs

    m = load_aimv2(model)
    needs(m, LiTModel, "retrieval")
    if random_init:
        R.randomize_text_side(m, seed)
    r = {"model": model, "random_init": random_init, "data": data, **R.evaluate(m, data, limit)}
    typer.echo(
        f"{r['n']} pairs ({r['distinct_captions']} distinct captions): "
        + "  ".join(f"{k} {r[k]:.1f}%" for k in r if "@" in k)
    )
    if output:
        save_json(output, r)
        typer.echo(f"saved {output}")


def zeroshot(
    model: Optional[str] = model_option(
        "a LiT model  \\[default: apple/aimv2-large-patch14-224-lit, else the bundled demo-lit]"
    ),
    data: Path = typer.Option(..., help="one subfolder of images per class (ImageNet's val layout too)"),
    classes: Optional[Path] = typer.Option(
        None,
        help="class names, one per line in sorted folder order, or 'folder<TAB>name' lines [default: the folder names]",
    ),
    templates: Optional[Path] = typer.Option(
        None, help="prompt templates, one per line with {} [default: 8 of our own]"
    ),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="save the scores as JSON (CLIP_benchmark's shape)"
    ),
):
    """Zero-shot top-1 / top-5 and per-class recall of a LiT model on a labelled image folder."""
    from ..api import LiTModel, load_aimv2, load_default
    from ..eval.zeroshot import evaluate
    from ..inference import needs

    if output is not None:
        check_output(output, (".json",), "--output")
    m, given = load_default("lit") if model is None else (load_aimv2(model), model)
    needs(m, LiTModel, "zero-shot classification")
    errors: list = []
    # as CLIP_benchmark names them (open_clip's architecture and weights): the model's name, and the
    # checkpoint it was loaded from
    r = {"model": m.config.name, "pretrained": given, **evaluate(m, data, classes, templates, batch_size, errors)}
    k = r["metrics"]
    top5 = "n/a (under 5 classes)" if k["acc5"] != k["acc5"] else f"{k['acc5']:.2%}"
    typer.echo(
        f"{r['n']} images, {len(r['classes'])} classes, {len(r['templates'])} templates: top-1 {k['acc1']:.2%}  "
        f"top-5 {top5}  mean per-class recall {k['mean_per_class_recall']:.2%}"
    )
    if output is not None:
        save_json(output, r)
        typer.echo(f"saved {output}")
    report_skipped(errors, r["n"])


COMMANDS = [probe, retrieval, zeroshot]
