"""Training: the objectives (objectives/), the compiled step (step.py), the loop (trainer.py) and its
reporter. The run folder it writes - checkpoints, the lock, the models read back - is mlx_aimv2.runs.

    from mlx_aimv2.config import load_config
    from mlx_aimv2.train.trainer import Trainer
    Trainer(load_config("run.toml")).run()

Nothing is imported here.
"""
