"""Batched augmentation ops against torchvision's per-image functional ops."""

import math
from dataclasses import replace

import pytest
import torch
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from ssl_lightning.corruptions import (
    BYOLViews,
    MultiCropViews,
    SimCLRViews,
    ViewTransform,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_kernel_sizes,
    color_jitter,
    gaussian_blur,
    geometry,
    grayscale,
    hflip,
    resized_crop,
    rgb_to_grayscale,
    sample_bernoulli,
    sample_crop_boxes,
    sample_jitter_factors,
    sample_permutations,
    sample_uniform,
    solarize,
)
from ssl_lightning.corruptions import view as view_module

ATOL = 1e-5


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def byol_views(**common) -> BYOLViews:
    """BYOLViews' default per-view recipes, with the fields ``common`` changed in both."""
    view1, view2 = BYOLViews().views
    return BYOLViews(replace(view1, **common), replace(view2, **common))


def multicrop_view(**changes) -> ViewTransform:
    """MultiCropViews' default global recipe with the fields ``changes`` changed."""
    return replace(MultiCropViews().global_view, **changes)


def rand_images(batch: int, height: int = 32, width: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=gen(seed))


def quantized_images(batch: int, seed: int = 0) -> torch.Tensor:
    """Few gray levels, so channel ties and gray pixels (hue's edge cases) are frequent."""
    levels = torch.randint(0, 4, (batch, 3, 8, 8), generator=gen(seed))
    return levels.float() / 3


# --- resized_crop -----------------------------------------------------------------------------


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize(
    ("in_hw", "size"),
    [
        ((32, 32), (32, 32)),  # the CIFAR case: crops upsampled back to the input size
        ((48, 40), (12, 10)),  # downsampling, where antialiasing matters
        ((32, 40), (20, 36)),  # non-square output, mixed up/down per image
        ((24, 24), (7, 50)),  # strongly anisotropic
    ],
)
def test_resized_crop_matches_torchvision(in_hw, size, antialias):
    height, width = in_hw
    images = rand_images(24, height, width)
    boxes = sample_crop_boxes(24, height, width, generator=gen(1))
    # Plus the edge cases: the whole image, a single pixel, a one-pixel-wide strip.
    boxes[:3] = torch.tensor([[0, 0, height, width], [3, 5, 1, 1], [0, width - 1, height, 1]])
    out = resized_crop(images, boxes, size, antialias=antialias)
    expected = torch.stack(
        [
            F.resized_crop(img, *box.tolist(), list(size), InterpolationMode.BILINEAR, antialias)
            for img, box in zip(images, boxes, strict=True)
        ]
    )
    assert out.shape == (24, 3, *size)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize(
    "path", [geometry._resized_crop_per_box, geometry._resized_crop_matmul], ids=["box", "mm"]
)
def test_both_resized_crop_paths_match_torchvision_on_views_with_flips(path, antialias):
    images = rand_images(6, 90, 76)
    boxes = sample_crop_boxes(12, 90, 76, generator=gen(3))  # two views of the batch
    boxes[:3] = torch.tensor([[0, 0, 90, 76], [3, 5, 1, 1], [0, 75, 90, 1]])
    flip = sample_bernoulli(12, 0.5, gen(4))
    flip[:3] = True
    out = path(images, boxes, images.new_empty(12, 3, 64, 70), antialias, flip)
    expected = []
    for i, (box, f) in enumerate(zip(boxes, flip, strict=True)):
        crop = F.resized_crop(
            images[i % 6], *box.tolist(), [64, 70], InterpolationMode.BILINEAR, antialias
        )
        expected.append(F.horizontal_flip(crop) if f else crop)
    torch.testing.assert_close(out, torch.stack(expected), atol=ATOL, rtol=0)


@pytest.mark.parametrize(("size", "per_box"), [(63, False), (64, True)])
def test_resized_crop_resizes_per_box_on_the_cpu_from_64_pixels(size, per_box, monkeypatch):
    called = []
    monkeypatch.setattr(
        geometry, "_resized_crop_per_box", lambda *args: called.append(1) or args[0]
    )
    geometry.resized_crop(rand_images(2, 80, 80), torch.tensor([[0, 0, 80, 80]] * 2), size)
    assert bool(called) == per_box


