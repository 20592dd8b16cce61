"""The online probe and the kNN monitor on chosen backbone stages."""

from __future__ import annotations

from pathlib import Path

import torch

from ssl_lightning import SimCLR
from ssl_lightning.callbacks import KNNMonitor, OnlineLinearProbe
from ssl_lightning.datamodules import ImageFolderDataModule
from tests.helpers import SAMPLE, tiny_trainer

TINY = {"backbone": "convnet", "backbone_kwargs": {"width": 4, "depth": 2}}


def _fit(tmp_path: Path, callbacks: list) -> SimCLR:
    torch.manual_seed(0)
    model = SimCLR(**TINY, proj_hidden_dim=8, proj_output_dim=8)
    data = ImageFolderDataModule(SAMPLE, batch_size=32, cache_dir=tmp_path, val_fraction=0.2)
    tiny_trainer(tmp_path, max_steps=3, callbacks=callbacks, limit_val_batches=1).fit(model, data)
    return model


def test_probe_and_knn_read_the_chosen_stages_without_touching_the_model(tmp_path: Path) -> None:
    widths: list[int] = []

    class Recording(KNNMonitor):
        def score(self, features: torch.Tensor, labels: torch.Tensor) -> None:
            assert self._bank is not None
            widths.extend([self._bank[0].shape[1], features.shape[1]])
            super().score(features, labels)

    probe = OnlineLinearProbe(stages="all")
    monitored = _fit(tmp_path, [probe, Recording(k=3, stages=[0])])
    assert probe.head is not None and probe.head.in_features == 4 + 8  # both blocks, pooled
    assert widths and set(widths) == {4}  # bank and queries: block 0 only
    assert "probe/val_acc_top1" in monitored.trainer.callback_metrics
    assert "knn/val_acc" in monitored.trainer.callback_metrics
    # The extra pass runs in eval mode without gradients: the trained weights and BatchNorm
    # statistics equal those of the same run without monitors.
    plain = _fit(tmp_path, [])
    expected = plain.state_dict()
    assert monitored.state_dict().keys() == expected.keys()
    for name, value in monitored.state_dict().items():
        torch.testing.assert_close(value, expected[name], msg=name)


def test_probe_features_are_the_eval_mode_stages_of_the_clean_view(tmp_path: Path) -> None:
    seen: list[torch.Tensor] = []

    class Recording(OnlineLinearProbe):
        def update_val(self, features: torch.Tensor, labels: torch.Tensor) -> None:
            seen.append(features)
            super().update_val(features, labels)

    probe = Recording(stages=[0, 1])
    model = _fit(tmp_path, [probe])
    data = ImageFolderDataModule(SAMPLE, batch_size=32, cache_dir=tmp_path, val_fraction=0.2)
    data.setup("fit")
    batch = next(iter(data.val_dataloader()))
    views = data.on_after_batch_transfer(batch, 0).views[0]
    backbone = model.backbone.eval()
    with torch.no_grad():
        first = backbone.features[:4](views)  # block 0 by hand
        expected = torch.cat([first.mean(dim=(2, 3)), backbone.features[4:](first).mean((2, 3))], 1)
    torch.testing.assert_close(seen[-1], expected)
