"""Evaluation: metrics, calibration, plots, Grad-CAM and the report, all views of one :class:`Evaluation`."""

from floranet.evaluation.evaluation import Evaluation, evaluate_run, read_evaluation, write_evaluation

__all__ = ["Evaluation", "evaluate_run", "read_evaluation", "write_evaluation"]
