"""Evaluation: refusal detection, metrics with CIs, judges, the evaluation run, reports."""

from research.evaluation.metrics import (bootstrap_metric, harmful_score, over_refusal_rate,
                                         refusal_rate, task_accuracy)
from research.evaluation.refusal import REFUSAL_LIST_VERSION, is_refusal, refusal_list

__all__ = ["REFUSAL_LIST_VERSION", "bootstrap_metric", "harmful_score", "is_refusal",
           "over_refusal_rate", "refusal_list", "refusal_rate", "task_accuracy"]
