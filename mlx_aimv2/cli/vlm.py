"""chat: ask an Ovis2 model about images (the vlm extra)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError
from ..vlm.extra import chat_class


def chat(
    image: str = typer.Argument(..., help="the image to ask about"),
    question: str = typer.Argument(..., help="what to ask"),
    more: List[str] = typer.Option([], "--image", "-i", help="another image in the same prompt (repeatable)"),
    model: str = typer.Option(
        ..., "--model", "-m", help="an Ovis2 folder (transformers' layout, or one `convert` wrote) or its hub id"
    ),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="the most tokens the answer may take"),
    temp: float = typer.Option(0.0, "--temp", min=0.0, help="sampling temperature; 0 is greedy"),
    top_p: float = typer.Option(1.0, "--top-p", help="sample from the smallest set of tokens holding this mass"),
    seed: Optional[int] = typer.Option(None, "--seed", help="make a sampled answer repeatable"),
    as_json: bool = typer.Option(False, "--json", help='print {"text": ..., "tokens": [ids]} at the end'),
):
    """Ask an Ovis2 vision-language model (AIMv2 as its eyes) about images; the answer streams."""
    images = [image, *more]
    for picture in images:
        if not Path(picture).is_file():  # before the model loads: a typo costs no wait
            raise UserError(f"{picture}: no such image file")
    bot = chat_class()(model)
    tokens = []
    for piece in bot.stream(question, images, max_tokens, temp, top_p, seed):
        tokens.append(piece.token)
        if not as_json:
            typer.echo(piece.text, nl=False)
    if as_json:
        typer.echo(json.dumps({"text": bot.tokenizer.decode(tokens, skip_special_tokens=True), "tokens": tokens}))
    else:
        typer.echo()


COMMANDS = [chat]
