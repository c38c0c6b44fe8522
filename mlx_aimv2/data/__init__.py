"""Training data: sources (captions files, tar shards), the synthetic set, the mlx-data stream."""

from .sources import Dataset, Sample, find_sources, open_dataset
from .stream import TrainStream, mirror_caption
from .synth import write_synthetic

__all__ = ["Dataset", "Sample", "find_sources", "open_dataset", "TrainStream", "mirror_caption", "write_synthetic"]
