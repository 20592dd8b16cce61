"""Fast frozen evaluation: the backbone's features of the clean images, computed once, then a
linear classifier and a kNN classifier fitted on them, in seconds on a CPU.

The features of every train and test image are extracted once (batched, no augmentation, the
backbone in eval mode). The linear classifier is a multinomial logistic regression on
standardized features, fitted full-batch with L-BFGS; its L2 weight decay is chosen from a small
sweep on a stratified held-out share of the training features, then refitted on all of them.
The kNN classifier (k=200, T=0.1, Wu et al. 2018) votes with the L2-normalized features.

This is the protocol of the benchmarks and of quick checks; the augmented, epoch-based
protocol of the papers is :class:`~ssl_lightning.evaluation.LinearEvaluation`.
:func:`evaluate_stages` runs it on a datamodule's splits for several stage selections (what
``ssl-lightning evaluate`` prints).

Examples:
    >>> result = frozen_evaluation(backbone, train_images, train_labels, test_images,
    ...                            test_labels, mean, std)  # doctest: +SKIP
    >>> result.linear_top1, result.knn_top1  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ssl_lightning.backbones.stages import Stages, resolve_stages, stage_features, stage_widths
from ssl_lightning.corruptions import normalize, to_unit_float
from ssl_lightning.knn import knn_predict
from ssl_lightning.labels import has_top5
from ssl_lightning.layers import eval_mode
from ssl_lightning.splits import stratified_holdout

if TYPE_CHECKING:  # it reads a datamodule's splits; importing the datamodules is not needed
    from ssl_lightning.datamodules import InMemoryDataModule

__all__ = [
    "FrozenResult",
    "evaluate_features",
    "evaluate_stages",
    "extract_features",
    "fit_linear_classifier",
    "frozen_evaluation",
    "stage_label",
]

WEIGHT_DECAYS = (0.0, 1e-5, 1e-4, 1e-3, 1e-2)


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
    progress: bool = False,
    stages: Stages = "last",
) -> Tensor:
    """Pooled features ``[N, D]`` (float32, CPU) of uint8 images ``[N, 3, H, W]``.

    The images are normalized with ``mean``/``std`` and run through ``backbone`` in eval mode
    on the backbone's device, ``batch_size`` at a time; the backbone's mode is restored.
    ``stages`` selects the pooled stages (:func:`~ssl_lightning.backbones.stage_features`).
    """
    device = next(backbone.parameters()).device
    with eval_mode(backbone):
        chunks = []
        batches = images.split(batch_size)
        for batch in tqdm(batches, desc="features", unit="batch", disable=not progress):
            x = to_unit_float(batch.to(device))  # [b, 3, H, W], a new tensor
            x = normalize(x, tuple(mean), tuple(std), inplace=True)
            chunks.append(stage_features(backbone, x, stages).float().cpu())
        return torch.cat(chunks)


@dataclass
class LinearClassifier:
    """A fitted linear classifier on standardized features: ``((x - mean) / std) @ W^T + b``."""

    mean: Tensor  # [D]
    std: Tensor  # [D]
    weight: Tensor  # [C, D]
    bias: Tensor  # [C]
    weight_decay: float

    def logits(self, features: Tensor) -> Tensor:
        """``[N, D] -> [N, C]``."""
        return ((features - self.mean) / self.std) @ self.weight.T + self.bias


def _fit(x: Tensor, y: Tensor, num_classes: int, weight_decay: float, steps: int) -> nn.Linear:
    """Logistic regression on standardized ``x`` with an L2 penalty on the weight (L-BFGS)."""
    linear = nn.Linear(x.shape[1], num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(
        linear.parameters(), lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(x), y) + 0.5 * weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return linear


def fit_linear_classifier(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    weight_decays: Sequence[float] = WEIGHT_DECAYS,
    holdout: float = 0.1,
    steps: int = 100,
    seed: int = 0,
) -> LinearClassifier:
    """Fits a linear classifier on ``features [N, D]`` with ``labels [N]`` (all labeled).

    Each weight decay of ``weight_decays`` is fitted on ``1 - holdout`` of the samples
    (stratified by class, chosen by ``seed``) and scored on the rest; the best one is refitted
    on all samples.
    """
    features = features.float()
    mean = features.mean(dim=0)
    std = features.std(dim=0).clamp_min(1e-6)  # constant features stay finite
    x = (features - mean) / std  # [N, D]
    best = weight_decays[0]
    if len(weight_decays) > 1:
        keep, held = stratified_holdout(labels, holdout, seed)
        scores = []
        for weight_decay in weight_decays:
            linear = _fit(x[keep], labels[keep], num_classes, weight_decay, steps)
            with torch.no_grad():
                predicted = linear(x[held]).argmax(dim=1)
            scores.append(float((predicted == labels[held]).float().mean()))
        best = weight_decays[max(range(len(scores)), key=scores.__getitem__)]
    linear = _fit(x, labels, num_classes, best, steps)
    return LinearClassifier(mean, std, linear.weight.detach(), linear.bias.detach(), best)


@dataclass
class FrozenResult:
    """Frozen-feature accuracies on the test images (fractions in ``[0, 1]``)."""

    linear_top1: float
    linear_top5: float  # NaN with 5 classes or fewer, where every label is in the top 5
    knn_top1: float
    weight_decay: float  # chosen for the linear classifier


def frozen_evaluation(
    backbone: nn.Module,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
    k: int = 200,
    temperature: float = 0.1,
    progress: bool = False,
    stages: Stages = "last",
) -> FrozenResult:
    """Linear and kNN accuracy of ``backbone``'s frozen features of clean images.

    Args:
        backbone: a backbone (pooled ``forward``); evaluated in eval mode on its own device.
        train_images: ``[N, 3, H, W]`` uint8 images the classifiers are fitted on.
        train_labels: ``[N]`` int64 labels in ``[0, C)``.
        test_images: ``[M, 3, H, W]`` uint8 images they are scored on.
        test_labels: ``[M]`` int64 labels.
        mean: per-channel normalization mean (the datamodule's).
        std: per-channel normalization std.
        batch_size: images per backbone pass.
        k: kNN neighbours.
        temperature: kNN vote temperature.
        progress: show a progress bar over the feature extraction.
        stages: the backbone stages whose pooled features are evaluated: ``"last"`` (the
            pooled output), ``"all"`` (every stage, concatenated) or stage indices.
    """
    train_x = extract_features(backbone, train_images, mean, std, batch_size, progress, stages)
    test_x = extract_features(backbone, test_images, mean, std, batch_size, progress, stages)
    return evaluate_features(train_x, train_labels, test_x, test_labels, k, temperature)


def evaluate_features(
    train_x: Tensor,
    train_labels: Tensor,
    test_x: Tensor,
    test_labels: Tensor,
    k: int = 200,
    temperature: float = 0.1,
) -> FrozenResult:
    """The linear and kNN classifiers of :func:`frozen_evaluation` on features already
    extracted: ``train_x [N, D]`` with ``train_labels [N]``, scored on ``test_x [M, D]``."""
    num_classes = int(train_labels.max()) + 1
    classifier = fit_linear_classifier(train_x, train_labels, num_classes)
    logits = classifier.logits(test_x)  # [M, C]
    linear_top5 = math.nan
    if has_top5(num_classes):
        top5 = logits.topk(5, dim=1).indices  # [M, 5]
        linear_top5 = float((top5 == test_labels[:, None]).any(dim=1).float().mean())
    bank = F.normalize(train_x, dim=1)
    knn = knn_predict(test_x, bank, train_labels, num_classes, k=k, temperature=temperature)
    return FrozenResult(
        linear_top1=float((logits.argmax(dim=1) == test_labels).float().mean()),
        linear_top5=linear_top5,
        knn_top1=float((knn == test_labels).float().mean()),
        weight_decay=classifier.weight_decay,
    )


def stage_label(stages: Stages) -> str:
    """``"last"``, ``"all"`` or ``"stage<i>"``: how a stage selection is named in results."""
    return stages if isinstance(stages, str) else f"stage{stages}"


def evaluate_stages(
    backbone: nn.Module,
    data: InMemoryDataModule,
    stages: tuple[Stages, ...] = ("last",),
    progress: bool = False,
) -> dict[str, FrozenResult]:
    """Frozen evaluation of ``backbone`` for each stage selection, keyed by
    :func:`stage_label`: fitted on ``data``'s training split, scored on its validation split
    (the dataset's test split unless ``val_fraction`` holds one out of the training images).

    The pooled features of every stage are extracted once and sliced for each selection other
    than ``"last"`` (the backbone's own pooled output, extracted on its own).
    """
    data.setup("fit")
    train, test = data.train_set, data.val_set
    if train is None or test is None:
        raise ValueError(
            f"{type(data).__name__} has no test split to score on (an image folder needs "
            "data_dir/test/ or data_dir/val/); hold out part of the training images with "
            "--val-fraction 0.1"
        )

    def extract(selection: Stages) -> tuple[Tensor, Tensor]:
        return tuple(  # type: ignore[return-value]
            extract_features(backbone, split.images, data.mean, data.std, 512, progress, selection)
            for split in (train, test)
        )

    every_stage: tuple[Tensor, Tensor] | None = None  # "all", extracted at most once
    starts: list[int] = []  # first column of each stage in it
    results = {}
    for selection in stages:
        if selection == "last":
            train_x, test_x = extract("last")
        else:
            if every_stage is None:
                every_stage = extract("all")
                widths = stage_widths(backbone, train.images[:1].float())
                starts = [sum(widths[:i]) for i in range(len(widths) + 1)]
            indices = resolve_stages(selection, len(starts) - 1)
            columns = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in indices])
            train_x, test_x = (x[:, columns] for x in every_stage)
        results[stage_label(selection)] = evaluate_features(
            train_x, train.labels, test_x, test.labels
        )
    return results
