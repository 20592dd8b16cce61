"""``model.recipe``: the paper's settings, or the budget recipe measured on short runs, and the
line each run logs about what it chose."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import pytest
import torch

from ssl_lightning import methods
from ssl_lightning.cli import main
from ssl_lightning.datamodules import ImageFolderDataModule
from ssl_lightning.methods import SimCLR, SSLMethod
from ssl_lightning.methods.schedule import warmup_steps
from tests.helpers import SAMPLE, sample_fit_args, tiny_trainer

TINY = {"backbone": "convnet", "backbone_kwargs": {"width": 4}, "proj_hidden_dim": 8}


def _fit(tmp_path: Path, model: SSLMethod, steps: int) -> torch.optim.Optimizer:
    data = ImageFolderDataModule(SAMPLE, batch_size=32, cache_dir=tmp_path / "cache")
    trainer = tiny_trainer(tmp_path, max_steps=steps, limit_val_batches=0)
    trainer.fit(model, data)
    return trainer.optimizers[0]


@pytest.mark.parametrize("name", sorted(methods.method_classes()))
def test_every_budget_recipe_sets_arguments_of_its_method(name: str) -> None:
    cls = methods.method_classes()[name]
    own = set(inspect.signature(cls).parameters) | set(inspect.signature(SSLMethod).parameters)
    assert set(cls.budget_recipe) <= own - {
        "backbone",
        "backbone_kwargs",
        "recipe",
        "warmup_epochs",
    }


def test_a_method_reads_its_own_arguments_through_the_recipe() -> None:
    class Tempered(SimCLR):
        budget_recipe = {"lr": 1e-3, "temperature": 0.3}

    assert (Tempered(**TINY).lr, Tempered(**TINY).temperature) == (0.4, 0.2)
    model = Tempered(**TINY, recipe="budget", lr=0.9, temperature=0.05)
    assert (model.lr, model.temperature, model.optimizer_name) == (1e-3, 0.3, "lars")


def test_the_budget_recipe_replaces_the_optimizer_settings_and_logs_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        model = SimCLR(**TINY, recipe="budget", warmup_epochs=10.0)
        assert (model.optimizer_name, model.lr, model.weight_decay) == ("adamw", 5e-3, 1e-4)
        assert (model.temperature, SimCLR(**TINY).temperature) == (0.1, 0.2)
        optimizer = _fit(tmp_path, model, steps=3)
    assert isinstance(optimizer, torch.optim.AdamW)
    # lr 5e-3 per 256 images at batch 32; the budget warmup is 10 % of 3 steps: none.
    assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(5e-3 * 32 / 256)
    assert "SimCLR (model.recipe=budget): adamw, peak lr 0.000625, warmup 0 of 3 steps" in (
        caplog.text
    )
    assert (
        "SimCLR (model.recipe=budget): optimizer adamw, lr 0.005, weight_decay 0.0001, "
        "temperature 0.1, num_local_views 4" in caplog.text
    )


def test_the_paper_recipe_keeps_the_arguments_and_warns_when_warmup_fills_the_run(
    tmp_path: Path,
) -> None:
    model = SimCLR(**TINY, warmup_epochs=10.0)
    with pytest.warns(UserWarning, match="rises for 100% of the run.*model.recipe=budget"):
        optimizer = _fit(tmp_path, model, steps=3)
    assert type(optimizer).__name__ == "LARS"
    assert optimizer.param_groups[0]["initial_lr"] == pytest.approx(0.4 * 32 / 256)


def test_warmup_is_epochs_in_the_paper_recipe_and_a_tenth_of_the_run_in_the_budget_one() -> None:
    assert warmup_steps("paper", 2.0, total=1000, per_epoch=100) == 200
    assert warmup_steps("paper", 20.0, total=1000, per_epoch=100) == 1000  # at most the run
    assert warmup_steps("budget", 20.0, total=1000, per_epoch=100) == 100


def test_an_unknown_recipe_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"recipe must be 'paper' or 'budget'.*model.recipe"):
        SimCLR(**TINY, recipe="fast")  # type: ignore[arg-type]


def test_the_command_line_switches_the_recipe(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        main(sample_fit_args(tmp_path, "SimSiam", "--model.recipe=budget"))
    assert "SimSiam (model.recipe=budget): sgd, peak lr 0.0312" in caplog.text  # 0.5 x 16/256


def test_a_run_limited_by_time_alone_is_told_to_set_its_length(tmp_path: Path) -> None:
    trainer = tiny_trainer(tmp_path, max_time={"minutes": 5}, limit_val_batches=0)
    data = ImageFolderDataModule(SAMPLE, batch_size=32, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"max_steps.*max_time stops a run"):
        trainer.fit(SimCLR(**TINY), data)


def test_fastsiam_and_simsiam_take_the_measured_16x_rate_on_a_budget() -> None:
    from ssl_lightning import FastSiam, SimSiam

    for cls in (SimSiam, FastSiam):
        assert cls(**TINY).lr == 0.03
        assert cls(**TINY, recipe="budget").lr == 0.5


def test_simclr_on_a_budget_contrasts_local_crops_and_hands_callbacks_the_global_views() -> None:
    from ssl_lightning.corruptions import MultiCropViews, SimCLRViews
    from ssl_lightning.losses import nt_xent

    assert isinstance(SimCLR(**TINY).default_corruption(), SimCLRViews)
    model = SimCLR(**TINY, recipe="budget")
    corruption = model.default_corruption()
    assert isinstance(corruption, MultiCropViews)
    assert (corruption.num_global, corruption.num_local) == (2, 4)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    batch = corruption(images, torch.arange(6), torch.Generator().manual_seed(0))
    assert [v.shape[-1] for v in batch.views] == [32, 32, 16, 16, 16, 16]
    model.eval()  # running statistics: one pass per view equals one pass per resolution
    with torch.no_grad():
        out = model.pretext_step(batch)
        z = torch.stack([model.projector(model.backbone(v)) for v in batch.views])
        reference = nt_xent(z, temperature=0.1, gather_distributed=False)
        globals_only = torch.cat([model.backbone(v) for v in batch.views[:2]])
    torch.testing.assert_close(out.loss, reference)
    torch.testing.assert_close(out.features, globals_only)
    assert out.labels.tolist() == [0, 1, 2, 3, 4, 5] * 2
