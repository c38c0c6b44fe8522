from .cli import app

app(prog_name="mlx-aimv2")