def test_resized_crop_int_size_is_square_and_flip_is_hflip():
    images = rand_images(16, 32, 40)
    boxes = sample_crop_boxes(16, 32, 40, generator=gen(1))
    flip = sample_bernoulli(16, 0.5, gen(2))
    plain = resized_crop(images, boxes, 24)
    assert plain.shape == (16, 3, 24, 24)
    flipped = resized_crop(images, boxes, 24, flip=flip)
    torch.testing.assert_close(flipped, hflip(plain, flip), atol=ATOL, rtol=0)


def test_hflip_matches_torchvision_and_keeps_the_rest():
    images = rand_images(16)
    flip = sample_bernoulli(16, 0.5, gen(1))
    out = hflip(images, flip)
    for img, got, f in zip(images, out, flip, strict=True):
        assert torch.equal(got, F.horizontal_flip(img) if f else img)


# --- sample_crop_boxes ------------------------------------------------------------------------


def test_crop_boxes_inside_image_and_in_range():
    height, width = 600, 800  # large, so rounding to whole pixels barely moves area and ratio
    boxes = sample_crop_boxes(4000, height, width, (0.08, 1.0), (3 / 4, 4 / 3), gen())
    assert boxes.dtype == torch.long and boxes.shape == (4000, 4)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    area = (h * w).double() / (height * width)
    ratio = w.double() / h.double()
    assert area.min() >= 0.08 - 0.005 and area.max() <= 1.0 + 0.005
    assert ratio.min() >= 3 / 4 - 0.01 and ratio.max() <= 4 / 3 + 0.01
    # Every image draws its own box.
    assert len({tuple(b) for b in boxes.tolist()}) > 3900


def crop_features(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per box: top, left, h, w, area, log aspect ratio, full height, full width."""
    top, left, h, w = boxes.double().unbind(1)
    return torch.stack(
        [top, left, h, w, h * w, (w / h).log(), (h == height).double(), (w == width).double()], 1
    )


@pytest.mark.parametrize(("height", "width"), [(32, 32), (24, 40)])
def test_crop_box_statistics_match_torchvision(height, width):
    """Box statistics of ours vs torchvision's get_params (rounding and fallback included)."""
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    ours = crop_features(
        sample_crop_boxes(20000, height, width, scale, ratio, gen()), height, width
    )
    torch.manual_seed(0)
    image = torch.empty(3, height, width)
    theirs = torch.tensor(
        [RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(4000)]
    )
    theirs = crop_features(theirs, height, width)
    # Four standard errors of the difference of the two means.
    tolerance = 4 * (ours.var(0) / len(ours) + theirs.var(0) / len(theirs)).sqrt() + 1e-9
    assert ((ours.mean(0) - theirs.mean(0)).abs() <= tolerance).all()


@pytest.mark.parametrize(("scale", "ratio"), [((0.9, 1.0), (3.0, 4.0)), ((0.9, 1.0), (0.2, 0.3))])
def test_crop_box_fallback_is_torchvision_center_crop(scale, ratio):
    """No attempt can fit: both give the centered crop clamped to the ratio range."""
    height, width = 30, 36
    boxes = sample_crop_boxes(8, height, width, scale, ratio, gen())
    expected = RandomResizedCrop.get_params(torch.empty(3, height, width), scale, ratio)
    assert (boxes == torch.tensor(expected)).all()


# --- color ops --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs", "low", "high"),
    [
        (adjust_brightness, F.adjust_brightness, 0.0, 2.0),
        (adjust_contrast, F.adjust_contrast, 0.0, 2.0),
        (adjust_saturation, F.adjust_saturation, 0.0, 2.0),
        (adjust_hue, F.adjust_hue, -0.5, 0.5),
    ],
)
@pytest.mark.parametrize("make_images", [rand_images, quantized_images])
def test_color_op_matches_torchvision(ours, theirs, low, high, make_images):
    images = make_images(32)
    factor = torch.rand(32, generator=gen(1)) * (high - low) + low
    factor[:2] = torch.tensor([low, high])
    out = ours(images, factor)
    expected = torch.stack([theirs(img, float(f)) for img, f in zip(images, factor, strict=True)])
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_rgb_to_grayscale_matches_torchvision():
    images = rand_images(8)
    torch.testing.assert_close(
        rgb_to_grayscale(images), F.rgb_to_grayscale(images), atol=ATOL, rtol=0
    )


