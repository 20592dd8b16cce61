"""Fast frozen evaluation: features once, a linear classifier at its optimum, kNN."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssl_lightning import create_backbone
from ssl_lightning.corruptions import normalize
from ssl_lightning.evaluation import (
    extract_features,
    fit_linear_classifier,
    frozen_evaluation,
    knn_predict,
)

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)


def test_features_are_the_eval_mode_backbone_of_normalized_images() -> None:
    backbone = create_backbone("convnet", width=4).train()
    images = _images(10)
    features = extract_features(backbone, images, MEAN, STD, batch_size=4)
    assert backbone.training  # the mode is restored
    with torch.no_grad():
        expected = backbone.eval()(normalize(images.float() / 255, MEAN, STD))
    torch.testing.assert_close(features, expected)


def test_features_of_chosen_stages_are_their_pooled_maps() -> None:
    backbone = create_backbone("convnet", width=4, depth=3)
    images = _images(6)
    with torch.no_grad():
        x = normalize(images.float() / 255, MEAN, STD)
        first = backbone.eval().features[:4](x)  # block 0 by hand
        second = backbone.features[4:8](first)
    features = extract_features(backbone, images, MEAN, STD, batch_size=4, stages=[0, 1])
    expected = torch.cat([first.mean(dim=(2, 3)), second.mean(dim=(2, 3))], dim=1)  # [6, 12]
    torch.testing.assert_close(features, expected)
    assert extract_features(backbone, images, MEAN, STD, stages="all").shape == (6, 4 + 8 + 16)


def test_linear_classifier_reaches_the_optimum_of_its_objective() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g) * torch.tensor([1.0, 5.0, 0.1, 2.0, 1.0, 3.0]) + 2.0
    y = (x[:, 0] + x[:, 2] * 10 > 2.0).long() + (x[:, 1] > 2.0).long()  # 3 classes
    weight_decay = 1e-3
    clf = fit_linear_classifier(x, y, 3, weight_decays=[weight_decay], steps=200)
    # Optimality: the gradient of mean cross-entropy + wd/2 |W|^2 vanishes at the solution.
    w = clf.weight.clone().requires_grad_(True)
    b = clf.bias.clone().requires_grad_(True)
    z = (x - x.mean(0)) / x.std(0)
    loss = F.cross_entropy(z @ w.T + b, y) + 0.5 * weight_decay * w.square().sum()
    grad_w, grad_b = torch.autograd.grad(loss, [w, b])
    assert grad_w.abs().max() < 1e-4 and grad_b.abs().max() < 1e-4
    assert (clf.logits(x).argmax(1) == y).float().mean() > 0.9


def test_weight_decay_is_chosen_on_held_out_samples() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 50, generator=g)
    y = (x[:, 0] > 0).long()  # one informative feature among 50
    clf = fit_linear_classifier(x, y, 2, weight_decays=[0.0, 1e-2, 1e3])
    assert clf.weight_decay in (0.0, 1e-2)  # 1e3 flattens the classifier to chance


def test_frozen_evaluation_scores_linear_and_knn() -> None:
    backbone = create_backbone("convnet", width=4)
    train, test = _images(60, 0), _images(20, 1)
    train_labels = torch.arange(60) % 3
    test_labels = torch.arange(20) % 3
    result = frozen_evaluation(backbone, train, train_labels, test, test_labels, MEAN, STD, k=5)
    train_x = extract_features(backbone, train, MEAN, STD)
    test_x = extract_features(backbone, test, MEAN, STD)
    knn = knn_predict(test_x, F.normalize(train_x, dim=1), train_labels, 3, k=5)
    assert result.knn_top1 == float((knn == test_labels).float().mean())
    assert math.isnan(result.linear_top5)  # 3 classes: all in the top 5, so not reported
    assert 0.0 <= result.linear_top1 <= 1.0


def test_knn_votes_stay_finite_at_tiny_temperatures() -> None:
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(50, 8, generator=g), dim=1)
    labels = torch.arange(50) % 4
    queries = torch.randn(10, 8, generator=g)
    for temperature in (0.005, 0.001):
        predicted = knn_predict(queries, bank, labels, 4, k=10, temperature=temperature)
        sim = F.normalize(queries.double(), dim=1) @ bank.double().T  # reference in float64
        top, idx = sim.topk(10, dim=1)
        votes = torch.zeros(10, 4, dtype=torch.float64)
        votes.scatter_add_(1, labels[idx], ((top - top[:, :1]) / temperature).exp())
        assert torch.equal(predicted, votes.argmax(1))
