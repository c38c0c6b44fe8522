"""Zero-shot classification of a labelled image folder with a LiT model, as CLIP_benchmark scores it:
each class's text embedding is the normalised mean of its prompts (one per template) embedded and
normalised; an image's class is the nearest. Top-1, top-5, mean per-class recall and each class's
recall, in CLIP_benchmark's JSON shape."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import UserError
from ..paths import files_under, subfolders
from ..prompts import check_template

# a default prompt set of our own; for ImageNet give CLIP's 80 templates with --templates (README)
TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a cropped photo of a {}.",
    "a good photo of a {}.",
    "a picture of a {}.",
)


def read_lines(file: Path, what: str) -> list[str]:
    try:
        lines = [l.strip() for l in Path(file).read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{file}: cannot read the {what} ({e}); give a UTF-8 text file, one per line") from None
    lines = [l for l in lines if l and not l.startswith("#")]
    if not lines:
        raise UserError(f"{file}: holds no {what}; write one per line")
    return lines


def dataset(folder: Path, classes_file: Optional[Path] = None) -> tuple[list[str], list[str], np.ndarray]:
    """(class names, image files, labels) of a folder with one subfolder per class (ImageNet's val
    layout too). Names: the classes file's lines, in the sorted folders' order (a line may be
    "folder<TAB>name"), else the folder names with _ as spaces."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--data {folder}: no such folder; give one subfolder of images per class")
    folders = [d.name for d in subfolders(folder)]
    if len(folders) < 2:
        raise UserError(
            f"{folder}: zero-shot needs one subfolder of images per class, at least 2; found {len(folders)}"
        )
    names = [f.replace("_", " ") for f in folders]
    if classes_file is not None:
        lines = read_lines(classes_file, "class names")
        if all("\t" in l for l in lines):
            table = dict(l.split("\t", 1) for l in lines)
            missing = [f for f in folders if f not in table]
            if missing:
                raise UserError(f"{classes_file}: no name for the class folder(s) {', '.join(missing[:5])}")
            names = [table[f].strip() for f in folders]
        elif len(lines) != len(folders):
            raise UserError(
                f"{classes_file}: {len(lines)} names for {len(folders)} class folders; give one per folder, in "
                f"sorted folder order, or 'folder<TAB>name' lines"
            )
        else:
            names = lines
    files, labels, empty = [], [], []
    for i, f in enumerate(folders):
        found = files_under(folder / f)
        if not found:
            empty.append(f)
        files += [str(p) for p in found]
        labels += [i] * len(found)
    if not files:
        raise UserError(f"{folder}: its class folders hold no images")
    return names, files, np.array(labels)


def class_embeddings(encode_text: Callable, names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """(classes, dim): each the normalised mean of its prompts' normalised embeddings."""
    out = []
    for name in names:
        e = encode_text([t.format(name) for t in templates])
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        m = e.mean(axis=0)
        out.append(m / np.linalg.norm(m))
    return np.stack(out)


def scores(logits: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> dict:
    """CLIP_benchmark's metrics: acc1, acc5, mean_per_class_recall; plus each class's recall."""
    order = np.argsort(-logits, axis=1)
    acc1 = float((order[:, 0] == labels).mean())
    # as CLIP_benchmark: top-5 of fewer than five classes is undefined (NaN), not a certain 1.0
    acc5 = float((order[:, :5] == labels[:, None]).any(axis=1).mean()) if logits.shape[1] >= 5 else float("nan")
    per_class = {names[c]: float((order[labels == c, 0] == c).mean()) for c in range(len(names)) if (labels == c).any()}
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": float(np.mean(list(per_class.values()))),
            "per_class_recall": per_class}  # fmt: skip


def evaluate(model, folder: Path, classes_file=None, templates_file=None, batch_size: int = 16, errors=None,
             progress=None) -> dict:  # fmt: skip
    """The zero-shot scores of a LiT model on a labelled folder; unreadable images go to `errors`."""
    names, files, labels = dataset(folder, classes_file)
    templates = read_lines(templates_file, "templates") if templates_file else list(TEMPLATES)
    for i, t in enumerate(templates):
        check_template(t, f"{templates_file}: line {i + 1}" if templates_file else "template")
    text = class_embeddings(model.encode_text, names, templates)
    index = {f: i for i, f in enumerate(files)}
    kept, rows = [], []
    for item, f in model.iter_embed(files, pool="attn", batch_size=batch_size, errors=errors, progress=progress):
        kept.append(index[item])
        rows.append(f["embedding"])
    if not rows:
        raise UserError(f"{folder}: no image could be read")
    logits = np.stack(rows) @ text.T
    # CLIP_benchmark's result keys (dataset, model, pretrained, task, language, metrics: the caller adds
    # the model's two), so its `build` can hold our rows; the classes and templates as its lists
    return {"dataset": str(folder), "task": "zeroshot_classification", "language": "en", "n": len(rows),
            "classes": list(names), "templates": list(templates), "metrics": scores(logits, labels[kept], names)}  # fmt: skip
