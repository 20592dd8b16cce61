"""The README's examples run as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

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
