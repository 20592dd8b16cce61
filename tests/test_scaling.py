"""What changes with the number of devices: the learning rate follows the global batch
(``scale_lr``: linear or square root), warmup counted in epochs ends with the same epoch on any
number of devices, SyncBatchNorm is on in every multi-GPU recipe whose network has BatchNorm,
and on the CPU it is refused in our words, with the flag that turns it off."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from ssl_lightning import methods
from ssl_lightning.backbones.sparse import MaskedBatchNorm2d
from ssl_lightning.cli import main
from ssl_lightning.datamodules import ImageFolderDataModule
from ssl_lightning.methods.schedule import scaled_lr
from tests.distributed_utils import run_distributed
from tests.helpers import SAMPLE, sample_fit_args, tiny_trainer

REPO = Path(__file__).parents[1]
BATCH, LR = 16, 0.4  # per process; SAMPLE has 120 training images
STEPS_PER_EPOCH = {1: 120 // BATCH, 2: 120 // 2 // BATCH}  # 7 on one process, 3 on each of two


@pytest.mark.parametrize(("world_size", "accumulate"), [(1, 1), (2, 1), (8, 2)])
def test_rules_follow_the_global_batch(world_size: int, accumulate: int) -> None:
    trainer = SimpleNamespace(
        datamodule=SimpleNamespace(batch_size=64),
        world_size=world_size,
        accumulate_grad_batches=accumulate,
    )
    ratio = 64 * world_size * accumulate / 256
    assert scaled_lr(0.3, trainer, "linear") == scaled_lr(0.3, trainer, True)
    assert scaled_lr(0.3, trainer, "linear") == pytest.approx(0.3 * ratio)
    assert scaled_lr(0.3, trainer, "sqrt") == pytest.approx(0.3 * math.sqrt(ratio))
    assert scaled_lr(0.3, trainer, False) == 0.3
    with pytest.raises(ValueError, match=r"'cubic'.*model\.scale_lr"):
        scaled_lr(0.3, trainer, "cubic")  # type: ignore[arg-type]


class LearningRates(Callback):
    """The learning rate of every optimizer step, as the step runs."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _model(scale_lr: Any) -> methods.SimCLR:
    return methods.SimCLR(
        backbone="convnet",
        backbone_kwargs={"width": 4},
        proj_hidden_dim=8,
        lr=LR,
        warmup_epochs=1,
        scale_lr=scale_lr,
    )


def _learning_rates(root: Path, scale_lr: Any, **trainer_kwargs: Any) -> list[float]:
    recorder = LearningRates()
    data = ImageFolderDataModule(SAMPLE, batch_size=BATCH, cache_dir=root / "cache")
    trainer = tiny_trainer(
        root, max_epochs=2, limit_val_batches=0, callbacks=[recorder], **trainer_kwargs
    )
    trainer.fit(_model(scale_lr), data)
    return recorder.lrs


def _refusal(root: Path, model: L.LightningModule, **trainer_kwargs: Any) -> str:
    data = ImageFolderDataModule(SAMPLE, batch_size=BATCH, cache_dir=root / "cache")
    trainer = tiny_trainer(root, max_steps=1, limit_val_batches=0, **trainer_kwargs)
    try:
        trainer.fit(model, data)
    except ValueError as err:
        return str(err)
    return "trained"


def _ddp_runs(rank: int, world_size: int, root: str) -> dict[str, Any]:
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0")  # Lightning joins this group
    ddp = {"devices": world_size, "strategy": "ddp"}
    sync = {**ddp, "sync_batchnorm": True}
    return {
        "linear": _learning_rates(Path(root), "linear", **ddp),
        "sqrt": _learning_rates(Path(root), "sqrt", **ddp),
        "batchnorm": _refusal(Path(root), _model(True), **sync),
        "no_batchnorm": _refusal(Path(root), _without_batchnorm(), **sync),
    }


def _without_batchnorm() -> methods.MAE:
    """MAE on a ViT: LayerNorm only, so SyncBatchNorm would change nothing."""
    return methods.MAE(backbone="vit_tiny", backbone_kwargs={"dim": 32, "depth": 1, "num_heads": 2})


