"""Training data: sources (captions files, tar shards), the synthetic set, the mlx-data stream."""
from .sources import Dataset, Sample, open_dataset
from .stream import TrainStream, fixed_batches
from .synth import write_synthetic
