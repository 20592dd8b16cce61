"""Every method the package exports, trained by Lightning's DDP on 2 gloo processes with half
the batch each, ends with the parameters of 1 process trained on the whole batch; a 2-process
run stopped and resumed from its checkpoint ends where a straight one does; the two ranks draw
different augmentations.

Exact up to float rounding by construction: both runs train in float64 on the same views
(each image augmented alone, seeded by its index) with BatchNorm in eval mode, since without
SyncBatchNorm (GPUs only) each rank would normalize by its half batch's statistics. The
parameters then agree to 1e-5 relative; the losses of Barlow Twins, VICReg and MoCo v3 and
DINO's center compute in float32, the rest to about 1e-14.

All 2-process runs share one pair of forked processes; the 1-process references run in the
test process. Methods are discovered from ``ssl_lightning.methods``, so a method added later is
covered by being exported.
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from ssl_lightning import SimCLR
from ssl_lightning.corruptions import normalize
from ssl_lightning.datamodules import Batch, Corruption, ImageFolderDataModule
from ssl_lightning.datamodules.base import InMemoryDataModule
from ssl_lightning.methods import SSLMethod
from tests.distributed_utils import run_distributed
from tests.helpers import SAMPLE, tiny_trainer
from tests.resume_utils import straight_and_resumed
from tests.test_method_contract import METHODS, TINY_BACKBONES

pytestmark = pytest.mark.distributed

WORLD, BATCH, STEPS = 2, 8, 3  # BATCH is the global batch: BATCH // WORLD per rank under DDP
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


# Small heads keep the run to seconds: an int argument whose name ends so gets this value.
SMALL_HEADS = {"_dim": 16, "_channels": 8, "_prototypes": 32, "_depth": 1, "_num_heads": 2}


def _small_heads(method: type[SSLMethod]) -> dict[str, int]:
    small = {}
    for name, param in inspect.signature(method).parameters.items():
        for suffix, value in SMALL_HEADS.items():
            if name.endswith(suffix) and type(param.default) is int:
                small[name] = value
    return small


def _make(method: type[SSLMethod]) -> SSLMethod:
    """The tiny model of ``method`` (the first tiny backbone it accepts, small heads), with its
    own optimizer recipe at the learning rate it has at batch 256 (``scale_lr`` on: both runs
    must scale by the same global batch), and no warmup, so every step moves the weights."""
    for name, kwargs in TINY_BACKBONES:
        try:
            default_lr = method(backbone=name, backbone_kwargs=kwargs, **_small_heads(method)).lr
        except TypeError:  # a method that needs another kind of backbone (MAE: a ViT)
            continue
        torch.manual_seed(0)
        return method(
            backbone=name,
            backbone_kwargs=kwargs,
            lr=default_lr * 256 / BATCH,
            scale_lr=True,
            warmup_epochs=0,
            **_small_heads(method),
        )
    raise AssertionError(f"{method.__name__} accepts none of {TINY_BACKBONES}")


class FixedViews(L.LightningDataModule):
    """Training batches whose augmentation does not depend on how a batch is split over ranks:
    image ``i`` is corrupted alone, with a generator seeded by ``i``, and the images are loaded
    in order."""

    def __init__(self, images: Tensor, corruption: Corruption, batch_size: int) -> None:
        super().__init__()
        self.images, self.corruption, self.batch_size = images, corruption, batch_size

    def train_dataloader(self) -> DataLoader[Any]:
        indices = torch.arange(len(self.images))
        trainer = self.trainer
        assert trainer is not None
        # In order: rank r takes every world-th image from r, so the ranks' batches of a step
        # together are the 1-process batch (Lightning's own sampler would shuffle).
        sampler = DistributedSampler(
            indices, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )
        return DataLoader(indices, batch_size=self.batch_size, sampler=sampler)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Batch:
        parts = [self._views(int(i)) for i in batch]
        views = [_join(list(v)) for v in zip(*(p.views for p in parts), strict=True)]
        others = {
            f.name: None
            if getattr(parts[0], f.name) is None
            else _join([getattr(p, f.name) for p in parts])
            for f in fields(Batch)
            if f.name != "views"
        }
        return Batch(views=views, **others)

    def _views(self, i: int) -> Batch:
        x = self.images[i : i + 1].float() / 255  # [1, 3, H, W]
        out = self.corruption(x, torch.tensor([i % 10]), torch.Generator().manual_seed(i))
        # float64 (the trainers' precision): summation-order differences stay near 1e-16.
        return out.map_images(lambda t: normalize(t, MEAN, STD).double())


def _join(parts: list[Tensor]) -> Tensor:
    """Joins the fields of one-image batches: ``[1, ...]`` ones into ``[B, ...]``, and ``[V,
    ...]`` ones (a target per view, as Rotations makes) into ``[V * B, ...]`` view after view."""
    return torch.cat([p.unflatten(0, (-1, 1)) for p in parts], dim=1).flatten(0, 1)


class EvalModeBatchNorm(Callback):
    """Puts every BatchNorm layer in eval mode (normalizing with its initial running
    statistics, 0 and 1) before each step. Without SyncBatchNorm, which needs GPUs, each rank
    would normalize by the statistics of its half of the batch, which differ from the whole
    batch's: in eval mode BatchNorm is per-sample and DDP can be exactly equivalent."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any):
        for module in pl_module.modules():
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                module.eval()


