"""Views of uint8 images: crops resized as uint8 (torchvision's uint8 resize), then floats."""

import pytest
import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode

from ssl_lightning.corruptions import (
    Batch,
    BYOLViews,
    CleanView,
    Corruption,
    MultiCropViews,
    PatchMask,
    Rotations,
    SimCLRViews,
    ViewTransform,
    corrupt_batch,
    geometry,
    normalize,
    sample_bernoulli,
    sample_crop_boxes,
    to_unit_float,
)

ATOL = 1e-5
TV_JITTER = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uint8_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, height, width), generator=gen(seed), dtype=torch.uint8)


@pytest.mark.parametrize("per_box", [True, False], ids=["box", "mm"])
def test_uint8_crops_equal_torchvisions_uint8_resize(per_box, monkeypatch):
    """Per box, the very kernel (equal); the matmuls resize in float and round (within 1)."""
    monkeypatch.setattr(geometry, "PER_BOX_MIN_PIXELS", 0 if per_box else 1 << 62)
    images = uint8_images(6, 90, 76)
    boxes = sample_crop_boxes(12, 90, 76, generator=gen(3))
    boxes[:2] = torch.tensor([[0, 0, 90, 76], [3, 5, 1, 1]])
    flip = sample_bernoulli(12, 0.5, gen(4))
    out = geometry.resized_crop(images, boxes, 64, flip=flip)
    expected = []
    for i, (box, f) in enumerate(zip(boxes, flip, strict=True)):
        crop = F.resized_crop(images[i % 6], *box.tolist(), [64, 64], InterpolationMode.BILINEAR)
        expected.append(F.horizontal_flip(crop) if f else crop)
    assert out.dtype == torch.uint8 and out.shape == (12, 3, 64, 64)
    assert (out.int() - torch.stack(expected).int()).abs().max() <= (0 if per_box else 1)


@pytest.mark.parametrize("size", [24, 64])
def test_uint8_views_equal_float_views_where_crops_are_not_resized_as_uint8(size):
    """Below per-box sizes (and on a GPU) the images are made float first: the same views as
    from ``images / 255``; at per-box sizes they differ by the uint8 rounding of the crop."""
    images = uint8_images(4, 72, 72)
    view = ViewTransform(size=size)
    from_uint8 = view(images, gen(1), num_views=2)
    from_float = view(images.float().div(255), gen(1), num_views=2)
    difference = (from_uint8 - from_float).abs().max()
    if size * size < geometry.PER_BOX_MIN_PIXELS:
        assert difference == 0
    else:
        assert 0 < difference < 0.05


@pytest.mark.parametrize(
    ("corruption", "accepts"),
    [
        (SimCLRViews(), True),
        (BYOLViews(), True),
        (MultiCropViews(), True),
        (CleanView(), False),
        (Rotations(), False),
        (PatchMask(), False),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, bool) else str(v),
)
def test_view_recipes_take_uint8_and_return_float_views(corruption, accepts):
    assert corruption.accepts_uint8 is accepts
    if accepts:
        batch = corruption(uint8_images(2, 32, 32), torch.zeros(2, dtype=torch.long), gen())
        assert all(v.dtype == torch.float32 and 0 <= v.min() <= v.max() <= 1 for v in batch.views)


class _Recording(CleanView):
    """Records the dtype of the images it is given."""

    def __init__(self, accepts: bool) -> None:
        self.seen: list[torch.dtype] = []
        self._accepts = accepts

    @property
    def accepts_uint8(self) -> bool:  # type: ignore[override]
        return self._accepts

    def __call__(self, images, labels, generator):
        self.seen.append(images.dtype)
        return super().__call__(
            images.float().div(255) if self._accepts else images, labels, generator
        )


@pytest.mark.parametrize("accepts", [True, False])
def test_the_datamodule_hands_uint8_batches_only_to_corruptions_that_accept_them(accepts):
    from tests.test_datamodules import FakeTrainer, TensorDataModule

    corruption = _Recording(accepts)
    dm = TensorDataModule(batch_size=4, corruption=corruption)
    dm.trainer = FakeTrainer(training=True)
    out = dm.on_after_batch_transfer((dm.images[:4], dm.labels[:4]), 0)
    assert corruption.seen == [torch.uint8 if accepts else torch.float32]
    torch.testing.assert_close(out.views[0], (dm.images[:4].float() / 255 - 0.5) / 0.25)


