"""Whole jobs built from the parts: the train job (fit → evaluate → report) and the tutorial demo."""

from floranet.workflows.train import train

__all__ = ["train"]
