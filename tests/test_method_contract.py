"""The contract every method the package exports honours, so a new method is tested by being
exported from ``ssl_lightning.methods``: a finite loss, the step's ``features [N, D]`` and
``labels [N]`` for the callbacks, a gradient on every trainable parameter, the settings it owns
checked against a configured corruption, and a short fit from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from ssl_lightning import methods
from ssl_lightning.cli import main
from ssl_lightning.corruptions import normalize
from ssl_lightning.datamodules import ImageFolderDataModule
from ssl_lightning.methods import SSLMethod
from tests.helpers import SAMPLE, sample_fit_args

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


def _tiny(method: type[SSLMethod]) -> tuple[SSLMethod, str, dict[str, Any]]:
    refusals = []
    for name, kwargs in TINY_BACKBONES:
        try:
            return method(backbone=name, backbone_kwargs=kwargs), name, kwargs
        except TypeError as err:
            refusals.append(f"{name}: {err}")
    pytest.fail(f"{method.__name__} accepts none of the tiny backbones: {refusals}")


@pytest.fixture(scope="module")
def sample_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.Tensor, torch.Tensor]:
    dm = ImageFolderDataModule(SAMPLE, cache_dir=tmp_path_factory.mktemp("cache"))
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
