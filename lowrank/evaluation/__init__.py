"""Evaluation of a model on a task: quality, size and latency, one module each, and :func:`evaluate` of all three."""

from lowrank.evaluation.evaluation import Evaluation, evaluate

__all__ = ["Evaluation", "evaluate"]
