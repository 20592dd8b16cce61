"""Validation numbers that mean what they say: every prefix of the validation set (so any
``limit_val_batches``) is a fixed class-balanced sample, an untrained probe logs nothing,
top-1 never exceeds top-5, a run without validation says how to get one, and the kNN
monitor's clean-image bank against the augmented one."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import Tensor

from ssl_lightning.callbacks import KNNMonitor, OnlineLinearProbe
from ssl_lightning.corruptions import normalize
from ssl_lightning.datamodules import ImageFolderDataModule
from ssl_lightning.splits import class_interleaved
from tests.helpers import SAMPLE, tiny_trainer
from tests.test_knn import brute_force_knn
from tests.test_linear_probe import CountingMethod, SyntheticDataModule


def _assert_every_prefix_balanced(labels: Tensor) -> None:
    """Each class within one row of its share ``m * n_c / N`` in every prefix of length m."""
    classes, counts = torch.unique(labels, return_counts=True)
    n = labels.shape[0]
    for m in range(1, n + 1):
        prefix = labels[:m]
        for c, n_c in zip(classes.tolist(), counts.tolist(), strict=True):
            share = m * n_c / n
            assert abs(int((prefix == c).sum()) - share) < 1, (m, c)


def test_class_interleaved_order_is_a_seeded_balanced_permutation() -> None:
    # Sorted by class, unequal class sizes, unlabeled rows: as a folder lists them.
    labels = torch.tensor([-1] * 5 + [0] * 20 + [1] * 7 + [2] * 13 + [3] * 1)
    order = class_interleaved(labels, seed=3)
    assert sorted(order.tolist()) == list(range(labels.shape[0]))
    _assert_every_prefix_balanced(labels[order])
    assert torch.equal(order, class_interleaved(labels, seed=3))
    assert not torch.equal(order, class_interleaved(labels, seed=4))


def _first_batch_labels(data: ImageFolderDataModule) -> list[int]:
    data.setup("fit")
    return next(iter(data.val_dataloader()))[1].tolist()


def test_a_validation_prefix_scores_every_class(tmp_path: Path) -> None:
    # The sample's test/ folder: 3 images of each of 10 classes, listed class by class. One
    # batch of 10 (limit_val_batches=1) used to score 3 airplanes, 3 cars, 3 birds, 1 cat.
    data = ImageFolderDataModule(SAMPLE, batch_size=10, cache_dir=tmp_path)
    assert sorted(_first_batch_labels(data)) == list(range(10))
    assert data.val_set is not None
    _assert_every_prefix_balanced(data.val_set.labels)
    again = ImageFolderDataModule(SAMPLE, batch_size=10, cache_dir=tmp_path)
    assert _first_batch_labels(again) == _first_batch_labels(data)  # fixed
    other = ImageFolderDataModule(SAMPLE, batch_size=10, cache_dir=tmp_path, split_seed=1)
    assert _first_batch_labels(other) != _first_batch_labels(data)  # seeded


def test_a_held_out_validation_prefix_is_balanced_too(tmp_path: Path) -> None:
    data = ImageFolderDataModule(SAMPLE, batch_size=10, cache_dir=tmp_path, val_fraction=0.25)
    assert sorted(_first_batch_labels(data)) == list(range(10))
    assert data.val_set is not None
    _assert_every_prefix_balanced(data.val_set.labels)


def test_an_untrained_probe_logs_nothing_and_warns(tmp_path: Path) -> None:
    data = ImageFolderDataModule(SAMPLE, batch_size=10, cache_dir=tmp_path)
    trainer = tiny_trainer(tmp_path, callbacks=[OnlineLinearProbe()], limit_val_batches=1)
    with pytest.warns(UserWarning, match="OnlineLinearProbe has not trained"):
        trainer.validate(CountingMethod(), data, verbose=False)
    assert not [k for k in trainer.callback_metrics if k.startswith("probe/")]


def test_top1_never_exceeds_top5_even_with_ties() -> None:
    # A zero head ties every class: top-1 and top-5 must come from one ranking. A subset of
    # one class (the first batches of a validation set stored class by class) used to score
    # top-1 1.0 and top-5 0.0 (argmax and topk break ties differently).
    for label in range(10):
        probe = OnlineLinearProbe(num_classes=10)
        probe.trained = True
        probe.update_val(torch.randn(4, 6), torch.full((4,), label))
        values = probe.compute_val()
        assert values["val_acc_top1"] <= values["val_acc_top5"], label


def test_no_validation_split_warns_how_to_get_one(tmp_path: Path) -> None:
    data = SyntheticDataModule([0, 1, 2, 3] * 4)  # no validation split
    for callback in (OnlineLinearProbe(), KNNMonitor(k=3)):
        trainer = tiny_trainer(tmp_path, max_steps=1, callbacks=[callback])
        name = type(callback).__name__
        with pytest.warns(UserWarning, match=f"{name}: there is no validation split.*val_fraction"):
            trainer.fit(CountingMethod(), data)


def test_knn_bank_of_clean_images_against_the_augmented_views(tmp_path: Path) -> None:
    """Both banks on one run. The clean bank equals the kNN of the validation features
    against the backbone's features of the clean training images, computed here directly;
    the augmented bank holds the epoch's step features (its own test is in test_knn.py)."""
    data = ImageFolderDataModule(SAMPLE, batch_size=10, cache_dir=tmp_path, seed=0)
    clean = KNNMonitor(k=10, temperature=0.1, bank_size=None, prefix="knn_clean")
    augmented = KNNMonitor(
        k=10, temperature=0.1, bank_size=None, prefix="knn_aug", bank="augmented"
    )
    queries: list[tuple[Tensor, Tensor]] = []

    class Queries(L.Callback):
        def on_validation_batch_end(self, trainer, pl_module, outputs, *args) -> None:
            queries.append((outputs["features"].clone(), outputs["labels"].clone()))

    model = CountingMethod()
    trainer = tiny_trainer(tmp_path, max_epochs=2, callbacks=[clean, augmented, Queries()])
    torch.manual_seed(0)
    trainer.fit(model, data)
    assert data.train_set is not None
    model.eval()
    with torch.no_grad():
        images = normalize(data.train_set.images.float() / 255, data.mean, data.std)
        bank = model.backbone(images)
    features = torch.cat([f for f, _ in queries[-3:]])  # the last validation's 30 queries
    labels = torch.cat([y for _, y in queries[-3:]])
    predicted = brute_force_knn(features, bank, data.train_set.labels, 10, 10, 0.1)
    expected = sum(p == y for p, y in zip(predicted, labels.tolist(), strict=True)) / 30
    metrics = trainer.callback_metrics
    assert metrics["knn_clean/val_acc"].item() == pytest.approx(expected)
    # Reported side by side so the difference between the two banks is visible (pytest -s).
    print(
        f"kNN top-1, clean bank {metrics['knn_clean/val_acc'].item():.3f}, augmented bank "
        f"{metrics['knn_aug/val_acc'].item():.3f}"
    )
