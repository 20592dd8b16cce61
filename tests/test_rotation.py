"""Rotations and RotationPrediction: torch.rot90 per image, cross-entropy, heads, CLI."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ssl_lightning import RotationPrediction
from ssl_lightning.cli import main
from ssl_lightning.corruptions import ViewTransform
from ssl_lightning.corruptions.rotation import rotate
from ssl_lightning.datamodules import Batch, CleanView, ImageFolderDataModule, PatchMask, Rotations
from tests.helpers import SAMPLE, sample_fit_args, tiny_trainer

TINY = {"backbone": "convnet", "backbone_kwargs": {"width": 8}}


def _rotations(mode: str, images: torch.Tensor, seed: int = 0) -> Batch:
    labels = torch.arange(images.shape[0])
    return Rotations(mode)(images, labels, torch.Generator().manual_seed(seed))  # type: ignore[arg-type]


def test_all_mode_gives_four_rotated_copies_with_targets() -> None:
    images = torch.rand(3, 3, 8, 8)
    batch = _rotations("all", images)
    assert len(batch.views) == 4 and batch.targets is not None
    assert batch.targets.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert batch.labels.tolist() == [0, 1, 2]  # aligned with each view
    stacked = torch.cat(batch.views)
    for i in range(12):
        k, source = int(batch.targets[i]), i % 3
        assert torch.equal(stacked[i], torch.rot90(images[source], k, dims=(1, 2)))


def test_random_mode_rotates_each_image_by_its_own_target() -> None:
    images = torch.rand(32, 3, 8, 8)
    batch = _rotations("random", images, seed=1)
    assert len(batch.views) == 1 and batch.targets is not None
    assert batch.targets.shape == (32,) and set(batch.targets.tolist()) == {0, 1, 2, 3}
    for i in range(32):
        expected = torch.rot90(images[i], int(batch.targets[i]), dims=(1, 2))
        assert torch.equal(batch.views[0][i], expected)
    again = _rotations("random", images, seed=1)
    assert again.targets is not None and torch.equal(again.targets, batch.targets)


def test_view_augments_once_then_every_copy_is_rotated() -> None:
    """Reference: the same view with the same seed, then torch.rot90 per image."""
    images = torch.rand(4, 3, 16, 16)
    view = ViewTransform(crop_scale=(0.3, 1.0), jitter_p=0.0, grayscale_p=0.0)
    batch = Rotations("all", view=view)(images, torch.arange(4), torch.Generator().manual_seed(3))
    augmented = view(images, torch.Generator().manual_seed(3))
    assert not torch.equal(augmented, images)
    for k, rotated in enumerate(batch.views):
        for i in range(4):
            assert torch.equal(rotated[i], torch.rot90(augmented[i], k, dims=(1, 2)))


def test_rotate_matches_rot90_per_image() -> None:
    images = torch.rand(6, 2, 5, 5)
    k = torch.tensor([0, 1, 2, 3, 1, 3])
    out = rotate(images, k)
    for i in range(6):
        assert torch.equal(out[i], torch.rot90(images[i], int(k[i]), dims=(1, 2)))


def test_rotations_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="mode"):
        Rotations("some")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"square.*8x6.*data\.image_size"):
        _rotations("all", torch.rand(2, 3, 8, 6))


def test_loss_is_cross_entropy_of_the_head_with_accuracy() -> None:
    torch.manual_seed(0)
    model = RotationPrediction(**TINY, head="mlp", head_hidden_dim=16).eval()
    batch = _rotations("all", torch.rand(4, 3, 16, 16))
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    out = model.pretext_step(batch)
    assert calls == [16]  # one backbone pass over the four views
    assert batch.targets is not None
    with torch.no_grad():
        logits = torch.stack(
            [model.head(model.backbone(x[None]))[0] for x in torch.cat(batch.views)]
        )
    expected = -F.log_softmax(logits, dim=1)[torch.arange(16), batch.targets].mean()
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)
    accuracy = (logits.argmax(1) == batch.targets).float().mean()
    torch.testing.assert_close(out.metrics["rotation_acc"], accuracy)
    assert out.features.shape == (16, 16) and out.labels.tolist() == [0, 1, 2, 3] * 4


def test_heads_and_default_corruption() -> None:
    model = RotationPrediction(**TINY, head="linear")
    linears = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 4)]
    model = RotationPrediction(**TINY, head_hidden_dim=32)  # the default head: two layers
    linears = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 32), (32, 4)]
    corruption = model.default_corruption()
    assert isinstance(corruption, Rotations) and corruption.view is not None
    assert corruption.view.crop_scale == (0.35, 1.0) and corruption.view.flip_p == 0.5
    assert corruption.view.jitter_p == 0.0 and corruption.view.grayscale_p == 0.0
    assert RotationPrediction(**TINY, mode="random").default_corruption().mode == "random"
    # The measured short-run optimizer (README, Results), not the paper's SGD.
    assert (model.optimizer_name, model.lr, model.weight_decay) == ("adamw", 5e-3, 1e-4)


def test_bad_arguments_and_batches_name_the_fix() -> None:
    with pytest.raises(ValueError, match="model.head"):
        RotationPrediction(**TINY, head="conv")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model.mode"):
        RotationPrediction(**TINY, mode="two")  # type: ignore[arg-type]
    model = RotationPrediction(**TINY)
    clean = Batch(views=[torch.rand(2, 3, 16, 16)], labels=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"data\.corruption=Rotations"):
        model.pretext_step(clean)


def test_mismatched_corruption_fails_at_the_first_batch(tmp_path: Path) -> None:
    for corruption in (CleanView(), PatchMask()):
        dm = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path, corruption=corruption)
        with pytest.raises(ValueError, match="RotationPrediction needs one rotation index"):
            tiny_trainer(tmp_path, max_steps=1).fit(RotationPrediction(**TINY), dm)


def test_cli_short_name_run(tmp_path: Path) -> None:
    main(
        sample_fit_args(
            tmp_path,
            "RotationPrediction",
            "--model.backbone=convnet",
            "--model.backbone_kwargs={width: 8}",
            "--model.head=mlp",
            "--model.mode=random",
            "--trainer.log_every_n_steps=1",
        )
    )
    assert "step=2" in next(tmp_path.rglob("epoch=*.ckpt")).name
    config = next(tmp_path.rglob("config.yaml")).read_text()
    assert "class_path: ssl_lightning.RotationPrediction" in config and "mode: random" in config
    metrics = next(tmp_path.rglob("metrics.csv")).read_text()
    assert "train/rotation_acc" in metrics
