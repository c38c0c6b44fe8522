"""The model card (README.md) every folder `convert` and `export` write carries, as the MLX community
writes them on the Hub (mlx-lm, mlx-vlm): front matter that huggingface_hub's ModelCard reads
(`library_name: mlx`, `base_model`, `pipeline_tag`, tags, license), the command that made the folder,
a quantized folder's measured fidelity, and how to use it from the CLI and from Python."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

from . import kinds
from .config import ModelConfig

CARD = "README.md"
PIPELINES = {
    kinds.LIT: "zero-shot-image-classification",
    kinds.CLASSIFIER: "image-classification",
}
USE = {  # the CLI line that shows the folder's kind at work
    kinds.ENCODER: "mlx-aimv2 embed photo.jpg --model {ref}",
    kinds.CAPTIONER: "mlx-aimv2 caption photo.jpg --model {ref}",
    kinds.LIT: "mlx-aimv2 classify photo.jpg --model {ref} --labels 'a cat,a dog'",
    kinds.CLASSIFIER: "mlx-aimv2 classify photos/ --model {ref} --json",
}


def command_line() -> str:
    """How the folder was made: the `mlx-aimv2` command as typed, else the Python call's program."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("mlx-aimv2", "__main__.py"):
        return "mlx-aimv2 " + shlex.join(argv[1:])
    return "mlx_aimv2 from Python (" + shlex.join([Path(argv[0]).name, *argv[1:]] if argv else ["python"]) + ")"


LICENCE_KEYS = ("license", "license_name", "license_link")  # the Hub's licence fields, as mlx-lm keeps them


