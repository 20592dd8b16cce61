"""PatchMask: exact-count random patch masks, fills, and errors, against per-image loops."""

import pytest
import torch

from ssl_lightning.corruptions import ViewTransform
from ssl_lightning.corruptions.masking import sample_patch_mask
from ssl_lightning.datamodules import Batch, PatchMask
from ssl_lightning.layers import mask_to_pixels


def _call(corruption: PatchMask, images: torch.Tensor, seed: int = 0) -> Batch:
    labels = torch.arange(images.shape[0])
    return corruption(images, labels, torch.Generator().manual_seed(seed))


def _slow_pixel_mask(mask: torch.Tensor, patch: int) -> torch.Tensor:
    b, h, w = mask.shape
    out = torch.zeros(b, 1, h * patch, w * patch, dtype=torch.bool)
    for i in range(b):
        for r in range(h):
            for c in range(w):
                if mask[i, r, c]:
                    out[i, 0, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = True
    return out


def test_exact_count_per_image_and_images_differ() -> None:
    images = torch.rand(16, 3, 32, 32)
    batch = _call(PatchMask(patch_size=4, mask_ratio=0.75), images)
    assert batch.mask is not None and batch.mask.dtype == torch.bool
    assert batch.mask.shape == (16, 8, 8)
    assert batch.mask.sum(dim=(1, 2)).tolist() == [48] * 16  # round(0.75 * 64)
    assert len({tuple(m.flatten().tolist()) for m in batch.mask}) == 16
    assert batch.clean is images and batch.labels.tolist() == list(range(16))


def test_count_rounds_and_same_seed_same_masks() -> None:
    corruption = PatchMask(patch_size=8, mask_ratio=0.3)  # 16 patches: round(4.8) = 5
    images = torch.rand(4, 3, 32, 32)
    first, second = _call(corruption, images, seed=3), _call(corruption, images, seed=3)
    assert first.mask is not None and second.mask is not None
    assert first.mask.sum(dim=(1, 2)).tolist() == [5] * 4
    assert torch.equal(first.mask, second.mask)
    other = _call(corruption, images, seed=4).mask
    assert other is not None and not torch.equal(first.mask, other)


def test_every_patch_is_equally_likely() -> None:
    masks = sample_patch_mask(4000, 4, 4, 6, torch.Generator().manual_seed(0)).float()
    frequency = masks.mean(dim=0)  # each of 16 patches is hidden with probability 6/16
    assert torch.allclose(frequency, torch.full((4, 4), 6 / 16), atol=0.03)


def test_mask_to_pixels_matches_a_loop() -> None:
    mask = sample_patch_mask(3, 2, 5, 4, torch.Generator().manual_seed(1))
    assert torch.equal(mask_to_pixels(mask, 3), _slow_pixel_mask(mask, 3))


def test_zero_fill_hides_exactly_the_masked_patches() -> None:
    images = torch.rand(5, 3, 16, 24) * 0.9 + 0.1  # no zeros in the clean images
    batch = _call(PatchMask(patch_size=4, mask_ratio=0.5), images)
    assert batch.mask is not None
    hidden = _slow_pixel_mask(batch.mask, 4).expand_as(images)
    masked = batch.views[0]
    assert (masked[hidden] == 0).all()
    assert torch.equal(masked[~hidden], images[~hidden])


def test_mean_fill_is_the_mean_of_the_visible_pixels() -> None:
    images = torch.rand(3, 3, 8, 8)
    batch = _call(PatchMask(patch_size=2, mask_ratio=0.25, fill="mean"), images)
    assert batch.mask is not None
    hidden = _slow_pixel_mask(batch.mask, 2)[:, 0]  # [B, H, W]
    for i in range(3):
        for c in range(3):
            expected = images[i, c][~hidden[i]].mean()
            torch.testing.assert_close(batch.views[0][i, c][hidden[i]], expected.expand(16))
            assert torch.equal(batch.views[0][i, c][~hidden[i]], images[i, c][~hidden[i]])


def test_noise_fill_is_seeded_uniform_noise_on_hidden_pixels() -> None:
    images = torch.full((4, 3, 16, 16), 2.0)  # outside [0, 1], so noise is told apart
    corruption = PatchMask(patch_size=4, mask_ratio=0.5, fill="noise")
    batch = _call(corruption, images, seed=5)
    assert batch.mask is not None
    hidden = _slow_pixel_mask(batch.mask, 4).expand_as(images)
    noise = batch.views[0][hidden]
    assert ((noise >= 0) & (noise < 1)).all() and noise.std() > 0.2
    assert (batch.views[0][~hidden] == 2.0).all()
    assert torch.equal(_call(corruption, images, seed=5).views[0], batch.views[0])


def test_view_augments_before_masking_and_the_clean_target_is_the_view() -> None:
    images = torch.rand(3, 3, 16, 16)
    view = ViewTransform(crop_scale=(0.3, 1.0), jitter_p=0.0, grayscale_p=0.0)
    batch = PatchMask(4, 0.5, view=view)(images, torch.zeros(3), torch.Generator().manual_seed(1))
    augmented = view(images, torch.Generator().manual_seed(1))  # drawn first, same seed
    assert batch.clean is not None and batch.mask is not None
    torch.testing.assert_close(batch.clean, augmented)
    hidden = batch.mask.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None]  # [3, 1, 16, 16]
    torch.testing.assert_close(batch.views[0], augmented.masked_fill(hidden, 0.0))


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_mask_ratio_outside_open_interval_fails(ratio: float) -> None:
    with pytest.raises(ValueError, match=r"mask_ratio=.*\(0, 1\).*data\.corruption"):
        PatchMask(mask_ratio=ratio)


def test_bad_patch_size_and_fill_fail_with_the_argument_to_fix() -> None:
    with pytest.raises(ValueError, match="patch_size"):
        PatchMask(patch_size=0)
    with pytest.raises(ValueError, match="fill"):
        PatchMask(fill="blur")  # type: ignore[arg-type]
    corruption = PatchMask(patch_size=5)
    with pytest.raises(ValueError, match=r"patch_size=5.*32x32.*data\.corruption\.init_args"):
        _call(corruption, torch.rand(2, 3, 32, 32))


def test_ratio_that_hides_every_patch_fails_at_the_first_batch() -> None:
    corruption = PatchMask(patch_size=4, mask_ratio=0.9)  # 4 patches: round(3.6) hides all
    with pytest.raises(ValueError, match=r"hides 4 of the 4 patches"):
        _call(corruption, torch.rand(2, 3, 8, 8))
