"""RankMe and the embedding std against numpy's float64 formulas, on collapsed and healthy
embeddings, on one and two processes, and as callbacks in short runs."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from torch import Tensor

from ssl_lightning import SimCLR
from ssl_lightning.callbacks import EmbeddingStd, RankMe
from ssl_lightning.cli import main
from ssl_lightning.collapse import embedding_std, rankme
from ssl_lightning.datamodules import ImageFolderDataModule
from tests.distributed_utils import run_distributed
from tests.helpers import SAMPLE, tiny_trainer
from tests.test_linear_probe import CountingMethod, Recorder


def reference_rankme(z: Tensor, eps: float = 1e-7) -> float:
    """The paper's formula in numpy float64: exp of the entropy of sigma / ||sigma||_1 + eps."""
    sigma = np.linalg.svd(z.double().numpy(), compute_uv=False)
    p = sigma / sigma.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def reference_std(z: Tensor, threshold: float = 0.1) -> tuple[float, float]:
    """numpy's unbiased per-column std of the L2-normalized rows: its mean, and the share of
    columns below threshold / sqrt(D)."""
    x = z.double().numpy()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    std = x.std(axis=0, ddof=1)
    return float(std.mean()), float((std < threshold / math.sqrt(x.shape[1])).mean())


def _gaussian(n: int = 4000, d: int = 32, seed: int = 0) -> Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_rankme_of_a_healthy_embedding_is_close_to_its_width() -> None:
    z = _gaussian()
    value = rankme(z).item()
    assert value == pytest.approx(reference_rankme(z), rel=1e-10)
    assert 31 < value <= 32  # isotropic with N >> D: nearly equal singular values


def test_rankme_of_a_collapsed_embedding_is_one() -> None:
    z = torch.randn(1, 64).expand(500, 64)  # every row the same
    value = rankme(z).item()
    assert value == pytest.approx(reference_rankme(z), rel=1e-10)
    assert value == pytest.approx(1.0, abs=1e-3)  # the eps terms add 63 * 1.6e-6
    assert rankme(torch.zeros(10, 4)).item() == 0  # no direction at all


def test_rankme_counts_the_directions_of_a_low_rank_embedding() -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3000, 5, generator=g) @ torch.randn(5, 48, generator=g)  # rank 5 in 48 dims
    value = rankme(z).item()
    assert value == pytest.approx(reference_rankme(z), rel=1e-8)
    assert 3 < value < 5.01


def test_embedding_std_of_healthy_and_collapsed_embeddings() -> None:
    z = _gaussian()
    std, collapsed = embedding_std(z)
    assert (std.item(), collapsed.item()) == pytest.approx(reference_std(z), rel=1e-10)
    assert std.item() == pytest.approx(1 / math.sqrt(32), rel=0.02)
    assert collapsed.item() == 0
    std, collapsed = embedding_std(torch.randn(1, 32).expand(100, 32))
    assert std.item() == pytest.approx(0.0, abs=1e-12)
    assert collapsed.item() == 1


