"""LinearEvaluation: recovers a planted linear signal, keeps the backbone frozen, loads SSL
checkpoints and exported weights, and runs from the command line."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from torch import Tensor

from ssl_lightning import LinearEvaluation, SimCLR
from ssl_lightning.backbones import create_backbone
from ssl_lightning.cli import main
from ssl_lightning.corruptions import normalize
from ssl_lightning.datamodules import (
    CleanView,
    ImageFolderDataModule,
    InMemoryDataModule,
    SimCLRViews,
)
from ssl_lightning.export import export_backbone
from tests.helpers import SAMPLE, sample_fit_args, tiny_trainer

TINY = {"backbone": "convnet", "backbone_kwargs": {"width": 4}}


class TensorDataModule(InMemoryDataModule):
    """Given uint8 images and labels for the train and val splits."""

    def __init__(self, splits: dict[str, tuple[Tensor, Tensor]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.splits = splits

    def load_split(self, split: str) -> tuple[Tensor, Tensor] | None:
        return self.splits.get(split)


@pytest.fixture(scope="module")
def simclr_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SimCLR]:
    """A real SimCLR checkpoint after two steps on the real image sample."""
    root = tmp_path_factory.mktemp("simclr")
    torch.manual_seed(0)
    model = SimCLR(**TINY, proj_hidden_dim=16)
    dm = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=root)
    trainer = tiny_trainer(root, max_steps=2, limit_val_batches=0)
    trainer.fit(model, dm)
    path = root / "simclr.ckpt"
    trainer.save_checkpoint(path)
    return path, model


def test_linear_evaluation_recovers_a_planted_linear_signal(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = LinearEvaluation(backbone="convnet", backbone_kwargs={"width": 8}, lr=2.0)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (1000, 3, 8, 8), dtype=torch.uint8, generator=g)
    mean, std = InMemoryDataModule.mean, InMemoryDataModule.std
    with torch.no_grad():
        features = model.backbone.eval()(normalize(images.float() / 255, mean, std))  # [N, 16]
    features = (features - features.mean(0)) / features.std(0)
    scores = features @ torch.randn(16, 4, generator=g)  # [N, 4], a random linear rule
    top2 = scores.topk(2, dim=1).values
    keep = top2[:, 0] - top2[:, 1] > 1.0  # a margin, so the rule is learnable from samples
    images, labels = images[keep], scores[keep].argmax(1)
    assert len(labels) > 500 and labels.bincount().min() > 50
    n = len(labels) * 3 // 4
    dm = TensorDataModule(
        {"train": (images[:n], labels[:n]), "val": (images[n:], labels[n:])},
        batch_size=32,
        corruption=CleanView(),
    )
    before = [p.clone() for p in model.backbone.state_dict().values()]
    trainer = tiny_trainer(tmp_path, max_epochs=5, check_val_every_n_epoch=5)
    trainer.fit(model, dm)
    assert model.num_classes == 4 and model.hparams.num_classes == 4  # from the datamodule
    assert trainer.callback_metrics["val/acc_top1"] > 0.95
    # Frozen: weights and BatchNorm statistics untouched.
    for old, new in zip(before, model.backbone.state_dict().values(), strict=True):
        torch.testing.assert_close(old, new)


def test_frozen_backbone_stays_in_eval_mode_and_fine_tune_trains_it(tmp_path: Path) -> None:
    seen: list[bool] = []

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, *args) -> None:
            seen.append(pl_module.backbone.training)

    dm = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path)
    frozen = LinearEvaluation(**TINY)
    trainer = tiny_trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[Watch()])
    trainer.fit(frozen, dm)
    assert seen == [False, False] and frozen.head is not None and frozen.head.training
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    assert len(trainer.optimizers[0].param_groups) == 1
    assert isinstance(dm.train_corruption(), SimCLRViews)
    assert dm.train_corruption().view.jitter_p == 0.0  # type: ignore[attr-defined]

    seen.clear()
    tuned = LinearEvaluation(**TINY, fine_tune=True, backbone_lr_factor=0.5, scale_lr=False)
    before = [p.clone() for p in tuned.backbone.parameters()]
    dm = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path)
    trainer = tiny_trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[Watch()])
    trainer.fit(tuned, dm)
    assert seen == [True, True]
    head_group, *backbone_groups = trainer.optimizers[0].param_groups
    for group in backbone_groups:  # weights, then biases and norms (no weight decay)
        assert group["initial_lr"] == pytest.approx(0.5 * head_group["initial_lr"])
    assert any(
        not torch.equal(a, b) for a, b in zip(before, tuned.backbone.parameters(), strict=True)
    )


def test_backbone_from_checkpoint_and_from_exported_weights(
    simclr_checkpoint: tuple[Path, SimCLR], tmp_path: Path
) -> None:
    path, simclr = simclr_checkpoint
    from_ckpt = LinearEvaluation(backbone_checkpoint=str(path), num_classes=10)
    weights = export_backbone(path, tmp_path / "backbone.pt")
    from_file = LinearEvaluation(backbone_weights=str(weights), num_classes=10)
    for model in (from_ckpt, from_file):
        for key, value in simclr.backbone.state_dict().items():
            torch.testing.assert_close(model.backbone.state_dict()[key], value)


def test_bad_input_names_the_fix(simclr_checkpoint: tuple[Path, SimCLR], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LinearEvaluation(backbone_checkpoint=str(tmp_path / "missing.ckpt"))
    with pytest.raises(ValueError, match="exactly one backbone source"):
        LinearEvaluation(backbone="convnet", backbone_checkpoint=str(simclr_checkpoint[0]))
    with pytest.raises(ValueError, match="exactly one backbone source"):
        LinearEvaluation()

    # A checkpoint of a LightningModule that is not an SSL method: no backbone hyper-parameters.
    foreign = tmp_path / "boring.ckpt"
    trainer = tiny_trainer(tmp_path, max_steps=1)
    trainer.fit(BoringModel())
    trainer.save_checkpoint(foreign)
    with pytest.raises(ValueError, match="no backbone name"):
        LinearEvaluation(backbone_checkpoint=str(foreign))

    # Labels beyond num_classes.
    dm = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"num_classes=3\).*model.num_classes to at least"):
        tiny_trainer(tmp_path, max_steps=1).fit(LinearEvaluation(**TINY, num_classes=3), dm)


def test_linear_evaluation_from_the_command_line(
    simclr_checkpoint: tuple[Path, SimCLR], tmp_path: Path
) -> None:
    checkpoint = f"--model.backbone_checkpoint={simclr_checkpoint[0]}"
    main(sample_fit_args(tmp_path, "LinearEvaluation", checkpoint))
    ckpt = next(tmp_path.rglob("*.ckpt"))
    restored = LinearEvaluation.load_from_checkpoint(ckpt)  # num_classes was saved
    assert restored.num_classes == 10
    config = next(tmp_path.rglob("config.yaml")).read_text()
    assert "LinearEvaluation" in config and str(simclr_checkpoint[0]) in config


def test_evaluation_checkpoint_loads_and_exports_without_the_pretraining_file(
    simclr_checkpoint: tuple[Path, SimCLR], tmp_path: Path
) -> None:
    pretrained = tmp_path / "pretrained.ckpt"
    shutil.copy(simclr_checkpoint[0], pretrained)
    model = LinearEvaluation(backbone_checkpoint=str(pretrained), fine_tune=True, scale_lr=False)
    dm = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path)
    trainer = tiny_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(model, dm)
    ckpt = tmp_path / "eval.ckpt"
    trainer.save_checkpoint(ckpt)
    pretrained.unlink()  # moved or deleted: the evaluation checkpoint must not need it

    tuned = model.backbone.state_dict()
    start = simclr_checkpoint[1].backbone.state_dict()
    assert any(not torch.equal(tuned[k], start[k]) for k in start)  # fine-tuning moved it
    restored = LinearEvaluation.load_from_checkpoint(ckpt)
    main(["export", str(ckpt), str(tmp_path / "tuned.pt")])
    exported = create_backbone("convnet", weights=tmp_path / "tuned.pt")
    for backbone in (restored.backbone, exported):
        for key, value in tuned.items():
            torch.testing.assert_close(backbone.state_dict()[key], value)
    assert restored.num_classes == 10 and restored.fine_tune
    saved = torch.load(ckpt, weights_only=True)
    assert saved["backbone_source"]["backbone_checkpoint"] == str(pretrained)


def test_test_step_reports_top1_and_top5_on_the_test_split(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = LinearEvaluation(**TINY, lr=1.0)
    dm = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path)
    trainer = tiny_trainer(tmp_path, max_steps=4, limit_val_batches=0)
    trainer.fit(model, dm)
    (metrics,) = trainer.test(model, dm, verbose=False)

    # Reference: the accuracies counted by hand over every test image.
    model.eval()
    top1 = top5 = total = 0
    with torch.no_grad():
        for batch in dm.test_dataloader():
            batch = dm.on_after_batch_transfer(batch, 0)
            ranked = model(batch.views[0]).topk(5, dim=1).indices  # [B, 5]
            hits = ranked == batch.labels[:, None]
            top1 += int(hits[:, 0].sum())
            top5 += int(hits.any(1).sum())
            total += len(batch.labels)
    assert total == 30
    assert metrics["test/acc_top1"] == pytest.approx(top1 / total)
    assert metrics["test/acc_top5"] == pytest.approx(top5 / total)
    assert {"test/loss", "test/acc_top1", "test/acc_top5"} <= set(metrics)


def test_test_from_the_command_line_needs_only_the_evaluation_checkpoint(
    simclr_checkpoint: tuple[Path, SimCLR], tmp_path: Path
) -> None:
    pretrained = tmp_path / "pretrained.ckpt"
    shutil.copy(simclr_checkpoint[0], pretrained)
    main(
        sample_fit_args(
            tmp_path / "fit", "LinearEvaluation", f"--model.backbone_checkpoint={pretrained}"
        )
    )
    (ckpt,) = (tmp_path / "fit").rglob("epoch=*.ckpt")
    pretrained.unlink()

    # The model's settings come from the checkpoint (LightningCLI reads its hyper-parameters).
    args = sample_fit_args(tmp_path / "test", "LinearEvaluation", f"--ckpt_path={ckpt}")
    main(["test", *[a for a in args[1:] if not a.startswith("--trainer.max_steps")]])
    (metrics,) = (tmp_path / "test").rglob("metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    assert {"test/acc_top1", "test/acc_top5", "test/loss"} <= set(header)
