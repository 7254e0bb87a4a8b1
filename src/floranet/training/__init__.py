"""Training: two-stage transfer learning with cached features, resumable, optionally distributed."""

from floranet.training.trainer import Predictions, TrainResult, fit

__all__ = ["Predictions", "TrainResult", "fit"]
