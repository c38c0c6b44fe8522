"""`python -m mlx_aimv2` is the `mlx-aimv2` command, restart included."""

from .cli import console

console()
