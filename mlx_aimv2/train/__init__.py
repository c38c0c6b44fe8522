"""Training: the objectives (objectives/), the compiled step (step.py), the loop (trainer.py), its
reporter and checkpoints (snapshots.py), and run folders read back by kind (runs/).

    from mlx_aimv2.config import load_config
    from mlx_aimv2.train.trainer import Trainer
    Trainer(load_config("run.toml")).run()

Nothing is imported here, so reading a run (runs/, for export) never loads the loop.
"""
