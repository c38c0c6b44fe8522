"""A training run's folder, written and read in this package alone: its checkpoints and lock
(snapshots.py, which the trainer writes through), and, by kind (kinds.run_kind: pre-training, LiT
tuning, fine-tuning), what it trained read back as models and the model folder it exports to.
`export`, `caption`, the CLI and the objectives ask here; nothing here runs the training loop, and
nothing outside the trainer imports the loop's package for a run folder."""

from .classifier import classifier_run, save_classifier
from .common import add_run_lora, encoder_preprocessor, is_run, newest
from .lit import frozen_encoder, lit_module, lit_preprocessor, lit_tokenizer_files, load_lit, load_tuner, save_lit
from .pretraining import (
    DECODER,
    DECODER_WEIGHTS,
    load_captioner,
    load_encoder,
    load_pretrainer,
    save_decoder,
    save_encoder,
)
from .result import export_run, trained_model

__all__ = [
    "DECODER", "DECODER_WEIGHTS", "add_run_lora", "classifier_run", "encoder_preprocessor",
    "export_run", "frozen_encoder", "is_run", "lit_module", "lit_preprocessor", "lit_tokenizer_files", "load_captioner",
    "load_encoder", "load_lit", "load_pretrainer", "load_tuner", "newest", "save_classifier", "save_decoder",
    "save_encoder", "save_lit", "trained_model",
]  # fmt: skip