@functools.cache
def _two_processes(root: Path) -> list[dict[str, Any]]:
    ImageFolderDataModule(SAMPLE, cache_dir=root / "cache").setup("fit")  # ranks only read it
    return run_distributed(_ddp_runs, 2, str(root))


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return _two_processes(tmp_path_factory.mktemp("ddp"))


def _expected(peak: float, world_size: int) -> list[float]:
    """Linear warmup over one epoch to ``peak``, then a cosine to 0 over the other epoch."""
    warmup = STEPS_PER_EPOCH[world_size]
    total = 2 * warmup
    ramp = [peak * (k + 1) / (warmup + 1) for k in range(warmup)]
    decay = [peak * 0.5 * (1 + math.cos(math.pi * k / (total - warmup))) for k in range(warmup)]
    return ramp + decay


@pytest.mark.distributed
@pytest.mark.parametrize("rule", ["linear", "sqrt"])
def test_two_devices_raise_the_rate_and_keep_warmup_to_one_epoch(
    rule: str, two_processes: list[dict[str, Any]], tmp_path: Path
) -> None:
    single = _learning_rates(tmp_path, rule)
    scale = (lambda r: r) if rule == "linear" else math.sqrt
    assert single == pytest.approx(_expected(LR * scale(BATCH / 256), 1))
    for rank in two_processes:  # each rank has BATCH images: the global batch doubles
        assert rank[rule] == pytest.approx(_expected(LR * scale(2 * BATCH / 256), 2))


@pytest.mark.distributed
def test_sync_batchnorm_on_cpu_is_refused_with_the_flag_to_turn_it_off(
    two_processes: list[dict[str, Any]], tmp_path: Path
) -> None:
    for rank in two_processes:
        assert "trains on cpu with 2 processes" in rank["batchnorm"]
        assert "--trainer.sync_batchnorm false" in rank["batchnorm"]
        assert rank["no_batchnorm"] == "trained"
    # One process: Lightning converts nothing, the flag is harmless.
    assert _refusal(tmp_path, _model(True), sync_batchnorm=True) == "trained"


def test_command_line_takes_the_square_root_rule(tmp_path: Path) -> None:
    options = ["--model.backbone=convnet", '--model.backbone_kwargs={"width": 4}']
    main(sample_fit_args(tmp_path, "SimCLR", *options, f"--model.lr={LR}", "--model.scale_lr=sqrt"))
    (ckpt,) = tmp_path.rglob("*step=2.ckpt")
    saved = torch.load(ckpt, weights_only=False)
    assert saved["hyper_parameters"]["scale_lr"] == "sqrt"
    group = saved["optimizer_states"][0]["param_groups"][0]
    assert group["initial_lr"] == pytest.approx(LR * math.sqrt(16 / 256))  # batch 16, 1 process
    with pytest.raises(SystemExit):
        main(sample_fit_args(tmp_path, "SimCLR", *options, "--model.scale_lr=cubic"))


def _recipes() -> list[Path]:
    """The recipes that train on all the GPUs there are (``devices`` other than 1)."""
    recipes = sorted((REPO / "configs").glob("*_cifar10*.yaml"))
    return [p for p in recipes if yaml.safe_load(p.read_text())["trainer"].get("devices") != 1]


@pytest.mark.parametrize("recipe", _recipes(), ids=lambda p: p.stem)
def test_multi_gpu_recipes_synchronize_batchnorm(recipe: Path) -> None:
    config = yaml.safe_load(recipe.read_text())
    model = config["model"]
    network = getattr(methods, model["class_path"])(**model.get("init_args", {}))
    norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    # SparK's masked BatchNorm takes statistics over each GPU's visible positions; a
    # SyncBatchNorm would replace it, and SparK refuses one (test_spark.py).
    masked = any(isinstance(m, MaskedBatchNorm2d) for m in norms)
    assert config["trainer"].get("sync_batchnorm", False) == (bool(norms) and not masked)