def test_grayscale_only_where_applied():
    images = rand_images(16)
    apply = sample_bernoulli(16, 0.5, gen(1))
    out = grayscale(images, apply)
    assert out.shape == images.shape
    for img, got, a in zip(images, out, apply, strict=True):
        if a:
            expected = F.rgb_to_grayscale(img, num_output_channels=3)
            torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
        else:
            assert torch.equal(got, img)


TV_JITTER = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)


def test_color_jitter_applies_ops_in_each_images_order():
    batch = 48
    images = rand_images(batch)
    factors = sample_jitter_factors(batch, 0.4, 0.4, 0.4, 0.3, gen(1))
    order = sample_permutations(batch, 4, gen(2))
    apply = sample_bernoulli(batch, 0.75, gen(3))
    out = color_jitter(images, factors, order, apply)
    for i in range(batch):
        expected = images[i]
        if apply[i]:
            for op in order[i].tolist():
                expected = TV_JITTER[op](expected, float(factors[i, op]))
            torch.testing.assert_close(out[i], expected, atol=ATOL, rtol=0)
        else:
            assert torch.equal(out[i], images[i])  # bit for bit


def test_color_jitter_order_matters():
    images = rand_images(1).expand(24, -1, -1, -1)
    factors = torch.tensor([[1.4, 0.6, 1.3, 0.25]]).expand(24, -1)
    # All 24 permutations of four ops: most give distinct results.
    order = torch.cartesian_prod(*[torch.arange(4)] * 4)
    order = order[torch.tensor([len(set(p.tolist())) == 4 for p in order])]
    out = color_jitter(images, factors, order, torch.ones(24, dtype=torch.bool))
    distinct = {tuple(o.flatten()[:64].mul(1e4).round().tolist()) for o in out}
    assert len(distinct) > 12


def test_color_jitter_skips_identity_factors_like_colorjitter():
    images = rand_images(8)
    factors = sample_jitter_factors(8, 0.4, 0.4, 0.2, 0.0, gen(1))  # hue strength 0
    assert (factors[:, 3] == 0).all()
    order = sample_permutations(8, 4, gen(2))
    out = color_jitter(images, factors, order, torch.ones(8, dtype=torch.bool))
    for i in range(8):
        expected = images[i]
        for op in order[i].tolist():
            if op != 3:  # ColorJitter(hue=0) never calls adjust_hue
                expected = TV_JITTER[op](expected, float(factors[i, op]))
        torch.testing.assert_close(out[i], expected, atol=ATOL, rtol=0)


# --- gaussian blur and solarization ----------------------------------------------------------


def test_blur_kernel_sizes_cover_three_sigma_and_fit_the_image():
    sigma = torch.tensor([0.1, 0.33, 1.0, 1.01, 2.0, 5.0])
    assert blur_kernel_sizes(sigma).tolist() == [3, 3, 7, 9, 13, 31]
    assert blur_kernel_sizes(sigma, max_size=16).tolist() == [3, 3, 7, 9, 13, 15]


@pytest.mark.parametrize(
    ("height", "width", "kernel_size"),
    [
        (32, 32, None),  # sizes derived from each sigma: 3 to 13 taps
        (20, 28, None),  # non-square
        (32, 32, 23),  # BYOL's fixed kernel, wider than most sigmas need
        (6, 9, None),  # large sigmas on a tiny image: kernels capped to 11 taps (radius 5)
        (6, 9, 11),  # the largest kernel reflect padding allows on 6 rows
    ],
)
def test_gaussian_blur_matches_torchvision(height, width, kernel_size):
    images = rand_images(24, height, width)
    sigma = sample_uniform(24, (0.1, 3.0), gen(1))
    sigma[:2] = torch.tensor([0.1, 3.0])
    out = gaussian_blur(images, sigma, kernel_size)
    sizes = blur_kernel_sizes(sigma, 2 * min(height, width) - 1)
    if kernel_size is not None:
        sizes = torch.full_like(sizes, kernel_size)
    expected = torch.stack(
        [
            F.gaussian_blur(img, [int(k)] * 2, [float(s)] * 2)
            for img, s, k in zip(images, sigma, sizes, strict=True)
        ]
    )
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_gaussian_blur_per_image_kernel_sizes_and_subset():
    images = rand_images(12, 16, 16)
    sigma = sample_uniform(12, (0.5, 2.0), gen(1))
    sizes = torch.tensor([1, 3, 5, 7, 9, 11, 13, 15, 3, 5, 7, 9])
    apply = sample_bernoulli(12, 0.5, gen(2))
    out = gaussian_blur(images, sigma, sizes, apply=apply)
    for i in range(12):
        if apply[i]:
            expected = F.gaussian_blur(images[i], [int(sizes[i])] * 2, [float(sigma[i])] * 2)
            torch.testing.assert_close(out[i], expected, atol=ATOL, rtol=0)
        else:
            assert torch.equal(out[i], images[i])  # bit for bit


