"""Pre-training: config, optimiser, the compiled step, checkpoints, the loop."""

from .config import TrainConfig, build_config, load_config, read_config

__all__ = ["TrainConfig", "build_config", "load_config", "read_config", "Trainer", "export_run"]


def __getattr__(name: str):
    # the loop (and mlx-data, the optimisers) load when used, so the CLI starts without them
    if name in ("Trainer", "export_run"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