def test_a_subclass_with_its_own_call_inherits_neither_promise():
    class Overrides(SimCLRViews):
        def __call__(self, images, labels, generator):
            return super().__call__(images * 0.5, labels, generator)

    class Keeps(SimCLRViews):
        pass

    class Declares(SimCLRViews):
        accepts_uint8 = True

        def __call__(self, images, labels, generator):
            return super().__call__(images, labels, generator)

    assert (Overrides.accepts_uint8, Overrides.returns_new_tensors) == (False, False)
    assert (Keeps.accepts_uint8, Keeps.returns_new_tensors) == (True, True)
    assert (Declares.accepts_uint8, Declares.returns_new_tensors) == (True, False)


@pytest.mark.parametrize("size", [24, 64, 160])
def test_channels_last_uint8_images_give_the_same_contiguous_views(size):
    """Decoded JPEG batches are channels-last on the CPU: the same views, contiguous, on the
    matmul (24 px), batched per-box (64 px) and one-at-a-time (160 px) paths."""
    images = uint8_images(3, size + 8, size + 4)
    channels_last = images.contiguous(memory_format=torch.channels_last)
    transform = ViewTransform(size=size, hue=0.3, blur_p=0.5)
    expected = transform(images, gen(2), num_views=2)
    views = transform(channels_last, gen(2), num_views=2)
    assert views.is_contiguous() and torch.equal(views, expected)
    crops = geometry.resized_crop(channels_last, torch.tensor([[1, 2, size, size]] * 3), size)
    assert torch.equal(
        crops, geometry.resized_crop(images, torch.tensor([[1, 2, size, size]] * 3), size)
    )


def test_cleanview_of_a_channels_last_batch_is_contiguous():
    images = uint8_images(2, 8, 8).contiguous(memory_format=torch.channels_last)
    batch = corrupt_batch(CleanView(), images, torch.zeros(2), gen(), (0.5,) * 3, (0.25,) * 3)
    assert batch.views[0].is_contiguous()
    torch.testing.assert_close(batch.views[0], (images.float() / 255 - 0.5) / 0.25)


MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


@pytest.mark.parametrize(
    "corruption",
    [SimCLRViews(), BYOLViews(), MultiCropViews(), Rotations(), PatchMask(), CleanView()],
    ids=lambda c: type(c).__name__,
)
def test_normalizing_in_place_gives_what_normalizing_copies_gives(corruption):
    """Every library corruption declares new tensors: no returned tensor is normalized twice."""
    assert corruption.returns_new_tensors
    images, labels = uint8_images(4, 32, 32), torch.zeros(4, dtype=torch.long)
    x = images if corruption.accepts_uint8 else to_unit_float(images)
    expected = corruption(x, labels, gen(1)).map_images(lambda t: normalize(t, MEAN, STD))
    got = corrupt_batch(corruption, images, labels, gen(1), MEAN, STD)
    assert len(got.views) == len(expected.views)
    for view, want in zip(got.views, expected.views, strict=True):
        torch.testing.assert_close(view, want)
    if expected.clean is not None:
        torch.testing.assert_close(got.clean, expected.clean)


def test_a_corruption_that_keeps_its_tensors_gets_them_normalized_as_copies():
    class Keeping(Corruption):
        def __init__(self) -> None:
            self.kept = torch.rand(2, 3, 8, 8, generator=gen(3))

        def __call__(self, images, labels, generator):
            return Batch(views=[self.kept, self.kept], labels=labels)

    corruption = Keeping()
    before = corruption.kept.clone()
    for _ in range(2):
        out = corrupt_batch(corruption, uint8_images(2, 8, 8), torch.zeros(2), gen(), MEAN, STD)
        for view in out.views:
            torch.testing.assert_close(view, normalize(before, MEAN, STD))
    assert torch.equal(corruption.kept, before)


def test_normalize_in_place_is_the_same_arithmetic_on_the_same_tensor():
    images = torch.rand(2, 3, 5, 5, generator=gen(4))
    expected = normalize(images, MEAN, STD)
    result = normalize(images, MEAN, STD, inplace=True)
    assert result is images and torch.equal(result, expected)