def test_embedding_std_counts_the_collapsed_dimensions() -> None:
    z = _gaussian()
    z[:, :8] = 3.0  # a quarter of the dimensions constant before normalization: nearly so after
    std, collapsed = embedding_std(z, threshold=0.3)
    assert (std.item(), collapsed.item()) == pytest.approx(reference_std(z, 0.3), rel=1e-10)
    assert collapsed.item() == 0.25


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: rankme(torch.zeros(3)), r"embeddings \[N, D\], got shape \(3,\)"),
        (lambda: embedding_std(torch.zeros(1, 4)), "at least 2 rows over all ranks, got 1"),
        (lambda: embedding_std(torch.zeros(4, 4), threshold=-1), "threshold must be >= 0"),
        (lambda: RankMe(max_samples=1), "max_samples must be >= 2 or None, got 1"),
        (lambda: RankMe(head="projector", stages="all"), "set stages='last' or head=None"),
        (lambda: EmbeddingStd(every_n_train_steps=0), "every_n_train_steps must be >= 1"),
        (lambda: RankMe(max_samples=None, every_n_train_steps=5), "set max_samples"),
    ],
)
def test_bad_arguments_name_the_value(call: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


CUTS = {"uneven": [0, 23, 60], "empty_rank": [0, 60, 60]}


def _monitors_on_rank(rank: int, world_size: int, cuts: list[int], max_samples: int | None):
    """Rank r feeds rows cuts[r]:cuts[r+1] of one embedding, in batches of 7, to both monitors."""
    z = _gaussian(60, 16, seed=2)
    z[:, :4] = 1.0
    share = z[cuts[rank] : cuts[rank + 1]] if world_size > 1 else z
    values = {}
    for monitor in (RankMe(max_samples=max_samples), EmbeddingStd(max_samples=max_samples)):
        for rows in share.split(7):
            outputs = {"features": rows, "labels": torch.zeros(rows.shape[0], dtype=torch.long)}
            monitor.add(None, outputs, None, "validation_step", world_size)
        values.update(monitor.compute(world_size))
    return values


def _ddp_worker(rank: int, world_size: int) -> dict[str, Any]:
    return {
        (name, cap): _monitors_on_rank(rank, world_size, cuts, cap)
        for name, cuts in CUTS.items()
        for cap in (None, 30)
    }


@pytest.mark.distributed
def test_two_processes_equal_one_process_over_the_same_rows() -> None:
    z = _gaussian(60, 16, seed=2)
    z[:, :4] = 1.0
    results = run_distributed(_ddp_worker, 2)
    for (name, cap), got in results[0].items():
        cuts = CUTS[name]
        # Each rank keeps its first ceil(cap / 2) rows.
        keep = [z[a:b][: None if cap is None else cap // 2] for a, b in itertools.pairwise(cuts)]
        rows = torch.cat(keep)
        expected = {"rankme": reference_rankme(rows)}
        expected["std"], expected["collapsed_dims"] = reference_std(rows)
        assert got == pytest.approx(expected, rel=1e-10), (name, cap)
        assert results[1][(name, cap)] == got  # every rank logs the same numbers
        if cap is None:
            assert got == pytest.approx(_monitors_on_rank(0, 1, cuts, None), rel=1e-12)


class ValRecorder(L.Callback):
    def __init__(self) -> None:
        self.features: list[Tensor] = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, *args) -> None:
        self.features.append(outputs["features"].clone())


def test_callbacks_log_the_validation_rows_statistics(tmp_path: Path) -> None:
    dm = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path)
    recorder = ValRecorder()
    monitors = [RankMe(), RankMe(head="projector", prefix="proj"), EmbeddingStd()]
    trainer = tiny_trainer(
        tmp_path, max_epochs=1, limit_train_batches=2, callbacks=[recorder, *monitors]
    )
    torch.manual_seed(0)
    model = SimCLR(backbone="convnet", backbone_kwargs={"width": 8}, proj_hidden_dim=32)
    trainer.fit(model, dm)
    features = torch.cat(recorder.features)  # [N, D]
    model.eval()
    with torch.no_grad():
        projections = model.projector(features)  # [N, 128]
    metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
    assert metrics["collapse/val_rankme"] == pytest.approx(reference_rankme(features), rel=1e-6)
    assert metrics["proj/val_rankme"] == pytest.approx(reference_rankme(projections), rel=1e-6)
    std, collapsed = reference_std(features)
    assert metrics["collapse/val_std"] == pytest.approx(std, rel=1e-6)
    assert metrics["collapse/val_collapsed_dims"] == pytest.approx(collapsed)

    trainer.test(model, dm)
    assert "test/collapse_rankme" in trainer.callback_metrics
    assert "test/collapse_std" in trainer.callback_metrics


@pytest.mark.parametrize("limit_val_batches", [0, 1], ids=["no-validation", "validation"])
def test_every_n_train_steps_logs_the_newest_step_features(
    tmp_path: Path, limit_val_batches: int
) -> None:
    dm = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path)
    recorder = Recorder()
    monitor = RankMe(max_samples=40, every_n_train_steps=2)
    trainer = tiny_trainer(
        tmp_path,
        max_steps=4,
        limit_train_batches=2,  # a validation between steps 2 and 3 leaves the window alone
        limit_val_batches=limit_val_batches,
        callbacks=[recorder, monitor],
    )
    torch.manual_seed(0)
    trainer.fit(CountingMethod(), dm)
    # At step 4 the newest whole batches covering 40 rows are kept, then the last 40 of them.
    rows = torch.cat([f for f, _ in recorder.steps])[-40:]
    logged = trainer.callback_metrics["collapse/train_rankme"].item()
    assert logged == pytest.approx(reference_rankme(rows), rel=1e-6)
    assert ("collapse/val_rankme" in trainer.callback_metrics) == bool(limit_val_batches)


def test_the_head_runs_in_eval_mode_and_is_left_as_it_was() -> None:
    head = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.BatchNorm1d(6))
    model = torch.nn.Module()
    model.projector = head
    features = torch.randn(10, 8)
    with torch.no_grad():
        expected = head.eval()(features)
    head.train()
    monitor = RankMe(head="projector")
    outputs = {"features": features, "labels": torch.zeros(10, dtype=torch.long)}
    monitor.add(model, outputs, None, "validation_step")
    torch.testing.assert_close(
        monitor._rows["eval"][0], expected
    )  # running statistics, not the batch's
    assert head.training
    assert head[1].num_batches_tracked.item() == 0  # no batch statistics went into the average


def test_a_missing_head_is_named_at_setup(tmp_path: Path) -> None:
    dm = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path)
    trainer = tiny_trainer(tmp_path, max_steps=1, callbacks=[EmbeddingStd(head="projektor")])
    with pytest.raises(ValueError, match=r"no submodule 'projektor'; expected one of \["):
        trainer.fit(CountingMethod(), dm)


def test_the_command_line_adds_the_monitors_by_short_name(capsys) -> None:
    args = ["fit", "--model=SimCLR", "--data=ImageFolderDataModule", f"--data.data_dir={SAMPLE}"]
    args += ["--trainer.callbacks+=RankMe", "--trainer.callbacks.head=projector"]
    args += ["--trainer.callbacks+=EmbeddingStd", "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: ssl_lightning.callbacks.RankMe" in printed
    assert "head: projector" in printed
    assert "class_path: ssl_lightning.callbacks.EmbeddingStd" in printed
