"""The contract every method the package exports honours, so a new method is tested by being
exported from ``ssl_lightning.methods``: a finite loss, the step's ``features [N, D]`` and
``labels [N]`` for the callbacks, a gradient on every trainable parameter, the settings it owns
checked against a configured corruption, a short fit from the command line, a run resumed from
a checkpoint that ends where an uninterrupted one does, and a few steps on the real images that
lower the loss."""

from __future__ import annotations

import copy
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from ssl_lightning import methods
from ssl_lightning.cli import main
from ssl_lightning.corruptions import BYOLViews, Corruption, ViewTransform, normalize
from ssl_lightning.datamodules import ImageFolderDataModule
from ssl_lightning.methods import SSLMethod
from tests.helpers import SAMPLE, sample_fit_args, tiny_trainer
from tests.resume_utils import assert_same_state, straight_and_resumed

METHODS = [
    cls
    for cls in (getattr(methods, name) for name in methods.__all__)
    if isinstance(cls, type) and issubclass(cls, SSLMethod) and cls is not SSLMethod
]
# Tiny backbones of each kind, tried in order: a method that needs another kind of backbone
# (MAE needs a ViT) refuses the first with a TypeError.
TINY_BACKBONES: list[tuple[str, dict[str, Any]]] = [
    ("convnet", {"width": 4}),
    ("vit_tiny", {"dim": 32, "depth": 1, "num_heads": 2}),
]


def test_method_classes_lists_every_exported_method() -> None:
    assert methods.method_classes() == {cls.__name__: cls for cls in METHODS}


