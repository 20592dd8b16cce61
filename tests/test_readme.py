"""The README's examples run as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from ssl_lightning.datamodules import ImageFolderDataModule
from tests.helpers import SAMPLE, tiny_trainer

README = (Path(__file__).parent.parent / "README.md").read_text()


def _block(marker: str) -> str:
    match = re.search(rf"<!-- {marker} -->\n```python\n(.*?)```", README, re.DOTALL)
    assert match, f"no python block after <!-- {marker} --> in README.md"
    return match.group(1)


def test_add_a_method_example_trains_and_moves_its_teacher(tmp_path: Path) -> None:
    namespace: dict[str, Any] = {}
    exec(_block("test:add-a-method"), namespace)
    model = namespace["MyMethod"](backbone="convnet", backbone_kwargs={"width": 4})
    start = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    data = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path)
    tiny_trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(model, data)
    moved = [k for k, v in model.teacher.state_dict().items() if not torch.equal(v, start[k])]
    assert "features.0.weight" in moved  # the EMA update ran after the optimizer steps
    assert all(not p.requires_grad for p in model.teacher.parameters())


def test_from_bolts_example_trains_simclr_with_the_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The "after" block as written, on the image sample for 2 steps instead of CIFAR-10."""
    import lightning

    import ssl_lightning.datamodules

    trainers: list[L.Trainer] = []

    def sample_data(**kwargs: Any) -> ImageFolderDataModule:
        assert kwargs == {"data_dir": "data", "batch_size": 256}  # what the README passes
        return ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path)

    def short_trainer(**kwargs: Any) -> L.Trainer:
        assert kwargs.pop("max_epochs") == 100
        with monkeypatch.context() as inner:  # tiny_trainer builds the real one
            inner.setattr(lightning, "Trainer", real_trainer)
            trainers.append(tiny_trainer(tmp_path, max_steps=2, limit_val_batches=1, **kwargs))
        return trainers[-1]

    real_trainer = lightning.Trainer

    monkeypatch.setattr(ssl_lightning.datamodules, "CIFAR10DataModule", sample_data)
    monkeypatch.setattr(lightning, "Trainer", short_trainer)
    namespace: dict[str, Any] = {}
    exec(_block("test:from-bolts"), namespace)
    assert trainers[0].global_step == 2
    assert "probe/train_acc" in trainers[0].callback_metrics  # the probe trained on the steps
    assert namespace["backbone"](torch.zeros(2, 3, 32, 32)).shape == (2, 512)