def _fit_fixed(method: type[SSLMethod], images: Tensor, root: Path, world: int) -> dict:
    model = _make(method)
    data = FixedViews(images, model.default_corruption(), BATCH // world)
    trainer_kwargs: dict[str, Any] = {"devices": world, "strategy": "ddp"} if world > 1 else {}
    trainer_kwargs.update(use_distributed_sampler=False, precision="64-true")
    trainer = tiny_trainer(
        root,
        max_steps=STEPS,
        limit_val_batches=0,
        callbacks=[EvalModeBatchNorm()],
        **trainer_kwargs,
    )
    trainer.fit(model, data)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class FirstViews(Callback):
    """Keeps the first training batch's first view."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Batch, *_: Any):
        if trainer.global_step == 0:
            self.view = batch.views[0].clone()


class OneImage(InMemoryDataModule):
    """Sixteen copies of one sample image: identical inputs on every rank, so views that
    differ between ranks come from the augmentation streams alone."""

    def __init__(self, cache_dir: Path) -> None:
        super().__init__(batch_size=4, seed=0)
        self.cache_dir = cache_dir

    def load_split(self, split: str) -> tuple[Tensor, Tensor] | None:
        if split == "val":
            return None
        sample = ImageFolderDataModule(SAMPLE, cache_dir=self.cache_dir)
        sample.setup("fit")
        assert sample.train_set is not None
        return sample.train_set.images[:1].expand(16, -1, -1, -1).clone(), torch.zeros(16).long()


def _simclr() -> SimCLR:
    return SimCLR(backbone="convnet", backbone_kwargs={"width": 4}, proj_hidden_dim=16)


def _ddp_runs(rank: int, world_size: int, images: Tensor, root: str) -> dict[str, Any]:
    # Lightning joins the process group that run_distributed started, as under torchrun.
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0")
    out: dict[str, Any] = {
        method.__name__: _fit_fixed(method, images, Path(root) / "fixed", world_size)
        for method in METHODS
    }
    ddp = {"devices": world_size, "strategy": "ddp"}
    straight, resumed, _ = straight_and_resumed(
        _simclr, Path(root) / "resume", total=4, stop=2, **ddp
    )
    out["resume"] = (straight.state_dict(), resumed.state_dict())
    first = FirstViews()
    L.seed_everything(0, verbose=False)
    tiny_trainer(Path(root), max_steps=1, limit_val_batches=0, callbacks=[first], **ddp).fit(
        _simclr(), OneImage(Path(root) / "cache")
    )
    out["first_view"] = first.view
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Tensor:
    data = ImageFolderDataModule(SAMPLE, cache_dir=tmp_path_factory.mktemp("cache"))
    data.setup("fit")
    assert data.train_set is not None
    return data.train_set.images[: STEPS * BATCH].clone()  # [STEPS * BATCH, 3, 32, 32] uint8


@functools.cache
def _two_processes(images: Tensor, root: Path) -> list[dict[str, Any]]:
    # The image cache exists before the ranks start, so they only read it.
    ImageFolderDataModule(SAMPLE, cache_dir=root / "resume" / "cache").setup("fit")
    ImageFolderDataModule(SAMPLE, cache_dir=root / "cache").setup("fit")
    return run_distributed(_ddp_runs, WORLD, images, str(root))


@pytest.fixture(scope="module")
def two_processes(images: Tensor, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    return _two_processes(images, tmp_path_factory.mktemp("ddp"))


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_two_ranks_with_half_the_batch_each_equal_one_process(
    method: type[SSLMethod], images: Tensor, two_processes: list[dict], tmp_path: Path
) -> None:
    initial = _make(method).state_dict()
    single = _fit_fixed(method, images, tmp_path, world=1)
    ranks = [r[method.__name__] for r in two_processes]
    moved = 0.0
    for key, value in single.items():
        for rank in ranks:
            # The runs are in float64, but Barlow Twins, VICReg, MoCo v3 and DINO's center
            # compute in float32: summing the batch in another order differs near 1e-7.
            torch.testing.assert_close(rank[key], value, rtol=1e-5, atol=1e-6, msg=key)
        if value.is_floating_point():
            moved = max(moved, (value - initial[key]).abs().max().item())
    assert moved > 1e-4  # the steps moved the weights far beyond the tolerance


def test_resumed_ddp_run_ends_where_a_straight_one_does(two_processes: list[dict]) -> None:
    for straight, resumed in (r["resume"] for r in two_processes):
        for key, value in straight.items():
            assert torch.equal(value, resumed[key]), f"{key} differs"


def test_ranks_draw_different_augmentations(two_processes: list[dict]) -> None:
    first, second = (r["first_view"] for r in two_processes)
    assert first.shape == second.shape
    assert not torch.allclose(first, second)
