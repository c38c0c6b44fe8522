"""The `mlx-aimv2` command: a short dispatcher over one module per group of commands (models,
images, training, evaluation, library, serving). Each command parses its flags, calls the library
and prints; none computes with tensors. Every command's errors are one line (common.user_errors).

Imports inside functions (CONTRIBUTING: Layout): each command imports the library it calls in its own body, so that
`--version`, `--help` and a mistyped command start without loading mlx-data, the training loop or
matplotlib.
"""

from __future__ import annotations

import signal

import typer

from . import evaluation, images, library, models, serving, training, vlm
from .common import messages, user_errors

GROUPS = (models, images, training, evaluation, library, serving, vlm)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="AIMv2 vision encoders in MLX: embed images, convert checkpoints, pre-train.",
)


def _version(value: bool):
    if value:
        from .. import __version__

        typer.echo(f"mlx-aimv2 {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
):
    """AIMv2 vision encoders in MLX: embed images, convert checkpoints, pre-train."""


# --help lists them in this order
ORDER = ("doctor", "models", "convert", "embed", "classify", "data", "tokenizer", "train", "export", "probe",
         "index", "search", "dupes", "caption", "complete", "chat", "serve", "retrieval", "zeroshot")  # fmt: skip
_commands = {c.__name__: c for g in GROUPS for c in g.COMMANDS}
_subgroups = {name: sub for g in GROUPS for name, sub in getattr(g, "GROUPS", {}).items()}
for name in ORDER:
    if name in _commands:
        app.command(name)(user_errors(_commands[name]))
    else:
        about, commands = _subgroups[name]
        sub = typer.Typer(no_args_is_help=True, help=about)
        for sub_name, command in commands.items():
            sub.command(sub_name)(user_errors(command))
        app.add_typer(sub, name=name)


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
    signal.signal(signal.SIGINT, signal.default_int_handler)  # loaded: Ctrl-C is KeyboardInterrupt again
    try:
        from ..cpu import restart_with_openblas

        restart_with_openblas()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    try:
        main()
    finally:  # the command is over (done, or exiting 130): a Ctrl-C during the exit itself changes nothing
        signal.signal(signal.SIGINT, signal.SIG_IGN)
