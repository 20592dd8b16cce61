"""The view recipes' defaults and EMP-SSL's optimizer against the papers, with every expected
value written out here from the paper (never read back from the library)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytest
import yaml
from torch import nn

from ssl_lightning import SimCLR
from ssl_lightning.cli import main
from ssl_lightning.corruptions import (
    BYOLViews,
    MultiCropViews,
    SimCLRViews,
    ViewTransform,
)
from ssl_lightning.corruptions.recipes import simclr_view, small_image_byol_views
from ssl_lightning.methods import EMPSSL, FastSiam, SimSiam


def simclr_color_distortion(s: float) -> dict[str, float]:
    """SimCLR, arXiv:2002.05709, Appendix A, ``get_color_distortion(s)``: ``RandomApply(
    [ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s)], p=0.8)`` then ``RandomGrayscale(p=0.2)``."""
    return {
        "brightness": 0.8 * s,
        "contrast": 0.8 * s,
        "saturation": 0.8 * s,
        "hue": 0.2 * s,
        "jitter_p": 0.8,
        "grayscale_p": 0.2,
    }


# Both papers: RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) and a horizontal flip with p 0.5.
CROP_AND_FLIP = {"crop_scale": (0.08, 1.0), "crop_ratio": (3 / 4, 4 / 3), "flip_p": 0.5}
# BYOL, arXiv:2006.07733, Table 6 (shared by both views): jitter (0.4, 0.4, 0.2, 0.1) with
# p 0.8, grayscale p 0.2, blur sigma in [0.1, 2.0]; per view: blur p 1.0 / 0.1, solarize p 0 / 0.2.
BYOL_COMMON = {
    **CROP_AND_FLIP,
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.2,
    "hue": 0.1,
    "jitter_p": 0.8,
    "grayscale_p": 0.2,
    "blur_sigma": (0.1, 2.0),
}
BYOL_VIEW1 = {**BYOL_COMMON, "blur_p": 1.0, "solarize_p": 0.0}
BYOL_VIEW2 = {**BYOL_COMMON, "blur_p": 0.1, "solarize_p": 0.2}


def assert_fields(view: ViewTransform, expected: dict[str, Any]) -> None:
    actual = asdict(view)
    wrong = {k: actual[k] for k, v in expected.items() if actual[k] != pytest.approx(v)}
    assert not wrong, f"{wrong} differ from the paper's {expected}"


def test_simclr_views_default_to_the_papers_cifar_strength_one_half() -> None:
    # The CIFAR-10 recipe (Appendix B.9) is strength 0.5 without blur: (0.4, 0.4, 0.4, 0.1).
    view = SimCLRViews().view
    assert_fields(view, {**CROP_AND_FLIP, **simclr_color_distortion(0.5), "blur_p": 0.0})
    assert (view.brightness, view.contrast, view.saturation, view.hue) == (0.4, 0.4, 0.4, 0.1)
    assert SimCLRViews().num_views == 2
    assert "0.5" in (SimCLRViews.__doc__ or "")  # the docstring says which strength it is


@pytest.mark.parametrize("strength", [0.25, 0.5, 1.0])
def test_simclr_view_follows_the_papers_strength_formula(strength: float) -> None:
    assert_fields(simclr_view(strength), {**CROP_AND_FLIP, **simclr_color_distortion(strength)})
    imagenet = simclr_view(strength, blur_p=0.5, size=16)  # other fields pass through
    assert (imagenet.blur_p, imagenet.size) == (0.5, 16)


def test_simclr_and_simsiam_train_on_the_cifar_recipe() -> None:
    # SimSiam's CIFAR augmentation (arXiv:2011.10566, Appendix, after MoCo v2) is the same.
    tiny = {"backbone": "convnet", "backbone_kwargs": {"width": 4}}
    for model in (SimCLR(**tiny, proj_hidden_dim=8), SimSiam(**tiny)):
        corruption = model.default_corruption()
        assert isinstance(corruption, SimCLRViews)
        assert_fields(corruption.view, {**CROP_AND_FLIP, **simclr_color_distortion(0.5)})


def test_one_field_set_on_the_command_line_keeps_the_other_defaults(capsys) -> None:
    # jsonargparse fills the fields not given from the default recipe, not from ViewTransform's
    # own defaults (which are BYOL's jitter strengths).
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--model=SimCLR",
                "--data=ImageFolderDataModule",
                "--data.data_dir=unused",
                "--data.corruption=SimCLRViews",
                "--data.corruption.view.size=16",
                "--print_config",
            ]
        )
    config = yaml.safe_load(capsys.readouterr().out)
    view = config["data"]["init_args"]["corruption"]["init_args"]["view"]
    assert view["size"] == 16
    jitter = {k: view[k] for k in ("brightness", "contrast", "saturation", "hue")}
    assert jitter == pytest.approx({k: simclr_color_distortion(0.5)[k] for k in jitter})


def test_byol_views_default_to_the_papers_table_6() -> None:
    view1, view2 = BYOLViews().views
    assert_fields(view1, BYOL_VIEW1)
    assert_fields(view2, BYOL_VIEW2)


def test_small_image_byol_views_are_table_6_without_blur() -> None:
    view1, view2 = small_image_byol_views().views
    assert_fields(view1, {**BYOL_VIEW1, "blur_p": 0.0})
    assert_fields(view2, {**BYOL_VIEW2, "blur_p": 0.0})


def test_multicrop_views_default_to_swav() -> None:
    # SwAV, arXiv:2006.09882: SimCLR's distortion at strength 1 with blur p 0.5; 2 global crops
    # from (0.14, 1) of the area, 6 local ones from (0.05, 0.14).
    corruption = MultiCropViews()
    assert (corruption.num_global, corruption.num_local) == (2, 6)
    expected = {**simclr_color_distortion(1.0), "blur_p": 0.5, "flip_p": 0.5}
    assert_fields(corruption.global_view, {**expected, "crop_scale": (0.14, 1.0)})
    assert_fields(corruption.local_view, {**expected, "crop_scale": (0.05, 0.14)})


def test_emp_ssl_patches_follow_the_papers_cifar_code() -> None:
    # EMP-SSL (arXiv:2304.03977), its CIFAR patches: RandomResizedCrop(32, scale=(0.25, 0.25),
    # ratio=(1, 1)), flip p 0.5, ColorJitter(0.4, 0.4, 0.4, 0.2) with p 0.8, grayscale p 0.2,
    # blur p 0.1 with sigma in [0.1, 2.0], solarize p 0.1 (PIL's threshold 128); 20 patches.
    corruption = EMPSSL(backbone="convnet", backbone_kwargs={"width": 4}).default_corruption()
    assert isinstance(corruption, SimCLRViews) and corruption.num_views == 20
    expected = {
        "crop_scale": (0.25, 0.25),
        "crop_ratio": (1.0, 1.0),
        "flip_p": 0.5,
        "brightness": 0.4,
        "contrast": 0.4,
        "saturation": 0.4,
        "hue": 0.2,
        "jitter_p": 0.8,
        "grayscale_p": 0.2,
        "blur_p": 0.1,
        "blur_sigma": (0.1, 2.0),
        "solarize_p": 0.1,
        "solarize_threshold": 0.5,
    }
    assert_fields(corruption.view, expected)


def test_emp_ssl_optimizer_follows_the_papers_cifar_code() -> None:
    # EMP-SSL's main.py: LARS(SGD(lr=0.3, momentum=0.9, weight_decay=1e-4), eta=0.005,
    # clip=True) at batch 100, not scaled, cosine decay; its 4096-4096-1024 projector.
    model = EMPSSL(backbone="convnet", backbone_kwargs={"width": 4})
    assert (model.optimizer_name, model.lr, model.weight_decay) == ("lars", 0.3, 1e-4)
    assert (model.lars_eta, model.lars_clip, model.scale_lr) == (0.005, True, False)
    assert model.momentum == 0.9
    assert [m.out_features for m in model.projector.modules() if isinstance(m, nn.Linear)] == [
        4096,
        4096,
        1024,
    ]


def test_fastsiam_trains_on_four_simclr_views() -> None:
    corruption = FastSiam(backbone="convnet", backbone_kwargs={"width": 4}).default_corruption()
    assert isinstance(corruption, SimCLRViews) and corruption.num_views == 4
    assert_fields(corruption.view, {**CROP_AND_FLIP, **simclr_color_distortion(0.5)})


@pytest.mark.parametrize("method", [EMPSSL, FastSiam])
def test_a_many_view_method_owns_its_number_of_views(method: type) -> None:
    model = method(backbone="convnet", backbone_kwargs={"width": 4}, num_views=6)
    assert model.default_corruption().num_views == 6
    with pytest.raises(ValueError, match="model.num_views=6"):
        model.check_corruption(SimCLRViews(num_views=2))
