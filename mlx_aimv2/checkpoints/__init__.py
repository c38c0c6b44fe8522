"""Checkpoints, in one package: what "a checkpoint" is, read, converted and written.

    files.py     the files a checkpoint is (a folder, a weight file, shards and their index, a pickle)
    layouts.py   every foreign key layout (ml-aim, Apple's MLX file, transformers, timm, PEFT's LoRA)
                 as a table onto ml-aim's names, read both ways, and the sanitize that applies it
    configs.py   the architecture from the tensors' shapes, and what a config.json adds
    mlx_io.py    MLX's own folders: weights whole or in shards, config.json, the card, saved whole
    load.py      name -> local files -> layout -> module: load_checkpoint, the walk `load()` takes
    export.py    convert, and export to MLX, transformers or PEFT
    ovis2.py     Ovis2 folders (AIDC-AI's original layout, transformers', ours): read, converted, quantized;
                 it needs mlx-lm, so it is imported through vlm/extra.py

Nothing is imported here, so reading a checkpoint never loads the exporters.
"""
