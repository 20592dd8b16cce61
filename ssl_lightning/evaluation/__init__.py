"""Evaluating a learned backbone: the linear protocol as a LightningModule
(:class:`LinearEvaluation`), fast frozen evaluation on cached features
(:func:`frozen_evaluation`: a linear classifier and a kNN classifier, no Trainer), and
fine-tuning for a fixed number of steps against the same recipe from scratch
(:func:`fine_tune`)."""

from ssl_lightning.evaluation.finetune import FineTuneResult, fine_tune
from ssl_lightning.evaluation.frozen import (
    FrozenResult,
    evaluate_stages,
    extract_features,
    fit_linear_classifier,
    frozen_evaluation,
    stage_label,
)
from ssl_lightning.evaluation.linear import LinearEvaluation
from ssl_lightning.knn import knn_predict

__all__ = [
    "FineTuneResult",
    "FrozenResult",
    "LinearEvaluation",
    "evaluate_stages",
    "extract_features",
    "fine_tune",
    "fit_linear_classifier",
    "frozen_evaluation",
    "knn_predict",
    "stage_label",
]
