"""Fine-tuning evaluation: layer depths and layer-wise learning rates against the formula,
the backbone trained from its pretrained weights or from a seeded scratch, the command's
rows next to the frozen ones."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from ssl_lightning.backbones import create_backbone
from ssl_lightning.cli import main
from ssl_lightning.datamodules import ImageFolderDataModule
from ssl_lightning.evaluation import LinearEvaluation, fine_tune
from ssl_lightning.export import BackboneCheckpoint
from ssl_lightning.optim import layer_decay_groups, layer_depths
from tests.helpers import SAMPLE, tiny_trainer
from tests.resume_utils import assert_same_state, straight_and_resumed
from tests.test_evaluation import simclr_checkpoint  # noqa: F401  (a shared fixture)


def test_layer_depths_follow_the_forward_order() -> None:
    convnet = create_backbone("convnet", width=4, depth=2)
    depths, count = layer_depths(convnet)
    # conv (no bias: a norm follows), norm per block; ReLU and pooling hold no parameters.
    assert count == 4
    assert depths == {
        "features.0.weight": 0,
        "features.1.weight": 1,
        "features.1.bias": 1,
        "features.4.weight": 2,
        "features.5.weight": 3,
        "features.5.bias": 3,
    }
    vit = create_backbone("vit_tiny", dim=16, depth=3, num_heads=2, image_size=32, patch_size=8)
    depths, count = layer_depths(vit)
    assert depths["cls_token"] == 0 and depths["patch_embed.weight"] == 0
    blocks = [depths[f"blocks.{i}.attn.qkv.weight"] for i in range(3)]
    assert blocks == sorted(blocks) and len(set(blocks)) == 3
    assert depths["norm.weight"] == count - 1
    assert set(depths) == {name for name, _ in vit.named_parameters()}


def test_layer_decay_groups_give_each_parameter_the_formulas_rate() -> None:
    model = create_backbone("convnet", width=4, depth=2)
    depths, count = layer_depths(model)
    groups = layer_decay_groups(model, weight_decay=0.05, layer_decay=0.5, lr_factor=0.1)
    factor = {id(p): g["lr_factor"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert factor[id(p)] == pytest.approx(0.1 * 0.5 ** (count - depths[name])), name
        assert decay[id(p)] == (0.05 if p.ndim > 1 else 0.0), name
    flat = layer_decay_groups(model, 0.05, None, 0.1)
    assert {g["lr_factor"] for g in flat} == {0.1}


def test_linear_evaluation_with_layer_decay_sets_the_optimizer_rates(tmp_path: Path) -> None:
    model = LinearEvaluation(
        backbone="convnet",
        backbone_kwargs={"width": 4},
        num_classes=10,
        fine_tune=True,
        layer_decay=0.5,
        backbone_lr_factor=1.0,
        optimizer="adamw",
        lr=0.01,
        scale_lr=False,
    )
    dm = ImageFolderDataModule(SAMPLE, batch_size=8, cache_dir=tmp_path)
    trainer = tiny_trainer(tmp_path, max_steps=1)
    trainer.fit(model, dm)
    depths, count = layer_depths(model.backbone)
    optimizer = trainer.optimizers[0]
    initial = {id(p): g["initial_lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.backbone.named_parameters():
        assert initial[id(p)] == pytest.approx(0.01 * 0.5 ** (count - depths[name])), name
    assert all(initial[id(p)] == pytest.approx(0.01) for p in model.head.parameters())


def test_fine_tune_counts_its_steps_and_a_scratch_run_repeats_with_its_seed(
    simclr_checkpoint: tuple[Path, object],  # noqa: F811
    tmp_path: Path,
) -> None:
    ckpt, _ = simclr_checkpoint
    source = BackboneCheckpoint.read_any(ckpt)
    dm = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path, label_fraction=0.5)
    trained = fine_tune(source, dm, steps=3, accelerator="cpu")
    assert trained.steps == 3 and 0.0 <= trained.top1 <= trained.top5 <= 1.0
    spec = (source.name, source.kwargs)
    first = fine_tune(None, dm, steps=2, backbone=spec, accelerator="cpu", seed=1)
    again = fine_tune(None, dm, steps=2, backbone=spec, accelerator="cpu", seed=1)
    assert first == again
    with pytest.raises(ValueError, match="--steps"):
        fine_tune(source, dm, steps=0)


def test_fine_tune_starts_from_the_pretrained_weights(
    simclr_checkpoint: tuple[Path, object],  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ckpt, _ = simclr_checkpoint
    source = BackboneCheckpoint.read_any(ckpt)
    seen: list[dict[str, torch.Tensor]] = []
    fit = L.Trainer.fit

    def record(trainer, model, *args, **kwargs):
        backbone: nn.Module = model.backbone
        seen.append({k: v.clone() for k, v in backbone.state_dict().items()})
        return fit(trainer, model, *args, **kwargs)

    monkeypatch.setattr("lightning.Trainer.fit", record)
    dm = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path)
    fine_tune(source, dm, steps=1, accelerator="cpu")
    assert seen and all(torch.equal(seen[0][k], v) for k, v in source.state_dict.items())


def test_evaluate_fine_tune_writes_rows_beside_the_scratch_baseline(
    simclr_checkpoint: tuple[Path, object],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ckpt, _ = simclr_checkpoint
    out = tmp_path / "rows.jsonl"
    args = ["evaluate", str(ckpt), "--data-dir", str(SAMPLE), "--out", str(out)]
    main([*args, "--fine-tune", "--steps", "2", "--batch-size", "16", "--random-init"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["protocol"], r["model"], r["steps"]) for r in rows] == [
        ("fine-tune", str(ckpt), 2),
        ("fine-tune", "random init (convnet)", 2),
    ]
    recipe = {"lr": 1e-3, "weight_decay": 0.05, "layer_decay": None, "batch_size": 16, "seed": 0}
    assert all(r.items() >= {**recipe, "val_fraction": 0.0}.items() for r in rows)
    assert "| model | labels | steps | top-1 | top-5 |" in capsys.readouterr().out
    main([*args, "--val-fraction", "0.5"])
    frozen = json.loads(out.read_text().splitlines()[-1])
    assert frozen["protocol"] == "frozen" and frozen["stages"] == "last"
    assert frozen["val_fraction"] == 0.5 and "lr" not in frozen  # scored on a hold-out


def test_a_fine_tune_checkpoint_round_trips_and_resumes_exactly(tmp_path: Path) -> None:
    """Fine-tuning with layer decay, stopped after 2 of 4 steps and resumed from its checkpoint,
    ends where an uninterrupted run does; the checkpoint alone rebuilds the model with its
    protocol (fine-tune, layer decay) and predicts as the saved weights do."""

    def make() -> LinearEvaluation:
        return LinearEvaluation(
            backbone="convnet",
            backbone_kwargs={"width": 4},
            num_classes=10,
            fine_tune=True,
            layer_decay=0.7,
            optimizer="adamw",
            lr=1e-2,
            scale_lr=False,
        )

    straight, resumed, ckpt = straight_and_resumed(make, tmp_path, total=4, stop=2)
    assert_same_state(straight, resumed)
    restored = LinearEvaluation.load_from_checkpoint(ckpt)
    assert restored.fine_tune and restored.layer_decay == 0.7 and restored.num_classes == 10
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    for key, value in restored.state_dict().items():
        torch.testing.assert_close(value, saved[key])
    images = torch.randn(4, 3, 32, 32)
    halfway = make()
    halfway.load_state_dict(saved)
    restored.eval(), halfway.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(images), halfway(images))