def test_gaussian_blur_bad_arguments_name_the_fix():
    images = rand_images(2, 8, 8)
    with pytest.raises(ValueError, match="blur_kernel_size=4"):
        gaussian_blur(images, torch.ones(2), 4)
    with pytest.raises(ValueError, match="blur_kernel_size=17 is invalid for 8x8"):
        gaussian_blur(images, torch.ones(2), 17)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(images, torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 1.0])
def test_solarize_matches_torchvision_where_applied(threshold):
    images = quantized_images(16)  # exact 0, 1/3, 2/3, 1: pixels equal to the threshold occur
    apply = sample_bernoulli(16, 0.5, gen(1))
    out = solarize(images, threshold, apply)
    for img, got, a in zip(images, out, apply, strict=True):
        assert torch.equal(got, F.solarize(img, threshold) if a else img)


# --- samplers ---------------------------------------------------------------------------------


def test_jitter_factor_ranges_and_permutations():
    factors = sample_jitter_factors(5000, 0.4, 1.5, 0.2, 0.1, gen())
    low = torch.tensor([0.6, 0.0, 0.8, -0.1])
    high = torch.tensor([1.4, 2.5, 1.2, 0.1])
    assert (factors >= low).all() and (factors <= high).all()
    # Uniform: the mean sits mid-range and the extremes are reached.
    torch.testing.assert_close(factors.mean(0), (low + high) / 2, atol=0.03, rtol=0)
    assert ((factors.amin(0) - low) < 0.01).all() and ((high - factors.amax(0)) < 0.01).all()
    order = sample_permutations(500, 4, gen())
    assert (order.sort(1).values == torch.arange(4)).all()
    assert len({tuple(o) for o in order.tolist()}) == 24


def test_bernoulli_rate():
    mask = sample_bernoulli(20000, 0.3, gen())
    assert mask.dtype == torch.bool and abs(mask.float().mean().item() - 0.3) < 0.015
    assert not sample_bernoulli(100, 0.0, gen()).any() and sample_bernoulli(100, 1.0, gen()).all()


# --- ViewTransform and SimCLRViews ------------------------------------------------------------


def test_every_image_draws_its_own_parameters():
    images = rand_images(1).expand(32, -1, -1, -1)  # the same image 32 times
    views = ViewTransform()(images, gen())
    distinct = {tuple(v.flatten()[:64].mul(1e4).round().tolist()) for v in views}
    assert len(distinct) == 32


def test_same_seed_same_views_other_seed_other_views():
    images = rand_images(16)
    corruption = SimCLRViews()
    labels = torch.arange(16)
    a = corruption(images, labels, gen(7))
    b = corruption(images, labels, gen(7))
    c = corruption(images, labels, gen(8))
    assert all(torch.equal(x, y) for x, y in zip(a.views, b.views, strict=True))
    assert not torch.equal(a.views[0], c.views[0])


def _tv_view(image, box, flip, jitter, factors, order, gray, size, blur=None, solar=None):
    """torchvision's per-image functional ops with the given parameters, in recipe order."""
    out = F.resized_crop(image, *box.tolist(), [size, size], InterpolationMode.BILINEAR, True)
    out = F.to_dtype(out, torch.float32, scale=True)  # uint8 crops become floats in [0, 1]
    if flip:
        out = F.horizontal_flip(out)
    if jitter:
        for op in order.tolist():
            out = TV_JITTER[op](out, float(factors[op]))
    if gray:
        out = F.rgb_to_grayscale(out, num_output_channels=3)
    if blur is not None:
        out = F.gaussian_blur(out, [blur[1]] * 2, [blur[0]] * 2)
    if solar is not None:
        out = F.solarize(out, solar)
    return out


