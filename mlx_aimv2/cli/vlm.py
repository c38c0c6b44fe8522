"""chat: ask an Ovis2 model about an image (the vlm extra)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import typer

from ..errors import UserError


def chat(
    image: str = typer.Argument(..., help="the image to ask about"),
    question: str = typer.Argument(..., help="what to ask"),
    more: List[str] = typer.Option([], "--image", "-i", help="another image in the same prompt (repeatable)"),
    model: Path = typer.Option(..., "--model", "-m", help="an Ovis2 folder in transformers' layout (AIDC-AI/Ovis2-*)"),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="the most tokens the answer may take"),
    as_json: bool = typer.Option(False, "--json", help='print {"text": ..., "tokens": [ids]}'),
):
    """Ask an Ovis2 vision-language model (AIMv2 as its eyes) about images; the answer streams (greedy)."""
    try:
        from ..vlm.chat import Ovis2Chat
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "mlx_lm":
            raise
        raise UserError("chat needs mlx-lm, which is not installed: pip install 'mlx-aimv2[vlm]'") from None
    images = [image, *more]
    for picture in images:
        if not Path(picture).is_file():
            raise UserError(f"{picture}: no such image file")
    bot = Ovis2Chat(model)
    tokens = []
    for token in bot.stream(question, images, max_tokens):
        tokens.append(token)
        if not as_json:  # the whole answer decoded so far, printed past what was shown
            typer.echo(bot.tokenizer.decode([token], skip_special_tokens=True), nl=False)
    if as_json:
        typer.echo(json.dumps({"text": bot.tokenizer.decode(tokens, skip_special_tokens=True), "tokens": tokens}))
    else:
        typer.echo()


COMMANDS = [chat]
