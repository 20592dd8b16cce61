"""KNNMonitor and knn_predict against a brute-force per-query loop, on one and two processes."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_lightning import distributed
from ssl_lightning.callbacks import KNNMonitor
from ssl_lightning.datamodules import ImageFolderDataModule
from ssl_lightning.evaluation import knn_predict
from tests.helpers import SAMPLE, tiny_trainer
from tests.test_linear_probe import CountingMethod, Recorder, two_process_results


def brute_force_knn(
    queries: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, k: int, t: float
) -> list[int]:
    """InstDisc's weighted vote, one query at a time, in float64 Python arithmetic."""
    bank = F.normalize(bank.double(), dim=1)
    predictions = []
    for q in F.normalize(queries.double(), dim=1):
        sims = [(float(q @ b), int(y)) for b, y in zip(bank, bank_labels, strict=True)]
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for sim, label in sims[:k]:
            votes[label] += math.exp(sim / t)
        predictions.append(max(range(num_classes), key=lambda c: votes[c]))
    return predictions


def _data(n_bank: int = 60, n_query: int = 25, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n_query, dim, generator=g),
        torch.randn(n_bank, dim, generator=g),
        torch.randint(0, 4, (n_bank,), generator=g),
    )


@pytest.mark.parametrize(("k", "chunk_size"), [(7, 4), (200, 1024), (1, 3)])
def test_knn_predict_matches_a_per_query_loop(k: int, chunk_size: int) -> None:
    queries, bank, labels = _data()
    expected = brute_force_knn(queries, bank, labels, 4, k, 0.1)
    got = knn_predict(queries, F.normalize(bank, dim=1), labels, 4, k, 0.1, chunk_size)
    assert got.tolist() == expected


def test_monitor_accuracy_equals_brute_force_over_the_epochs_features(tmp_path: Path) -> None:
    dm = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path)
    val: list[tuple[Tensor, Tensor]] = []

    class ValRecorder(L.Callback):
        def on_validation_batch_end(self, trainer, pl_module, outputs, *args) -> None:
            val.append((outputs["features"].clone(), outputs["labels"].clone()))

    recorder = Recorder()
    knn = KNNMonitor(k=5, temperature=0.07, bank_size=40, bank="augmented")
    trainer = tiny_trainer(
        tmp_path, max_epochs=1, limit_train_batches=4, callbacks=[recorder, ValRecorder(), knn]
    )
    torch.manual_seed(0)
    trainer.fit(CountingMethod(), dm)
    # bank_size bounds the bank to the newest 40 training features.
    bank = torch.cat([f for f, _ in recorder.steps])[-40:]
    bank_labels = torch.cat([y for _, y in recorder.steps])[-40:]
    queries, labels = torch.cat([f for f, _ in val]), torch.cat([y for _, y in val])
    predicted = brute_force_knn(queries, bank, bank_labels, 10, 5, 0.07)
    expected = sum(p == y for p, y in zip(predicted, labels.tolist(), strict=True)) / len(labels)
    assert trainer.callback_metrics["knn/val_acc"].item() == pytest.approx(expected)


def test_unlabeled_training_features_stay_out_of_the_bank() -> None:
    knn = KNNMonitor(k=3, num_classes=4)
    knn.add_train(torch.randn(6, 5), torch.tensor([0, -1, 1, -1, -1, 2]))
    knn.prepare_bank(1, torch.device("cpu"))
    assert knn._bank is not None and knn._bank[1].tolist() == [0, 1, 2]
    # A label out of range is reported when the bank is prepared (not synced every step).
    knn.add_train(torch.randn(2, 5), torch.tensor([1, 9]))
    with pytest.raises(ValueError, match="num_classes=4"):
        knn.prepare_bank(1, torch.device("cpu"))


def _knn_data() -> tuple[Tensor, Tensor, Tensor]:
    queries, bank, labels = _data()
    return bank, labels, queries


def _knn_on_rank(rank: int, world_size: int, bank: Tensor, labels: Tensor, queries: Tensor):
    """Rank r holds an uneven share of the bank and every other query."""
    knn = KNNMonitor(k=7, temperature=0.1, num_classes=4, chunk_size=5)
    cuts = [0, 23, 60] if world_size == 2 else [0, 60]
    knn.add_train(bank[cuts[rank] : cuts[rank + 1]], labels[cuts[rank] : cuts[rank + 1]])
    knn.prepare_bank(world_size, torch.device("cpu"))
    query_labels = torch.arange(queries.shape[0]) % 4
    knn.score(queries[rank::world_size], query_labels[rank::world_size])
    gathered = distributed.gather_variable(torch.arange(rank * 10, rank * 10 + rank + 2))
    return knn.compute(), gathered


@pytest.mark.distributed
def test_ddp_accuracy_equals_one_process_with_the_whole_bank() -> None:
    bank, labels, queries = _knn_data()
    predicted = brute_force_knn(queries, bank, labels, 4, 7, 0.1)
    expected = sum(p == i % 4 for i, p in enumerate(predicted)) / len(predicted)
    single, _ = _knn_on_rank(0, 1, bank, labels, queries)
    assert single == pytest.approx(expected)
    for result in two_process_results():  # the spawn is shared with the probe's DDP test
        accuracy, gathered = result["knn"]
        assert accuracy == pytest.approx(expected)
        assert gathered.tolist() == [0, 1, 10, 11, 12]  # uneven sizes, rank order
