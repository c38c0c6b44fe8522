"""Commands over images: embed, classify, caption, complete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError
from ..paths import expand_paths
from .common import PICTURES, check_output, model_option, parse_layers, report_skipped, shown


def embed(
    paths: List[str] = typer.Argument(..., help="image files, folders (recursive) or globs"),
    model: Optional[str] = model_option(
        "hub id, local checkpoint or 'demo'  \\[default: apple/aimv2-large-patch14-224, else the demo]"
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
    from .. import writers
    from ..api import load_aimv2, load_default

    if pca is not None:
        check_output(pca, PICTURES, "--pca")
    writer = writers.Writer(output) if output is not None else None  # a bad destination fails before any work
    try:
        files, errors = expand_paths(paths)
        if not files:
            raise UserError("no images to embed: " + "; ".join(f"{p}: {why}" for p, why in errors))
        m = load_default("vision", revision)[0] if model is None else load_aimv2(model, revision)
        layer_ids = m.check_layers(parse_layers(layers))
        if writer is not None:
            writer.expect(1 + len(layer_ids or ()), ragged=pool == "none" and m.config.vision.native and len(files) > 1)
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
    report_skipped(errors, len(names))


def _save_pca(m, names, out: Path):
    from ..preprocess import load_image
    from ..viz import save_pca

    imgs, toks, grids = [], [], []
    p = m.config.vision.patch_size
    for name in names:
        x = m.preprocessor(name)
        feats = m.embed([name], pool="none")
        imgs.append(load_image(name))
        toks.append(feats[0])
        grids.append((x.shape[0] // p, x.shape[1] // p))
    save_pca(imgs, toks, grids, out)


def classify(
    paths: List[str] = typer.Argument(..., help="image files, folders (recursive) or globs"),
    labels: Optional[str] = typer.Option(
        None, help="comma-separated labels for zero-shot (a LiT model), e.g. 'a cat,a dog'; omit for a fine-tuned model"
    ),
    model: Optional[str] = model_option(
        "a LiT model, or a fine-tuned classifier (its folder, or the `train --objective classify` run)  "
        "\\[default: apple/aimv2-large-patch14-224-lit, else the bundled demo-lit]"
    ),
    template: str = typer.Option("a photo of {}.", help="prompt template; {} is the label"),
    top_k: int = typer.Option(5, "--top-k", min=1, help="how many classes to print"),
    as_json: bool = typer.Option(False, "--json", help="print [{path, labels, probabilities}] as JSON"),
):
    """Classify images: zero-shot over --labels with the LiT model, or with a fine-tuned classifier's own
    classes. One image prints its top classes a line each; several print a line per image."""
    from ..api import ImageClassifier, LiTModel, fill_template, load_aimv2, load_default
    from ..inference import needs
    from ..kinds import classifier_folder

    files, errors = expand_paths(paths)
    if not files:
        raise UserError("no images to classify: " + "; ".join(f"{p}: {why}" for p, why in errors))
    if labels is None:
        if model is None:
            raise UserError("give --labels for zero-shot classification, or --model a fine-tuned classifier")
        m = load_aimv2(str(classifier_folder(model)))
        needs(m, ImageClassifier, "classify without --labels")
        rows = m.iter_predict([str(f) for f in files], errors=errors)
    else:
        names = [l.strip() for l in labels.split(",") if l.strip()]
        if not names:
            raise UserError("--labels is empty; give comma-separated labels")
        fill_template(template, names)  # a bad template fails before the model loads
        m = load_default("lit")[0] if model is None else load_aimv2(str(classifier_folder(model)))
        if isinstance(m, ImageClassifier):
            raise UserError(
                f"{model}: a fine-tuned classifier has its own classes ({', '.join(m.classes[:4])}...); drop --labels"
            )
        needs(m, LiTModel, "zero-shot classification over --labels")
        rows = m.iter_classify([str(f) for f in files], names, template, errors=errors)
    names = m.classes if labels is None else names
    done = []
    for path, probs in rows:
        top = probs.argsort()[::-1][:top_k]
        done.append(
            {
                "path": shown(path),
                "labels": [names[i] for i in top],
                "probabilities": [round(float(probs[i]), 6) for i in top],
            }
        )
        if as_json:
            continue
        if len(files) == 1:
            for i in top:
                typer.echo(f"{probs[i]:7.2%}  {names[i]}")
        else:
            typer.echo(f"{shown(path)}: " + ", ".join(f"{probs[i]:.1%} {names[i]}" for i in top))
    if as_json:
        typer.echo(json.dumps(done, indent=1))
    report_skipped(errors, len(done))


def caption(
    paths: List[str] = typer.Argument(..., help="image files, folders (recursive) or globs"),
    model: Path = typer.Option(..., "--model", "-m", help="a pre-training run folder (its encoder and decoder)"),
    beam: int = typer.Option(1, "--beam", min=1, max=16, help="beam width; 1 is greedy"),
    max_tokens: int = typer.Option(32, "--max-tokens", min=1, max=512),
    as_json: bool = typer.Option(False, "--json", help="print [{path, caption}] as JSON"),
):
    """Caption images with a pre-training run's decoder (the part of AIMv2 the paper throws away)."""
    from ..caption import load

    files, missing = expand_paths(paths)
    if not files:
        raise UserError("no images to caption: " + "; ".join(f"{p}: {why}" for p, why in missing))
    captioner = load(model, max_tokens)
    errors = list(missing)
    done = []
    for f, c in captioner.iter_captions([str(f) for f in files], beam=beam, errors=errors):
        done.append({"path": shown(f), "caption": c})
        if not as_json:
            typer.echo(f"{shown(f)}: {c}")
    if as_json:
        typer.echo(json.dumps(done, indent=1))
    report_skipped(errors, len(done))


def complete(
    image: Path = typer.Argument(..., help="an image"),
    model: Path = typer.Option(..., "--model", "-m", help="a pre-training run folder (its encoder and decoder)"),
    prefix: int = typer.Option(..., "--prefix", "-k", min=1, help="how many patches the decoder is given"),
    out: Path = typer.Option(Path("completion.png"), "--out", "-o", help="the picture (.png/.jpg)"),
):
    """Show the decoder's next-patch predictions after the first K patches: what AIMv2's image objective learns."""
    from ..caption import complete as predict
    from ..viz import save_completion

    check_output(out, PICTURES, "--out")
    if not image.is_file():
        raise UserError(f"{image}: no such image; give an image file")
    c = predict(model, str(image), prefix)
    save_completion(c.real, c.filled, c.error, prefix, out)
    typer.echo(f"next-patch MSE after {prefix} of {c.patches} patches: {c.mse:.4f}; saved {out}")


COMMANDS = [embed, classify, caption, complete]
