"""Inference: running a model over images (runtime choice, the one files → outputs path, the predictor)."""

from floranet.inference.predictor import Prediction, Predictor, load

__all__ = ["Prediction", "Predictor", "load"]
