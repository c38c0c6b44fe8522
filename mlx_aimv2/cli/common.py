"""What every command shares: one line per error (user_errors), the library's notes and warnings as
lines on stderr (messages), the report of skipped files, and the flags' small parsers."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import warnings
from typing import Optional

import typer

from ..errors import UserError, os_error_line
from ..errors import printable as shown
from ..writers import PICTURES, check_output

__all__ = [
    "user_errors",
    "messages",
    "shown",
    "check_output",
    "PICTURES",
    "parse_layers",
    "report_bad",
    "report_skipped",
]


def user_errors(fn):
    """A UserError ends the command with one line on stderr and exit status 1, no traceback."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except UserError as e:
            typer.echo(f"error: {shown(e)}", err=True)
            raise typer.Exit(1) from None
        except BrokenPipeError:  # `mlx-aimv2 embed ... | head -1`: the reader left; end quietly, as Unix tools do
            _stdout_to_devnull()
            raise typer.Exit(141) from None  # 128 + SIGPIPE, what a shell reports for `yes | head -1`
        except OSError as e:  # the file system refused (a full or read-only disk, a file in the way)
            typer.echo(f"error: {os_error_line(e)}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def parse_layers(layers: Optional[str]):
    if not layers:
        return None
    try:
        return tuple(int(x) for x in layers.split(","))
    except ValueError:
        raise UserError(f"--layers '{layers}': give comma-separated integers, e.g. '-1,12'") from None


def report_bad(bad: list) -> None:
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


def model_option(help: str):
    """The --model / -m option of the commands that default to a published model (help names the default)."""
    return typer.Option(None, "--model", "-m", show_default=False, help=help)


def typed_command(ctx) -> str:
    """The running command (its typer.Context) as a user would type it: its name, its arguments, the
    options given away from their defaults (for a model card's "made with")."""
    import shlex

    words = [ctx.command_path.split(" ", 1)[-1] if " " in ctx.command_path else ctx.info_name]
    for p in ctx.command.params:
        value = ctx.params.get(p.name)
        if p.param_type_name == "argument":
            words += [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        elif value != p.default and value is not None and p.opts:
            flag = max(p.opts, key=len)
            words += [flag] if isinstance(value, bool) else [flag, str(value)]
    return "mlx-aimv2 " + shlex.join(words)


def _stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit has nowhere to fail."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (a test runner's buffer)
        pass


def report_skipped(errors: list, done: int) -> None:
    """The files a command skipped, at the end, each with its reason; exit 2 when some were done
    (a partial run), 1 when none."""
    if not errors:
        return
    typer.echo(f"skipped {len(errors)} file(s):", err=True)
    for p, why in errors:
        typer.echo(f"  {why if str(p) in why else f'{p}: {why}'}", err=True)
    raise typer.Exit(1 if not done else 2)


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