@pytest.mark.parametrize("uint8", [False, True], ids=["float", "uint8"])
@pytest.mark.parametrize("one_at_a_time", [False, True], ids=["batched", "per-view"])
def test_view_transform_equals_torchvision_per_image_with_the_same_parameters(
    one_at_a_time, uint8, monkeypatch
):
    """The whole recipe, blur and solarization included, against torchvision image by image,
    on both CPU paths: every op batched, and one view at a time through every op. From uint8
    images at a size where crops are resized per box: torchvision's uint8 resize, then floats."""
    monkeypatch.setattr(view_module, "PER_VIEW_MIN_PIXELS", 0 if one_at_a_time else 1 << 62)
    batch, (height, width, size) = 32, ((80, 72, 64) if uint8 else (32, 40, 24))
    images = rand_images(batch, height, width)
    if uint8:
        images = images.mul(255).round_().to(torch.uint8)
    view = ViewTransform(size=size, hue=0.3, blur_p=0.6, solarize_p=0.5, solarize_threshold=0.6)
    out = view(images, gen(5))
    assert out.dtype == torch.float32
    # Draw the parameters again, in the order ViewTransform draws them.
    g = gen(5)
    boxes = sample_crop_boxes(batch, height, width, view.crop_scale, view.crop_ratio, g)
    flip = sample_bernoulli(batch, view.flip_p, g)
    jitter = sample_bernoulli(batch, view.jitter_p, g)
    factors = sample_jitter_factors(batch, 0.4, 0.4, 0.2, 0.3, g)
    order = sample_permutations(batch, 4, g)
    gray = sample_bernoulli(batch, view.grayscale_p, g)
    blur = sample_bernoulli(batch, view.blur_p, g)
    sigma = sample_uniform(batch, view.blur_sigma, g)
    solar = sample_bernoulli(batch, view.solarize_p, g)
    kernel = blur_kernel_sizes(sigma)
    assert blur.any() and (~blur).any() and solar.any() and (~solar).any()
    for i in range(batch):
        expected = _tv_view(
            images[i],
            boxes[i],
            flip[i],
            jitter[i],
            factors[i],
            order[i],
            gray[i],
            size,
            (float(sigma[i]), int(kernel[i])) if blur[i] else None,
            0.6 if solar[i] else None,
        )
        torch.testing.assert_close(out[i], expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("size", "one_at_a_time"), [(159, False), (160, True)])
def test_a_cpu_augments_views_of_160_pixels_or_more_one_at_a_time(size, one_at_a_time):
    calls = []
    transform = ViewTransform(size=size)
    augment = transform._augment
    object.__setattr__(transform, "_augment", lambda *a, **k: calls.append(1) or augment(*a, **k))
    views = transform(rand_images(2, 162, 162), gen(), num_views=3)
    assert views.shape == (6, 3, size, size)
    assert len(calls) == (6 if one_at_a_time else 1)


@pytest.mark.parametrize("uint8", [False, True], ids=["float", "uint8"])
def test_both_cpu_paths_give_the_same_views_of_every_image_for_several_views(uint8, monkeypatch):
    """View ``i`` of the one-at-a-time path reads image ``i % B``, as the batched path does
    (from uint8 images at a size whose crops are resized as uint8 on both paths)."""
    size = 64 if uint8 else 24
    images = rand_images(3, size + 6, size + 2)
    if uint8:
        images = images.mul(255).round_().to(torch.uint8)
    transform = ViewTransform(size=size, hue=0.3, blur_p=0.5, solarize_p=0.5)
    views = {}
    for name, threshold in (("per-view", 0), ("batched", 1 << 62)):
        monkeypatch.setattr(view_module, "PER_VIEW_MIN_PIXELS", threshold)
        views[name] = transform(images, gen(7), num_views=4)
    assert views["per-view"].shape == (12, 3, size, size)
    torch.testing.assert_close(views["per-view"], views["batched"], atol=1e-6, rtol=0)


def test_blur_and_solarize_parameters_differ_per_image():
    images = rand_images(1).expand(32, -1, -1, -1)
    only_blur = ViewTransform(crop_scale=(1.0, 1.0), flip_p=0, jitter_p=0, grayscale_p=0, blur_p=1)
    blurred = only_blur(images, gen())
    distinct = {tuple(v.flatten()[:64].mul(1e4).round().tolist()) for v in blurred}
    assert len(distinct) == 32  # one sigma per image
    only_solarize = replace(only_blur, blur_p=0.0, solarize_p=0.5)
    solarized = only_solarize(images, gen())
    changed = (solarized != images).flatten(1).any(1)
    assert 4 < changed.sum() < 28  # some images solarized, others not


