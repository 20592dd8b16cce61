"""SSLMethod's template (optimizers, schedule, outputs) and SimCLR, without and with a Trainer."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from ssl_lightning import SimCLR, create_backbone
from ssl_lightning.datamodules import Batch, CleanView, ImageFolderDataModule, SimCLRViews
from ssl_lightning.optim import LARS
from tests.helpers import SAMPLE, tiny_trainer
from tests.test_losses import nt_xent_reference

TINY = {"backbone": "convnet", "backbone_kwargs": {"width": 8}, "proj_hidden_dim": 32}


def _batch(num_views: int = 2, batch_size: int = 4) -> Batch:
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(batch_size, 3, 16, 16, generator=g) for _ in range(num_views)]
    return Batch(views=views, labels=torch.arange(batch_size))


def _datamodule(tmp_path: Path, batch_size: int = 16, **kwargs) -> ImageFolderDataModule:
    return ImageFolderDataModule(SAMPLE, batch_size=batch_size, cache_dir=tmp_path, **kwargs)


def test_simclr_builds_from_a_registered_name() -> None:
    model = SimCLR(backbone="resnet18")
    assert model.backbone.num_features == 512
    assert model.hparams.backbone == "resnet18" and model.hparams.temperature == 0.2


def test_simclr_loss_is_nt_xent_of_the_projections_with_one_backbone_pass() -> None:
    model = SimCLR(**TINY)
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    batch = _batch(num_views=3, batch_size=4)
    out = model.pretext_step(batch)
    assert calls == [12]  # all three views in one pass
    features = model.backbone(torch.cat(batch.views))
    with torch.no_grad():
        z = model.projector(features).view(3, 4, -1)
    # The paper's loss as a per-pair loop (test_losses), not the library's nt_xent.
    assert out.loss.item() == pytest.approx(nt_xent_reference(z, model.temperature), rel=1e-5)
    assert out.features.shape == (12, model.backbone.num_features)
    assert out.labels.tolist() == [0, 1, 2, 3] * 3


def test_training_step_returns_detached_features_for_callbacks() -> None:
    model = SimCLR(**TINY)
    model.log = lambda *args, **kwargs: None  # no Trainer attached
    out = model.training_step(_batch(), 0)
    assert set(out) == {"loss", "features", "labels"}
    assert out["loss"].requires_grad and not out["features"].requires_grad


def test_simclr_bad_input_names_the_fix() -> None:
    model = SimCLR(**TINY)
    with pytest.raises(ValueError, match="data.corruption"):
        model.pretext_step(_batch(num_views=1))
    with pytest.raises(ValueError, match="data.batch_size"):
        model.pretext_step(_batch(batch_size=1))
    with pytest.raises(ValueError, match="model.temperature"):
        SimCLR(**TINY, temperature=0.0)
    with pytest.raises(ValueError, match="resnet18"):
        SimCLR(backbone="resnet19")
    with pytest.raises(ValueError, match="model.optimizer"):
        SimCLR(**TINY, optimizer="adam")  # type: ignore[arg-type]


def test_module_backbone_is_accepted_and_kept_out_of_hparams() -> None:
    backbone = create_backbone("convnet", width=8)
    model = SimCLR(backbone=backbone, proj_hidden_dim=16)
    assert model.backbone is backbone and "backbone" not in model.hparams
    with pytest.raises(TypeError, match="num_features"):
        SimCLR(backbone=nn.Linear(3, 3))


def test_channels_last_gives_the_same_features() -> None:
    x = torch.randn(2, 3, 16, 16)
    model = SimCLR(**TINY, channels_last=False).eval()
    fast = SimCLR(**TINY, channels_last=True).eval()
    fast.load_state_dict(model.state_dict())
    fast.setup("fit")
    torch.testing.assert_close(fast(x), model(x), atol=1e-5, rtol=1e-5)


def test_optimizer_groups_lr_scaling_and_warmup_cosine(tmp_path: Path) -> None:
    model = SimCLR(
        **TINY, optimizer="lars", lr=0.4, weight_decay=1e-5, warmup_epochs=1.0, lars_clip=True
    )
    dm = _datamodule(tmp_path, batch_size=32)  # 120 images: 3 steps per epoch
    lrs: list[float] = []

    class RecordLR(L.Callback):
        def on_train_batch_start(self, trainer, *args) -> None:
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = tiny_trainer(tmp_path, max_epochs=3, callbacks=[RecordLR()])
    trainer.fit(model, dm)
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, LARS)
    decayed, plain = optimizer.param_groups
    assert decayed["clip_lr"] and SimCLR(**TINY).lars_clip is False
    assert decayed["weight_decay"] == 1e-5 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim <= 1 for p in plain["params"])
    peak = 0.4 * 32 / 256  # linear scaling by global batch size / 256
    # 1 warmup epoch = 3 steps rising linearly as (k + 1) / 4, then cosine from 1 to 0 by step 9.
    warmup = [1 / 4, 2 / 4, 3 / 4]
    decay = [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    expected = [peak * factor for factor in warmup + decay]
    assert lrs == pytest.approx(expected)


def test_fit_uses_simclr_views_and_checkpoints_round_trip(tmp_path: Path) -> None:
    model = SimCLR(**TINY)
    dm = _datamodule(tmp_path)
    trainer = tiny_trainer(tmp_path, max_steps=2, enable_checkpointing=True)
    trainer.fit(model, dm)
    assert isinstance(dm.train_corruption(), SimCLRViews)
    ckpt = next(Path(tmp_path).rglob("*.ckpt"))
    restored = SimCLR.load_from_checkpoint(ckpt)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[key], value)
    state = torch.load(ckpt, weights_only=False)
    assert state["ImageFolderDataModule"]["batches_drawn"] == 2


def test_mismatched_corruption_fails_at_the_first_batch(tmp_path: Path) -> None:
    dm = _datamodule(tmp_path, corruption=CleanView())
    with pytest.raises(ValueError, match="SimCLR needs >= 2 views"):
        tiny_trainer(tmp_path, max_steps=1).fit(SimCLR(**TINY), dm)


def test_embed_views_runs_one_pass_per_resolution() -> None:
    model = SimCLR(**TINY).eval()
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape[:1])))
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(4, 3, 16, 16, generator=g) for _ in range(2)]
    views += [torch.randn(4, 3, 8, 8, generator=g) for _ in range(3)]
    features = model.embed_views(views)
    assert calls == [(8,), (12,)]  # two global views together, three local views together
    expected = torch.cat([model.backbone(v) for v in views])
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)


def test_compile_option_compiles_the_backbone_in_place() -> None:
    model = SimCLR(**TINY, compile=True)
    keys = set(model.state_dict())
    model.setup("fit")
    assert model.backbone._compiled_call_impl is not None  # nn.Module.compile()
    assert set(model.state_dict()) == keys  # checkpoints keep their plain parameter names
