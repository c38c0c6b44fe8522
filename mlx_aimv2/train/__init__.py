"""Pre-training: config, optimiser, the compiled step, checkpoints, the loop."""
from .config import TrainConfig, build_config, load_config, read_config
from .trainer import Trainer, export_run

__all__ = ["TrainConfig", "build_config", "load_config", "read_config", "Trainer", "export_run"]