def front_matter(folder: Optional[Path]) -> dict:
    """The fields of a folder's card's front matter (one `key: value` a line, values JSON or plain)."""
    try:
        text = (Path(folder) / CARD).read_text() if folder is not None else ""
    except (OSError, UnicodeDecodeError):
        return {}
    if not text.startswith("---"):
        return {}
    out = {}
    for line in text.split("---", 2)[1].splitlines():
        key, _, value = line.partition(":")
        value = value.strip()
        if key.strip() and value and not line.startswith((" ", "-")):
            try:
                out[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                out[key.strip()] = value
    return out


def provenance(repo: Optional[str], folder: Optional[Path]) -> dict:
    """What a new card keeps of where its weights came from: the Hub repo they were read from, else
    the base_model the source folder's own card names; the source card's licence fields, else Apple's
    licence for Apple's weights. Through convert, quantize, fine-tune, LoRA and export alike."""
    source = front_matter(folder)
    base = repo or source.get("base_model")
    licence = {k: source[k] for k in LICENCE_KEYS if k in source}
    if not licence and isinstance(base, str) and base.startswith("apple/"):
        licence = {"license": "apple-amlr"}
    return {"base_model": base if isinstance(base, str) else None, "licence": licence}


def _front_matter(front: dict) -> list:
    """A card's YAML front matter (each value as JSON, which YAML reads), then a blank line."""
    return ["---", *[f"{k}: {json.dumps(v)}" for k, v in front.items()], "---", ""]


def _made_with(command: Optional[str]) -> list:
    return ["Made with:", "", "```bash", command or command_line(), "```", ""]


def render(config: ModelConfig, kind: str, base_model: Optional[str], fidelity: Optional[dict] = None,
           repo: Optional[str] = None, library: str = "mlx", command: Optional[str] = None,
           licence: Optional[dict] = None) -> str:  # fmt: skip
    """The card's text; library "transformers" for an export to PyTorch (float weights: no quantized
    tags, whatever the source was)."""
    v = config.vision
    quant = config.quantization if library == "mlx" else None
    tags = [library, "mlx-aimv2", "aimv2", "vision"] + ([f"{quant['bits']}-bit", "quantized"] if quant else [])
    front = {
        "library_name": library,
        "pipeline_tag": PIPELINES.get(kind, "image-feature-extraction"),
        "tags": tags,
        **(licence or {"license": "apple-amlr" if base_model and base_model.startswith("apple/") else "other"}),
    }
    if base_model:
        front["base_model"] = base_model
    lines = _front_matter(front)
    name = config.name or "an AIMv2 model"
    size = f"{v.image_size} px" if v.image_size else "native resolution"
    lines += [
        f"# {name}",
        "",
        f"{kinds.describe(kind).capitalize()} in "
        + ("[MLX](https://github.com/ml-explore/mlx) format" if library == "mlx" else "transformers (PyTorch) format")
        + f", from [mlx-aimv2](https://github.com/mlx-aimv2/mlx-aimv2): width {v.hidden_size}, {v.depth} blocks, "
        f"patch {v.patch_size}, {size}"
        + (f", {quant['bits']}-bit {quant.get('mode', 'affine')}" if quant else "")
        + (f", from [{base_model}](https://huggingface.co/{base_model})" if base_model else "")
        + ".",
        "",
        *_made_with(command),
    ]
    if fidelity:
        lines += [
            "## Fidelity",
            "",
            f"Cosine similarity of the pooled embedding to the unquantized source's, on {fidelity['images']} "
            f"sample images: mean {fidelity['mean']:.5f}, min {fidelity['min']:.5f}.",
            "",
        ]
    ref = repo or "THIS_FOLDER"
    if library == "transformers":
        return "\n".join(lines + ["## Use", "", "```python", "from transformers import AutoModel", "",
                                   f'model = AutoModel.from_pretrained("{ref}")', "```", ""])  # fmt: skip
    lines += [
        "## Use",
        "",
        "```bash",
        "pip install mlx-aimv2",
        USE.get(kind, USE[kinds.ENCODER]).format(ref=ref),
        "```",
        "",
        "```python",
        "import mlx_aimv2",
        "",
        f'model = mlx_aimv2.load("{ref}")',
        'embedding = model.embed("photo.jpg")',
        "```",
        "",
    ]
    return "\n".join(lines)


def write(folder: Path, config: ModelConfig, kind: str, base_model: Optional[str] = None,
          fidelity: Optional[dict] = None, repo: Optional[str] = None, library: str = "mlx",
          command: Optional[str] = None, licence: Optional[dict] = None) -> None:  # fmt: skip
    (Path(folder) / CARD).write_text(render(config, kind, base_model, fidelity, repo, library, command, licence))


def write_adapter(folder: Path, base_model: Optional[str] = None, command: Optional[str] = None) -> None:
    """The card of a folder of LoRA adapters in PEFT's layout (export --format peft)."""
    front = {
        "library_name": "peft",
        "tags": ["mlx-aimv2", "aimv2", "lora"],
        **({"base_model": base_model} if base_model else {}),
    }
    where = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "`base/`, beside them"
    lines = [*_front_matter(front), "# LoRA adapters for an AIMv2 vision encoder", "",
             f"PEFT's layout, for transformers' `Aimv2VisionModel`; the base encoder is {where}.", "",
             *_made_with(command), "```python", "from peft import AutoPeftModel", "",
             'model = AutoPeftModel.from_pretrained("THIS_FOLDER")  # loads the base, then the adapters', "```", ""]  # fmt: skip
    (Path(folder) / CARD).write_text("\n".join(lines))


def base_model_of(folder: Path) -> Optional[str]:
    """The base_model a folder's own card names (a folder converted before), if any."""
    base = front_matter(folder).get("base_model")
    return base if isinstance(base, str) else None


def write_ovis2(folder: Path, config: dict, source: Optional[str], licence: dict,
                command: Optional[str] = None) -> None:  # fmt: skip
    """The card of an Ovis2 folder `convert` wrote: where it came from, its shape and quantization."""
    quant = config.get("quantization")
    v, t = config["vision_config"], config["text_config"]
    front = {"library_name": "mlx", "pipeline_tag": "image-text-to-text",
             "tags": ["mlx", "mlx-aimv2", "ovis2", "aimv2"] + ([f"{quant['bits']}-bit", "quantized"] if quant else []),
             **(licence or {"license": "apache-2.0"}), **({"base_model": source} if source else {})}  # fmt: skip
    ref = "THIS_FOLDER"
    lines = [*_front_matter(front), f"# {source or 'An Ovis2 model'} in MLX", "",
             f"{kinds.describe(kinds.OVIS2).capitalize()} (AIDC-AI) in [MLX](https://github.com/ml-explore/mlx) format, "
             f"from [mlx-aimv2](https://github.com/mlx-aimv2/mlx-aimv2): an AIMv2 encoder {v.get('hidden_size')} wide "
             f"at {v.get('image_size')} px, a Qwen2 language model {t.get('hidden_size')} wide, "
             f"{t.get('num_hidden_layers')} layers"
             + (f"; the language model and encoder blocks {quant['bits']}-bit {quant['mode']}" if quant else "")
             + (f", from [{source}](https://huggingface.co/{source})" if source else "") + ".", "",
             *_made_with(command), "## Use", "", "```bash",
             "pip install 'mlx-aimv2[vlm]'", f'mlx-aimv2 chat photo.jpg "Describe the image." --model {ref}', "```", "",
             "```python", "import mlx_aimv2", "", f'chat = mlx_aimv2.load("{ref}")',
             'print(chat.generate("Describe the image.", ["photo.jpg"])["text"])', "```", ""]  # fmt: skip
    (Path(folder) / CARD).write_text("\n".join(lines))
