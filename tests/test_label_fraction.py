"""Training with few labels: a class-balanced, seeded share of the labelled training images,
disjoint from the validation hold-out, in the datamodules and in ``ssl-lightning evaluate``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ssl_lightning.cli import main
from ssl_lightning.datamodules import ImageFolderDataModule
from ssl_lightning.splits import label_subset, stratified_holdout
from tests.helpers import SAMPLE
from tests.test_evaluation import simclr_checkpoint  # noqa: F401  (a shared fixture)


def test_label_subset_is_balanced_seeded_and_leaves_out_the_unlabelled() -> None:
    sizes = {0: 500, 1: 300, 2: 101, 3: 7}
    labels = torch.cat([torch.full((n,), c) for c, n in sizes.items()] + [torch.full((50,), -1)])
    labels = labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(0))]
    rows = label_subset(labels, 0.1, seed=3)
    assert torch.equal(rows, rows.sort().values) and rows.unique().numel() == rows.numel()
    chosen = labels[rows]
    assert (chosen >= 0).all()
    labelled = sum(sizes.values())
    assert rows.numel() == math.floor(0.1 * labelled + 0.5)
    for c, n in sizes.items():  # every class within one row of its exact share
        assert abs(int((chosen == c).sum()) - 0.1 * n) < 1, c
    assert torch.equal(rows, label_subset(labels, 0.1, seed=3))
    assert not torch.equal(rows, label_subset(labels, 0.1, seed=4))
    # Not the validation hold-out drawn with the same seed.
    assert not torch.equal(rows, stratified_holdout(labels, 0.1, seed=3)[1])
    assert torch.equal(label_subset(labels, 1.0, seed=3), (labels >= 0).nonzero()[:, 0])


def test_the_datamodule_trains_on_a_share_disjoint_from_validation(tmp_path: Path) -> None:
    dm = ImageFolderDataModule(SAMPLE, cache_dir=tmp_path, val_fraction=0.25, label_fraction=0.5)
    dm.setup("fit")
    assert dm.train_set is not None and dm.val_set is not None
    train, val = dm.train_set.rows, dm.val_set.rows
    assert train is not None and val is not None
    assert set(train.tolist()).isdisjoint(val.tolist())
    # 120 images, 12 per class: 9 per class after the hold-out, half of them kept.
    assert len(dm.train_set) == 45 and len(dm.val_set) == 30
    counts = torch.bincount(dm.train_set.labels, minlength=10)
    assert counts.min() >= 4 and counts.max() <= 5

    full = ImageFolderDataModule(SAMPLE, cache_dir=tmp_path, val_fraction=0.25)
    full.setup("fit")
    assert full.train_set is not None and set(train.tolist()) < set(full.train_set.rows.tolist())


def test_a_bad_fraction_names_the_key(tmp_path: Path) -> None:
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"data\.label_fraction"):
            ImageFolderDataModule(SAMPLE, cache_dir=tmp_path, label_fraction=bad)
    dm = ImageFolderDataModule(SAMPLE, cache_dir=tmp_path, label_fraction=0.001)
    with pytest.raises(ValueError, match="keeps none"):
        dm.setup("fit")


def test_evaluate_with_a_label_fraction_records_it(
    simclr_checkpoint: tuple[Path, object],  # noqa: F811
    tmp_path: Path,
) -> None:
    ckpt, _ = simclr_checkpoint
    out = tmp_path / "rows.jsonl"
    args = ["evaluate", str(ckpt), "--data-dir", str(SAMPLE), "--out", str(out)]
    main([*args, "--label-fraction", "0.5"])
    main(args)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["label_fraction"] for r in rows] == [0.5, 1.0]
    assert all(0.0 <= r["linear_top1"] <= 1.0 for r in rows)