def _tiny(
    method: type[SSLMethod],
    backbones: list[tuple[str, dict[str, Any]]] = TINY_BACKBONES,
    **settings: Any,
) -> tuple[SSLMethod, str, dict[str, Any]]:
    refusals = []
    for name, kwargs in backbones:
        try:
            return method(backbone=name, backbone_kwargs=kwargs, **settings), name, kwargs
        except TypeError as err:
            refusals.append(f"{name}: {err}")
    pytest.fail(f"{method.__name__} accepts none of the tiny backbones: {refusals}")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def sample_images(cache_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    dm = ImageFolderDataModule(SAMPLE, cache_dir=cache_dir)
    dm.setup("fit")
    assert dm.train_set is not None
    return dm.train_set.images[:8].float() / 255, dm.train_set.labels[:8]


def test_every_exported_method_is_covered() -> None:
    assert {m.__name__ for m in METHODS} >= {
        "SimCLR",
        "MAE",
        "MaskedReconstruction",
        "RotationPrediction",
    }


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_training_step_contract(
    method: type[SSLMethod], sample_images: tuple[torch.Tensor, torch.Tensor]
) -> None:
    torch.manual_seed(0)
    model, _, _ = _tiny(method)
    model.log = lambda *args, **kwargs: None  # type: ignore[method-assign]  # no Trainer
    images, labels = sample_images
    corruption = model.default_corruption()
    model.check_corruption(corruption)  # the default agrees with the method's own settings
    batch = corruption(images, labels, torch.Generator().manual_seed(0))
    batch = batch.map_images(lambda t: normalize(t, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    out = model.training_step(batch, 0)

    loss, features, step_labels = out["loss"], out["features"], out["labels"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert features.ndim == 2 and features.shape[1] == model.num_features
    assert step_labels.shape == (features.shape[0],) and step_labels.dtype == torch.long
    assert set(step_labels.tolist()) <= set(labels.tolist())
    assert not features.requires_grad and torch.isfinite(features).all()
    loss.backward()
    without = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
    ]
    assert not without, f"no finite gradient for {without}"


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_short_fit_from_the_command_line(method: type[SSLMethod], tmp_path: Path) -> None:
    model, backbone, kwargs = _tiny(method)
    main(
        sample_fit_args(
            tmp_path,
            method.__name__,
            f"--model.backbone={backbone}",
            f"--model.backbone_kwargs={json.dumps(kwargs)}",
        )
    )
    ckpt = next(tmp_path.rglob("*.ckpt"))
    assert "step=2" in ckpt.name
    saved = torch.load(ckpt, weights_only=False)
    assert saved["export_module"] == method.export_module
    assert saved["ImageFolderDataModule"]["corruption"] == repr(model.default_corruption())


# --- training on the real images ---------------------------------------------------------------

# The backbones of the runs below: the narrowest convnet with which every method's loss drops
# within its steps, and the tiny ViT.
FIT_BACKBONES: list[tuple[str, dict[str, Any]]] = [("convnet", {"width": 8}), TINY_BACKBONES[1]]
# Small heads, given to a method that takes an argument of that name.
TINY_HEADS: dict[str, Any] = {
    "proj_hidden_dim": 32,
    "proj_output_dim": 16,
    "pred_hidden_dim": 32,
    "num_prototypes": 64,
    "proj_bottleneck_dim": 16,
    "head_hidden_dim": 64,
    "decoder_dim": 32,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
    "decoder_channels": 16,
}
# Two 16-pixel views, a quarter of the pixels of the 32-pixel defaults.
SMALL_VIEWS = BYOLViews(
    view1=ViewTransform(size=16, blur_p=1.0),
    view2=ViewTransform(size=16, blur_p=0.1, solarize_p=0.2),
)
# AdamW without warmup or weight decay learns in a few steps, where the methods' own LARS or SGD
# with epochs of warmup barely moves.
FAST_ADAMW: dict[str, Any] = {
    "optimizer": "adamw",
    "lr": 1e-2,
    "weight_decay": 0.0,
    "warmup_epochs": 0,
}


@dataclass(frozen=True)
class Recipe:
    """A method's runs on the image sample.

    ``fit``: its settings for the loss test, ``steps`` steps of ``batch_size`` images, after
    which the loss on a fixed batch is more than ``min_drop`` below the initial one (and under
    ``max_ratio`` times it, when set). ``resume``: its settings for the resume test (its own
    optimizer and schedule by default). ``corruption``: of both (``None``: the method's default).
    ``metrics``: logged as ``train/<name>`` besides the loss and the step's metrics.
    ``final_targets``: the initial model is scored with the trained one's targets (the state
    gradients do not train: teacher, center), for a loss whose targets move with training.
    """

    fit: dict[str, Any] = field(default_factory=lambda: dict(FAST_ADAMW))
    resume: dict[str, Any] = field(default_factory=dict)
    corruption: Corruption | None = None
    steps: int = 10
    batch_size: int = 16
    min_drop: float = 0.1
    max_ratio: float | None = None
    metrics: frozenset[str] = frozenset()
    final_targets: bool = False


# By class name; "default" for a method not named. Each runs the fewest steps and images that
# clear its threshold with a margin, to keep the tests fast; measured losses: initial -> trained.
RECIPES: dict[str, Recipe] = {
    "default": Recipe(),
    # Barlow Twins and VICReg add up terms of arbitrary scale: a share of the loss, not a fixed
    # drop. They learn from 16-pixel views, with 32 images for the statistics over the batch;
    # their resume runs take their own LARS at a larger lr, so that the few steps change the
    # weights measurably.
    "BarlowTwins": Recipe(
        fit={**FAST_ADAMW, "lr": 3e-2},
        resume={"lr": 0.5},
        corruption=SMALL_VIEWS,
        batch_size=32,
        min_drop=0.0,
        max_ratio=0.8,  # 0.82 -> 0.60
        metrics=frozenset({"on_diag", "off_diag"}),
    ),
    "VICReg": Recipe(
        fit={**FAST_ADAMW, "lr": 2e-2},
        resume={"lr": 0.5},
        corruption=SMALL_VIEWS,
        batch_size=32,
        steps=12,
        min_drop=0.0,
        max_ratio=0.9,  # 37.7 -> 32.0
        metrics=frozenset({"invariance", "variance", "covariance"}),
    ),
    # BYOL and DINO do not clear their thresholds with 16 images a step.
    "BYOL": Recipe(batch_size=32, steps=8, min_drop=0.4),  # 4.66 -> 4.05
    # The center follows the teacher's mean, which changes the targets and raises their entropy
    # (the loss's floor): on a fixed batch the loss is not monotone over a few steps, so the
    # initial and the trained student are scored against the final teacher and center. One
    # teacher temperature with and without a trainer; the last layer learns from the first step.
    "DINO": Recipe(
        fit={
            **FAST_ADAMW,
            "teacher_temp": 0.04,
            "warmup_teacher_temp_epochs": 0,
            "freeze_last_layer_epochs": 0,
        },
        batch_size=32,
        steps=6,
        final_targets=True,  # 2.10 -> 1.76
    ),
    # MAE's recipe scales its lr for 4096 images and warms up for 40 epochs.
    "MAE": Recipe(
        fit={"lr": 2e-3, "warmup_epochs": 0, "scale_lr": False, "weight_decay": 0.0},
        steps=6,
        min_drop=0.2,  # 1.74 -> 1.19
    ),
    # Small holes are learned within 5 steps; the default quadrant takes longer.
    "MaskedReconstruction": Recipe(
        fit={**FAST_ADAMW, "patch_size": 4, "mask_ratio": 0.5},
        steps=5,
        min_drop=0.2,  # 1.34 -> 0.82
    ),
    "MoCoV3": Recipe(steps=8),  # 2.67 -> 2.49
    "RotationPrediction": Recipe(steps=12, min_drop=0.15),  # 1.48 -> 1.27
    "SimCLR": Recipe(fit={**FAST_ADAMW, "lr": 4e-2}),  # 3.11 -> 2.67
    # The negative cosine starts near 0; a large lr separates it from there in a few steps.
    "SimSiam": Recipe(fit={**FAST_ADAMW, "lr": 0.1}, steps=6),  # 0.06 -> -0.21
    "FastSiam": Recipe(fit={**FAST_ADAMW, "lr": 0.1}, steps=6),
}


def _recipe(method: type[SSLMethod]) -> Recipe:
    return RECIPES.get(method.__name__, RECIPES["default"])


def _small(
    method: type[SSLMethod], backbones: list[tuple[str, dict[str, Any]]], **settings: Any
) -> SSLMethod:
    """``method`` on one of ``backbones``, with the small heads it takes and ``settings``."""
    names = inspect.signature(method.__init__).parameters
    heads = {name: value for name, value in TINY_HEADS.items() if name in names}
    return _tiny(method, backbones, **heads, **settings)[0]


def test_every_recipe_names_an_exported_method() -> None:
    assert set(RECIPES) - {"default"} <= {m.__name__ for m in METHODS}


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_resume_from_a_checkpoint_continues_exactly(
    method: type[SSLMethod], tmp_path: Path, cache_dir: Path
) -> None:
    """A run stopped after 2 of 4 steps and resumed from its checkpoint ends in the state of an
    uninterrupted one, parameters and buffers (teachers, centers, BatchNorm statistics)."""
    recipe = _recipe(method)
    straight, resumed, ckpt = straight_and_resumed(
        lambda: _small(method, TINY_BACKBONES, **recipe.resume),
        tmp_path,
        total=4,
        stop=2,
        corruption=recipe.corruption,
        batch_size=4,
        cache_dir=cache_dir,
    )
    assert_same_state(straight, resumed)
    halfway = torch.load(ckpt, weights_only=False)["state_dict"]
    assert not all(torch.equal(halfway[key], value) for key, value in straight.state_dict().items())


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_few_steps_on_real_images_lower_the_loss(
    method: type[SSLMethod], tmp_path: Path, cache_dir: Path
) -> None:
    """A short fit on the sample lowers the pretext loss on a fixed batch of its corruption,
    and logs the loss and the step's metrics."""
    recipe = _recipe(method)
    L.seed_everything(0, verbose=False)
    model = _small(method, FIT_BACKBONES, **recipe.fit)
    initial = copy.deepcopy(model)
    dm = ImageFolderDataModule(
        SAMPLE, batch_size=recipe.batch_size, cache_dir=cache_dir, corruption=recipe.corruption
    )
    dm.setup("fit")
    assert dm.train_set is not None
    corruption = recipe.corruption or model.default_corruption()
    images = dm.train_set.images[: recipe.batch_size].float() / 255
    labels = dm.train_set.labels[: recipe.batch_size]
    fixed = corruption(images, labels, torch.Generator().manual_seed(1))
    fixed = fixed.map_images(lambda t: normalize(t, dm.mean, dm.std))

    def loss(scored: SSLMethod) -> float:
        scored.train()
        with torch.no_grad():
            return scored.pretext_step(fixed).loss.item()

    trainer = tiny_trainer(tmp_path, max_steps=recipe.steps, limit_val_batches=0)
    trainer.fit(model, dm)
    assert repr(dm.train_corruption()) == repr(corruption)  # the fixed batch's corruption
    if recipe.final_targets:
        trained = {name for name, p in model.named_parameters() if p.requires_grad}
        targets = {k: v for k, v in model.state_dict().items() if k not in trained}
        initial.load_state_dict(targets, strict=False)
    before, after = loss(initial), loss(model)
    assert after < before - recipe.min_drop
    if recipe.max_ratio is not None:
        assert after < recipe.max_ratio * before
    logged = {"loss", *model.pretext_step(fixed).metrics, *recipe.metrics}
    assert {f"train/{name}" for name in logged} <= set(trainer.callback_metrics)