def test_off_ops_draw_nothing_so_older_recipes_keep_their_views():
    images = rand_images(8)
    plain = ViewTransform()(images, gen(3))
    off = ViewTransform(blur_p=0.0, solarize_p=0.0, blur_kernel_size=5)(images, gen(3))
    assert torch.equal(plain, off)


def test_byol_views_are_asymmetric_with_the_papers_probabilities():
    corruption = byol_views(size=16)
    first, second = corruption.views
    assert (first.blur_p, second.blur_p) == (1.0, 0.1)
    assert (first.solarize_p, second.solarize_p) == (0.0, 0.2)
    assert first.crop_scale == second.crop_scale == (0.08, 1.0) and first.size == 16
    images = rand_images(8)
    batch = corruption(images, torch.arange(8), gen(1))
    # Each view is its own recipe applied with the shared generator, in view order. The expected
    # views come from ViewTransform itself: it is checked against torchvision image by image in
    # test_view_transform_equals_torchvision_per_image_with_the_same_parameters, so this test
    # checks only the composition; the recipes' values are the paper's in test_recipe_defaults.
    g = gen(1)
    expected = [first(images, g), second(images, g)]
    assert all(torch.equal(a, b) for a, b in zip(batch.views, expected, strict=True))
    assert torch.equal(batch.labels, torch.arange(8))


def test_byol_second_view_solarizes_about_a_fifth_of_the_images():
    # Flat mid-gray images: every view is the same gray unless solarized (0.6 -> 0.4).
    images = torch.full((2000, 3, 8, 8), 0.6)
    corruption = byol_views(jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    first, second = corruption(images, torch.zeros(2000), gen()).views
    assert (first - 0.6).abs().max() < 1e-5
    solarized = ((second - 0.4).abs() < 1e-5).flatten(1).all(1).float().mean()
    assert abs(solarized.item() - 0.2) < 0.03


def test_multicrop_views_global_then_local():
    corruption = MultiCropViews(
        num_global=2, num_local=3, global_view=multicrop_view(blur_p=0.0), local_size=12
    )
    images = rand_images(4, 32, 32)
    batch = corruption(images, torch.arange(4), gen())
    assert [tuple(v.shape) for v in batch.views] == [(4, 3, 32, 32)] * 2 + [(4, 3, 12, 12)] * 3
    assert corruption.local_view.crop_scale == (0.05, 0.14)
    assert corruption.global_view.crop_scale == (0.14, 1.0)
    assert all(v.min() >= 0.0 and v.max() <= 1.0 for v in batch.views)
    # The default local size is SwAV's 96/224 of the global size.
    sizes = {
        v.shape[-1]
        for v in MultiCropViews(global_view=multicrop_view(size=28))(
            images, torch.arange(4), gen()
        ).views
    }
    assert sizes == {28, 12}


def test_multicrop_global_size_larger_than_the_images_names_both():
    corruption = MultiCropViews(global_view=multicrop_view(size=64), local_size=24)
    with pytest.raises(ValueError, match=r"global_size=64 is larger than the 32x32") as info:
        corruption(rand_images(2), torch.zeros(2), gen())
    assert "data.image_size" in str(info.value)
    with pytest.raises(ValueError, match=r"size=48 is larger than the 32x40"):
        SimCLRViews(view=ViewTransform(size=48))(rand_images(2, 32, 40), torch.zeros(2), gen())
    with pytest.raises(ValueError, match=r"local_size=32 must be smaller than global_size=32"):
        MultiCropViews(global_view=multicrop_view(size=32), local_size=32)


@pytest.mark.parametrize(("num_views", "size"), [(2, None), (3, 16)])
def test_simclr_views(num_views, size):
    images = rand_images(8, 32, 40)
    labels = torch.arange(8)
    batch = SimCLRViews(num_views=num_views, view=ViewTransform(size=size))(images, labels, gen())
    expected_hw = (32, 40) if size is None else (size, size)
    assert len(batch.views) == num_views
    assert torch.equal(batch.labels, labels)
    for view in batch.views:
        assert view.shape == (8, 3, *expected_hw) and view.dtype == images.dtype
        assert view.min() >= 0.0 and view.max() <= 1.0
    assert not torch.equal(batch.views[0], batch.views[1])


def test_view_transform_float64():
    images = rand_images(4).double()
    assert ViewTransform(size=16)(images, gen()).dtype == torch.float64


# --- argument validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_views": 0}, "num_views"),
        ({"size": 0}, "size"),
        ({"flip_p": 1.5}, "flip_p"),
        ({"jitter_p": -0.1}, "jitter_p"),
        ({"grayscale_p": 2.0}, "grayscale_p"),
        ({"crop_scale": (0.5, 0.1)}, "crop_scale"),
        ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
        ({"crop_ratio": (-1.0, 1.0)}, "crop_ratio"),
        ({"brightness": -0.1}, "brightness"),
        ({"contrast": -1.0}, "contrast"),
        ({"saturation": -0.5}, "saturation"),
        ({"hue": 0.6}, "hue"),
        ({"hue": -0.1}, "hue"),
        ({"blur_p": 1.1}, "blur_p"),
        ({"blur_sigma": (2.0, 1.0)}, "blur_sigma"),
        ({"blur_kernel_size": 4}, "blur_kernel_size"),
        ({"blur_kernel_size": 0}, "blur_kernel_size"),
    ],
)
def test_bad_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name) as info:
        if "num_views" in kwargs:
            SimCLRViews(**kwargs)
        else:
            SimCLRViews(view=ViewTransform(**kwargs))
    # The message also shows the bad value.
    value = next(iter(kwargs.values()))
    assert repr(value) in str(info.value)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ViewTransform(solarize_p=-0.2), r"solarize_p=-0.2 is not a probability"),
        (lambda: ViewTransform(solarize_threshold=1.5), r"solarize_threshold=1.5"),
        (
            lambda: BYOLViews(view2=ViewTransform(blur_p=1.5)),
            r"blur_p=1.5 is not a probability",
        ),
        (lambda: BYOLViews(view1=ViewTransform(solarize_p=-0.1)), r"solarize_p=-0.1"),
        (
            lambda: MultiCropViews(global_view=multicrop_view(blur_p=2.0)),
            r"blur_p=2.0 is not a probability",
        ),
        (lambda: MultiCropViews(num_global=0), r"num_global=0"),
        (lambda: MultiCropViews(num_local=-1), r"num_local=-1"),
        (lambda: MultiCropViews(local_scale=(0.5, 0.1)), r"crop_scale"),
    ],
)
def test_bad_recipe_arguments_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_sampler_arguments_raise():
    with pytest.raises(ValueError, match="p=1.2"):
        sample_bernoulli(4, 1.2, gen())
    with pytest.raises(ValueError, match="scale"):
        sample_crop_boxes(4, 32, 32, scale=(1.0, 0.5))
    with pytest.raises(ValueError, match="ratio"):
        sample_crop_boxes(4, 32, 32, ratio=(0.0, 1.0))
    with pytest.raises(ValueError, match="hue"):
        sample_jitter_factors(4, hue=0.75)


