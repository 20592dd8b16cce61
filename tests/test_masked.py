"""MaskedReconstruction (conv inpainting) and its decoder: loss, masking, corruption, CLI."""

from pathlib import Path

import pytest
import torch

from ssl_lightning import MaskedReconstruction
from ssl_lightning.cli import main
from ssl_lightning.corruptions.recipes import crop_flip_view
from ssl_lightning.datamodules import Batch, CleanView, ImageFolderDataModule, PatchMask, Rotations
from ssl_lightning.decoders import ConvDecoder
from ssl_lightning.losses import reconstruction_loss
from tests.helpers import SAMPLE, sample_fit_args, tiny_trainer

TINY = {"backbone": "convnet", "backbone_kwargs": {"width": 8}, "decoder_channels": 16}


def _masked_batch(images: torch.Tensor, patch_size: int = 4, seed: int = 0) -> Batch:
    labels = torch.arange(images.shape[0])
    return PatchMask(patch_size, 0.5)(images, labels, torch.Generator().manual_seed(seed))


def _slow_loss(pred, target, mask, patch: int, kind: str, masked_only: bool) -> torch.Tensor:
    """Average error over the hidden pixels (or all), one pixel at a time."""
    total, count = 0.0, 0
    b, c, h, w = pred.shape
    for i in range(b):
        for y in range(h):
            for x in range(w):
                if masked_only and not mask[i, y // patch, x // patch]:
                    continue
                for ch in range(c):
                    diff = float(pred[i, ch, y, x] - target[i, ch, y, x])
                    total += diff * diff if kind == "mse" else abs(diff)
                    count += 1
    return torch.tensor(total / count)


@pytest.mark.parametrize(("kind", "masked_only"), [("mse", True), ("l1", True), ("mse", False)])
def test_loss_matches_a_per_pixel_reference(kind: str, masked_only: bool) -> None:
    torch.manual_seed(0)
    model = MaskedReconstruction(**TINY, loss=kind, masked_only=masked_only)  # type: ignore[arg-type]
    batch = _masked_batch(torch.rand(2, 3, 16, 16))
    assert batch.mask is not None and batch.clean is not None
    out = model.pretext_step(batch)
    pred = model.reconstruct(batch.views[0])
    expected = _slow_loss(pred, batch.clean, batch.mask, 4, kind, masked_only)
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)


def test_masked_only_loss_ignores_visible_pixels() -> None:
    torch.manual_seed(0)
    model = MaskedReconstruction(**TINY)
    batch = _masked_batch(torch.rand(2, 3, 16, 16))
    assert batch.mask is not None
    visible = (~batch.mask[0]).nonzero()[0].tolist()  # a visible patch of image 0
    hidden = batch.mask[0].nonzero()[0].tolist()
    loss = model.pretext_step(batch).loss

    def loss_with_prediction_changed_at(patch: list[int]) -> torch.Tensor:
        def edit(module, inputs, output):
            output = output.clone()
            output[0, :, 4 * patch[0], 4 * patch[1]] += 10.0
            return output

        handle = model.decoder.register_forward_hook(edit)
        try:
            return model.pretext_step(batch).loss
        finally:
            handle.remove()

    torch.testing.assert_close(loss_with_prediction_changed_at(visible), loss)
    assert loss_with_prediction_changed_at(hidden) > loss + 0.01
    # The same on the plain function, with a bool pixel mask.
    pred, target = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    weight = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    weight[..., :2, :] = True
    changed = pred.clone()
    changed[..., 3, 3] = 99.0
    torch.testing.assert_close(
        reconstruction_loss(changed, target, weight), reconstruction_loss(pred, target, weight)
    )


def test_decoder_upsamples_cnn_maps_back_to_the_image() -> None:
    x = torch.randn(2, 3, 32, 32)
    for backbone, factor in (("convnet", 4), ("resnet18", 8)):
        model = MaskedReconstruction(backbone=backbone, backbone_kwargs={"width": 8})
        assert model.decoder.upsample_factor == factor
        assert model.reconstruct(x).shape == x.shape
    with pytest.raises(ValueError, match="power of two"):
        ConvDecoder(16, 3)


def test_features_come_from_a_no_grad_pass_over_the_clean_images() -> None:
    torch.manual_seed(0)
    model = MaskedReconstruction(**TINY).eval()
    batch = _masked_batch(torch.rand(2, 3, 32, 32))
    assert batch.clean is not None and batch.mask is not None
    out = model.pretext_step(batch)
    torch.testing.assert_close(out.features, model(batch.clean))
    assert not out.features.requires_grad and out.loss.requires_grad
    rows = model.preview(batch)
    assert list(rows) == ["input", "masked", "reconstruction"]
    visible = ~batch.mask.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None]
    visible = visible.expand(-1, 3, -1, -1)
    torch.testing.assert_close(rows["reconstruction"][visible], batch.clean[visible])
    corruption = model.default_corruption()
    assert isinstance(corruption, PatchMask)
    assert (corruption.patch_size, corruption.mask_ratio) == (16, 0.25)
    assert corruption.view == crop_flip_view()  # crop and flip before masking


def test_bad_backbones_batches_and_arguments_name_the_fix() -> None:
    with pytest.raises(TypeError, match=r"VisionTransformer.*model MAE"):
        MaskedReconstruction(
            backbone="vit_tiny", backbone_kwargs={"dim": 32, "depth": 1, "num_heads": 2}
        )
    with pytest.raises(ValueError, match="model.loss"):
        MaskedReconstruction(**TINY, loss="l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model.mask_ratio"):
        MaskedReconstruction(**TINY, mask_ratio=0.0)
    with pytest.raises(ValueError, match="model.patch_size"):
        MaskedReconstruction(**TINY, patch_size=5)
    with pytest.raises(ValueError, match=r"36x36 images to a 5x5 map.*model\.image_size"):
        MaskedReconstruction(
            backbone="resnet18", backbone_kwargs={"width": 8}, image_size=36, patch_size=4
        )
    model = MaskedReconstruction(**TINY)
    with pytest.raises(ValueError, match=r"16x16 images for 18x18.*model\.image_size=18"):
        model.pretext_step(_masked_batch(torch.rand(2, 3, 18, 18), patch_size=2))
    rotated = Rotations()(torch.rand(2, 3, 32, 32), torch.zeros(2), torch.Generator())
    with pytest.raises(ValueError, match=r"data\.corruption=PatchMask"):
        model.pretext_step(rotated)


def test_mismatched_corruption_fails_at_the_first_batch(tmp_path: Path) -> None:
    dm = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path, corruption=CleanView())
    with pytest.raises(ValueError, match="MaskedReconstruction needs a patch mask"):
        tiny_trainer(tmp_path, max_steps=1).fit(MaskedReconstruction(**TINY), dm)


def test_cli_short_name_run(tmp_path: Path) -> None:
    main(
        sample_fit_args(
            tmp_path,
            "MaskedReconstruction",
            "--model.backbone=convnet",
            "--model.backbone_kwargs={width: 8}",
            "--model.loss=l1",
        )
    )
    assert "step=2" in next(tmp_path.rglob("epoch=*.ckpt")).name
    config = next(tmp_path.rglob("config.yaml")).read_text()
    assert "class_path: ssl_lightning.MaskedReconstruction" in config and "loss: l1" in config
