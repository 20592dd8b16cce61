"""No host-device synchronization in the per-step training path of any method.

On an accelerator, ``.item()``, ``bool(tensor)``, ``.tolist()``, ``nonzero`` or a boolean-mask
index of a device tensor makes the host wait for the device every step. No GPU is needed to
find them: a ``TorchFunctionMode`` marks every tensor derived from the training batch or
from the model's parameters and counts such calls on marked tensors, from the batch's
corruption (``on_after_batch_transfer``) to the end of the last callback's
``on_train_batch_end``. Each exported method runs a few steps with ``OnlineLinearProbe`` and
``KNNMonitor`` (its augmented bank, the one with per-step work); epoch-end and validation
code (which syncs once per epoch) and the non-finite loss check (every ``check_every`` = 100
batches) are outside the window.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ssl_lightning.callbacks import KNNMonitor, OnlineLinearProbe
from ssl_lightning.datamodules import ImageFolderDataModule
from ssl_lightning.methods import SSLMethod
from tests.helpers import SAMPLE, tiny_trainer
from tests.test_method_contract import METHODS, _tiny

SYNCING = {
    Tensor.item,
    Tensor.tolist,
    Tensor.__bool__,
    Tensor.__int__,
    Tensor.__float__,
    Tensor.__index__,
    Tensor.nonzero,
    torch.nonzero,
    Tensor.cpu,
    Tensor.numpy,
    torch.unique,
    Tensor.unique,
    torch.masked_select,
    Tensor.masked_select,
}
MARK = "_ssl_derived"


def _mark(tree: Any) -> None:
    for leaf in tree_flatten(tree)[0]:
        if isinstance(leaf, Tensor):
            setattr(leaf, MARK, True)


def _marked(tree: Any) -> bool:
    return any(isinstance(x, Tensor) and getattr(x, MARK, False) for x in tree_flatten(tree)[0])


def _in_optimizer_get_value() -> bool:
    frame = sys._getframe(2)
    return frame.f_code.co_name == "_get_value" and "torch/optim" in frame.f_code.co_filename


def _bool_index(args: tuple[Any, ...]) -> bool:
    index = args[1] if len(args) > 1 else None
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, Tensor) and p.dtype == torch.bool for p in parts)


class SyncCounter(TorchFunctionMode):
    """Records where a syncing call touches a marked tensor while ``active``."""

    def __init__(self) -> None:
        super().__init__()
        self.active = False
        self.calls: list[str] = []
        self.devices: dict[int, torch.device] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        derived = _marked((args, kwargs))
        # Made on (or moved to) the device of a marked tensor: on an accelerator, a device
        # tensor too (``torch.zeros(n, device=x.device)``, ``mask.to(x.device)``).
        placed = any(id(d) in self.devices for d in tree_flatten((args, kwargs))[0])
        # Adam's step count lives on the host unless capturable (the probe makes it capturable
        # on a GPU), so the optimizer's own read of it is no device sync.
        host_count = getattr(func, "__name__", "") == "item" and _in_optimizer_get_value()
        if self.active and derived and not host_count:
            indexing = func in (Tensor.__getitem__, Tensor.__setitem__) and _bool_index(args)
            if func in SYNCING or indexing:
                frames = traceback.extract_stack()[:-1]
                ours = [f for f in frames if "ssl_lightning" in f.filename] or frames[-1:]
                site = f"{ours[-1].filename}:{ours[-1].lineno} {ours[-1].line}"
                self.calls.append(f"{getattr(func, '__name__', func)} at {site}")
        out = func(*args, **kwargs)
        if derived and getattr(func, "__self__", None) is Tensor.device:
            self.devices[id(out)] = out  # kept alive, so the id stays its own
        elif derived or placed:
            _mark(out)
        return out


class CountedData(ImageFolderDataModule):
    """The sample images; marks each transferred training batch and starts counting."""

    counter: SyncCounter

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training:
            _mark(batch)
            self.counter.active = True
        return super().on_after_batch_transfer(batch, dataloader_idx)


class StopCounting(L.Callback):
    """Placed last: the step ends after every other callback's ``on_train_batch_end``."""

    def __init__(self, counter: SyncCounter) -> None:
        self.counter = counter
        self.steps = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _mark(list(pl_module.parameters()) + list(pl_module.buffers()))

    def on_train_batch_end(self, *args: Any) -> None:
        self.counter.active = False
        self.steps += 1


@pytest.mark.parametrize("method", METHODS, ids=[m.__name__ for m in METHODS])
def test_training_steps_do_not_sync_with_the_device(
    method: type[SSLMethod], tmp_path: Path
) -> None:
    model, _, _ = _tiny(method)
    counter = SyncCounter()
    data = CountedData(SAMPLE, batch_size=8, cache_dir=tmp_path / "cache", seed=0)
    data.counter = counter
    stop = StopCounting(counter)
    callbacks = [OnlineLinearProbe(), KNNMonitor(k=5, bank="augmented"), stop]
    trainer = tiny_trainer(tmp_path, max_steps=3, callbacks=callbacks, log_every_n_steps=1000)
    with counter:
        trainer.fit(model, data)
    assert stop.steps == 3
    sites = "\n".join(sorted(set(counter.calls)))
    assert counter.calls == [], f"{len(counter.calls)} syncs in 3 steps, at:\n{sites}"
