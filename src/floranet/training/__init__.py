"""Training: two-stage transfer learning with cached features, resumable."""

from floranet.training.run import TrainResult, train

__all__ = ["TrainResult", "train"]
