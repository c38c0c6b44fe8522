"""Vision-language models on this package's AIMv2 encoder: Ovis2 (AIDC-AI), its visual tokenizer
from models/visual_tokenizer.py and its Qwen2 language model from mlx-lm (pip install
'mlx-aimv2[vlm]'). Nothing is imported here: mlx-lm loads only when a VLM is used (extra.py)."""
