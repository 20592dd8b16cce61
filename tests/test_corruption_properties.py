"""Property-based tests: every corruption and op, over its whole parameter space and image sizes
(1-pixel images and crops, thin and non-square images, batch size 1, extreme pixel values),
returns finite images in [0, 1] of the promised shape and dtype, or refuses the parameters
with a ValueError that names them."""

from __future__ import annotations

from dataclasses import replace

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ssl_lightning.corruptions import (
    BYOLViews,
    MultiCropViews,
    PatchMask,
    Rotations,
    SimCLRViews,
    ViewTransform,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    resized_crop,
)

# Deterministic (the same examples on every run, no flaky failures), no example database
# written into the checkout, no per-example deadline (CPU speed varies), few examples: fast.
FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None)

KINDS = ("random", "zeros", "ones", "levels")


def make_images(kind: str, batch: int, height: int, width: int, dtype: torch.dtype, seed: int):
    """``[B, 3, H, W]`` images in [0, 1]: noise, all black, all white, or few gray levels
    (channel ties and gray pixels: hue's edge cases)."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 3, height, width)
    if kind == "zeros":
        return torch.zeros(shape, dtype=dtype)
    if kind == "ones":
        return torch.ones(shape, dtype=dtype)
    if kind == "levels":
        return torch.randint(0, 3, shape, generator=g).to(dtype) / 2
    return torch.rand(shape, generator=g, dtype=dtype)


def assert_images(out: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    assert out.shape == shape
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


def bounds(low: float, high: float) -> st.SearchStrategy[tuple[float, float]]:
    """``(min, max)`` pairs with ``low <= min <= max <= high``, equal ends included."""
    value = st.floats(low, high, allow_nan=False)
    return st.tuples(value, value).map(lambda pair: (min(pair), max(pair)))


probability = st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0)
strength = st.sampled_from([0.0]) | st.floats(0.0, 2.0)


@st.composite
def images_and_view(draw: st.DrawFn) -> tuple[torch.Tensor, ViewTransform]:
    """Images of any small size and a ViewTransform with any valid fields for them."""
    height, width = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    images = make_images(
        draw(st.sampled_from(KINDS)),
        draw(st.integers(1, 4)),
        height,
        width,
        draw(st.sampled_from([torch.float32, torch.float64])),
        draw(st.integers(0, 2**16)),
    )
    size = draw(st.none() | st.integers(1, min(height, width)))
    side = min(height, width) if size is None else size
    kernel = draw(st.none() | st.integers(0, side - 1).map(lambda r: 2 * r + 1))
    view = ViewTransform(
        size=size,
        crop_scale=draw(bounds(1e-4, 1.0)),  # down to 1-pixel crops
        crop_ratio=draw(bounds(0.1, 10.0)),
        flip_p=draw(probability),
        jitter_p=draw(probability),
        brightness=draw(strength),
        contrast=draw(strength),
        saturation=draw(strength),
        hue=draw(st.floats(0.0, 0.5)),
        grayscale_p=draw(probability),
        blur_p=draw(probability),
        blur_sigma=draw(bounds(0.01, 5.0)),
        blur_kernel_size=kernel,
        solarize_p=draw(probability),
        solarize_threshold=draw(st.floats(0.0, 1.0)),
    )
    return images, view


EDGE_VIEW = ViewTransform(size=1, crop_scale=(1e-4, 1e-4), jitter_p=1.0, blur_p=1.0, solarize_p=1.0)


@FAST
@given(images_and_view(), st.integers(1, 3), st.integers(0, 2**16))
@example((torch.rand(1, 3, 1, 1), EDGE_VIEW), 1, 0)  # a 1-pixel image, batch size 1
@example((torch.rand(1, 3, 1, 17), replace(EDGE_VIEW, size=None)), 2, 0)  # a 1-pixel-high one
@example((torch.rand(2, 3, 9, 5), EDGE_VIEW), 2, 0)  # 1-pixel crops of a non-square image
# A ratio range far from the image's: the fallback crop once rounded to 0 pixels (NaN views).
@example((torch.rand(1, 3, 1, 1), replace(EDGE_VIEW, crop_ratio=(0.5, 0.5))), 1, 0)
def test_simclr_views(case: tuple[torch.Tensor, ViewTransform], num_views: int, seed: int) -> None:
    images, view = case
    batch_size, _, height, width = images.shape
    labels = torch.arange(batch_size)
    batch = SimCLRViews(num_views, view)(images, labels, torch.Generator().manual_seed(seed))
    side = (height, width) if view.size is None else (view.size, view.size)
    assert len(batch.views) == num_views and torch.equal(batch.labels, labels)
    for out in batch.views:
        assert_images(out, (batch_size, 3, *side), images.dtype)


@FAST
@given(images_and_view(), images_and_view())
def test_byol_views(
    first: tuple[torch.Tensor, ViewTransform], second: tuple[torch.Tensor, ViewTransform]
) -> None:
    images, view1 = first
    batch_size, _, height, width = images.shape
    # The second draw's recipe with the first one's size and kernel, which fit these images.
    view2 = replace(second[1], size=view1.size, blur_kernel_size=view1.blur_kernel_size)
    batch = BYOLViews(view1, view2)(images, torch.zeros(batch_size), torch.Generator())
    side = (height, width) if view1.size is None else (view1.size, view1.size)
    assert len(batch.views) == 2
    for out in batch.views:
        assert_images(out, (batch_size, 3, *side), images.dtype)


@FAST
@given(
    images_and_view(),
    st.integers(1, 3),
    st.integers(0, 3),
    st.none() | st.integers(1, 23),
    bounds(1e-4, 1.0),
)
def test_multicrop_views(
    case: tuple[torch.Tensor, ViewTransform],
    num_global: int,
    num_local: int,
    local_size: int | None,
    local_scale: tuple[float, float],
) -> None:
    images, view = case
    batch_size, _, height, width = images.shape
    view = replace(view, blur_kernel_size=None)  # a fixed kernel may not fit the local size
    global_side = min(height, width) if view.size is None else view.size
    if local_size is not None and local_size >= global_side:
        local_size = None  # MultiCropViews refuses it (tested in test_corruptions)
    corruption = MultiCropViews(num_global, num_local, view, local_size, local_scale)
    batch = corruption(images, torch.zeros(batch_size), torch.Generator().manual_seed(0))
    assert len(batch.views) == num_global + num_local
    global_shape = (height, width) if view.size is None else (view.size, view.size)
    local = local_size if local_size is not None else max(1, round(global_side * 3 / 7))
    for i, out in enumerate(batch.views):
        shape = global_shape if i < num_global else (local, local)
        assert_images(out, (batch_size, 3, *shape), images.dtype)


@FAST
@given(
    patch=st.integers(1, 4),
    grid=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    mask_ratio=st.floats(0.0, 1.0, exclude_min=True, exclude_max=True),
    fill=st.sampled_from(["zero", "noise", "mean"]),
    crop=st.booleans(),
    batch_size=st.integers(1, 4),
    kind=st.sampled_from(KINDS),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
@example(1, (1, 2), 0.5, "mean", False, 1, "random", torch.float32)  # 1-pixel patches, 1x2 image
def test_patch_mask(
    patch: int,
    grid: tuple[int, int],
    mask_ratio: float,
    fill: str,
    crop: bool,
    batch_size: int,
    kind: str,
    dtype: torch.dtype,
) -> None:
    images = make_images(kind, batch_size, grid[0] * patch, grid[1] * patch, dtype, seed=patch)
    # With a view, the images are first cropped to the largest square of whole patches.
    h, w = (min(grid), min(grid)) if crop else grid
    view = ViewTransform(size=h * patch) if crop else None
    corruption = PatchMask(patch, mask_ratio, fill, view)  # type: ignore[arg-type]
    count = round(mask_ratio * h * w)
    if not 0 < count < h * w:  # every image needs hidden and visible patches
        try:
            corruption(images, torch.zeros(batch_size), torch.Generator())
        except ValueError as err:
            assert "mask_ratio" in str(err) and "patch_size" in str(err)
            return
        raise AssertionError(f"mask_ratio={mask_ratio} hiding {count} of {h * w} was accepted")
    batch = corruption(images, torch.zeros(batch_size), torch.Generator().manual_seed(0))
    (masked,) = batch.views
    shape = (batch_size, 3, h * patch, w * patch)
    assert_images(masked, shape, dtype)
    assert batch.mask is not None and batch.clean is not None
    assert batch.mask.shape == (batch_size, h, w) and batch.mask.dtype == torch.bool
    assert batch.mask.sum(dim=(1, 2)).tolist() == [count] * batch_size
    assert_images(batch.clean, shape, dtype)
    if not crop:
        assert torch.equal(batch.clean, images)
    visible = ~batch.mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, None]
    visible = visible.expand_as(masked)
    assert torch.equal(masked[visible], batch.clean[visible])


@FAST
@given(
    side=st.integers(1, 16),
    batch_size=st.integers(1, 4),
    mode=st.sampled_from(["all", "random"]),
    kind=st.sampled_from(KINDS),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    extra=st.integers(0, 5),
    seed=st.integers(0, 2**16),
)
def test_rotations(
    side: int, batch_size: int, mode: str, kind: str, dtype: torch.dtype, extra: int, seed: int
) -> None:
    # Non-square images (extra columns) go through a view that crops them square first.
    images = make_images(kind, batch_size, side, side + extra, dtype, seed)
    view = ViewTransform(size=side) if extra else None
    generator = torch.Generator().manual_seed(seed)
    corruption = Rotations(mode, view)  # type: ignore[arg-type]
    batch = corruption(images, torch.arange(batch_size), generator)
    copies = 4 if mode == "all" else 1
    assert len(batch.views) == copies
    assert batch.targets is not None and batch.targets.shape == (copies * batch_size,)
    assert set(batch.targets.tolist()) <= {0, 1, 2, 3}
    for out in batch.views:
        assert_images(out, (batch_size, 3, side, side), dtype)


# --- the ops, with any parameters ---------------------------------------------------------------


@st.composite
def boxes_for(draw: st.DrawFn, batch: int, height: int, width: int) -> torch.Tensor:
    """``[B, 4]`` (top, left, h, w) boxes inside a ``height x width`` image, 1 pixel or more."""
    rows = []
    for _ in range(batch):
        top, left = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
        rows.append(
            (top, left, draw(st.integers(1, height - top)), draw(st.integers(1, width - left)))
        )
    return torch.tensor(rows)


@FAST
@given(st.data())
def test_resized_crop_stays_in_the_input_range(data: st.DataObject) -> None:
    batch, height, width = (data.draw(st.integers(1, n)) for n in (4, 20, 20))
    images = make_images(data.draw(st.sampled_from(KINDS)), batch, height, width, torch.float32, 0)
    boxes = data.draw(boxes_for(batch, height, width))
    size = (data.draw(st.integers(1, 24)), data.draw(st.integers(1, 24)))
    flip = torch.tensor(data.draw(st.lists(st.booleans(), min_size=batch, max_size=batch)))
    antialias = data.draw(st.booleans())
    out = resized_crop(images, boxes, size, antialias=antialias, flip=flip)
    # A convex combination of input pixels: within the input's range, up to float rounding.
    assert out.shape == (batch, 3, *size) and torch.isfinite(out).all()
    assert out.min() >= images.min() - 1e-6 and out.max() <= images.max() + 1e-6


@FAST
@given(st.data())
def test_color_ops_and_blur_keep_images_in_range(data: st.DataObject) -> None:
    batch, height, width = (data.draw(st.integers(1, n)) for n in (4, 12, 12))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    images = make_images(data.draw(st.sampled_from(KINDS)), batch, height, width, dtype, 1)

    def factors(low: float, high: float) -> torch.Tensor:
        values = st.lists(st.floats(low, high), min_size=batch, max_size=batch)
        return torch.tensor(data.draw(values), dtype=dtype)

    for op, out in [
        ("brightness", adjust_brightness(images, factors(0.0, 3.0))),
        ("contrast", adjust_contrast(images, factors(0.0, 3.0))),
        ("saturation", adjust_saturation(images, factors(0.0, 3.0))),
        ("hue", adjust_hue(images, factors(-0.5, 0.5))),
        ("blur", gaussian_blur(images, factors(0.01, 10.0))),
    ]:
        assert out.shape == images.shape and out.dtype == dtype, op
        assert torch.isfinite(out).all(), op
        assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6, op