def test_repr_shows_the_recipe():
    assert "num_views=3" in repr(SimCLRViews(num_views=3))
    assert math.isclose(SimCLRViews().view.crop_ratio[1], 4 / 3)


def test_public_ops_leave_their_input_untouched():
    images = rand_images(8)
    before = images.clone()
    ones = torch.ones(8, dtype=torch.bool)
    factor = torch.full((8,), 0.3)
    adjust_brightness(images, factor)
    adjust_contrast(images, factor)
    adjust_saturation(images, factor)
    adjust_hue(images, factor)
    color_jitter(images, factor[:, None].expand(-1, 4), sample_permutations(8, 4, gen()), ones)
    grayscale(images, ones)
    gaussian_blur(images, factor + 1.0)
    solarize(images, 0.5, ones)
    hflip(images, ones)
    resized_crop(images, sample_crop_boxes(8, 32, 32, generator=gen()), 16, flip=ones)
    assert torch.equal(images, before)


@pytest.mark.parametrize(
    "corruption",
    [
        SimCLRViews(view=ViewTransform(size=16)),
        byol_views(size=16),
        MultiCropViews(num_local=2, global_view=multicrop_view(solarize_p=0.5)),
    ],
)
def test_views_stay_on_the_images_device(corruption):
    """Meta tensors fail on any op that mixes in a parameter left on the CPU."""
    images = torch.empty(8, 3, 32, 32, device="meta")
    batch = corruption(images, torch.zeros(8, dtype=torch.long), gen())
    assert all(v.device.type == "meta" and v.shape[0] == 8 for v in batch.views)
