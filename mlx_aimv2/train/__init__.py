"""Pre-training: config, optimiser, the compiled step, checkpoints, the loop."""
from .config import TrainConfig, load_config
from .trainer import Trainer, export_run

__all__ = ["TrainConfig", "load_config", "Trainer", "export_run"]
