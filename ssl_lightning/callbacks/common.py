"""What the monitoring callbacks share: reading step outputs, backbone stages and a head of the
model (the projector), the names they log and checkpoint under, and the warning when there
is nothing to validate on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn

from ssl_lightning.backbones.stages import Stages, stage_features
from ssl_lightning.corruptions import PretextModel
from ssl_lightning.labels import datamodule_num_classes
from ssl_lightning.layers import eval_mode

__all__ = [
    "FeatureReader",
    "check_head_stages",
    "embed_stages",
    "head_module",
    "head_prefix",
    "setup_labeled_monitor",
    "stage_step_features",
    "state_key_fields",
    "step_features",
    "through_head",
    "warn_if_no_validation",
]


def step_features(outputs: Any, hook: str) -> tuple[Tensor, Tensor]:
    """``(features [N, D], labels [N])`` from a step's output dict, or a clear error."""
    if not isinstance(outputs, dict) or "features" not in outputs or "labels" not in outputs:
        found = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
        raise ValueError(
            f"the callback reads `features` and `labels` from the output of {hook}, but it "
            f"returned {found}; use an SSLMethod (its steps return {{'features', 'labels'}}) or "
            "return them from your own step"
        )
    features, labels = outputs["features"], outputs["labels"]
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(
            f"{hook} returned features {tuple(features.shape)} and labels "
            f"{tuple(labels.shape)}; expected pooled features [N, D] and labels [N]"
        )
    return features, labels


def embed_stages(pl_module: L.LightningModule, images: Tensor, stages: Stages) -> Tensor:
    """Pooled ``stages`` ``[B, D']`` of the method's exported backbone (the teacher where it
    exports one) for normalized ``images``, in eval mode, without gradients."""
    name = pl_module.export_module if isinstance(pl_module, PretextModel) else "backbone"
    backbone = getattr(pl_module, name)
    # eval mode: batch statistics would change BatchNorm's running averages
    with eval_mode(backbone), torch.no_grad():
        return stage_features(backbone, images, stages)


def stage_step_features(
    outputs: Any, batch: Any, pl_module: L.LightningModule, hook: str, stages: Stages
) -> tuple[Tensor, Tensor]:
    """The step's own ``(features, labels)`` for ``stages="last"``; else the chosen stages of
    the batch's clean image (``batch.clean``, else its first view) and ``batch.labels``: one
    extra backbone pass per step."""
    if stages == "last":
        return step_features(outputs, hook)
    images = getattr(batch, "clean", None)
    images = batch.views[0] if images is None else images
    return embed_stages(pl_module, images, stages), batch.labels


def check_head_stages(callback: str, head: str | None, stages: Stages) -> None:
    """Refuses a ``head`` on anything but the last stage: a head maps the features the
    backbone ends with, not a concatenation of pooled stages of other widths."""
    if head is not None and stages != "last":
        raise ValueError(
            f"{callback}: head={head!r} maps the backbone's last features, but stages={stages!r}; "
            "set stages='last' or head=None"
        )


def head_module(pl_module: L.LightningModule, head: str, callback: str) -> nn.Module:
    """The submodule ``head`` of the model (dotted names allowed: ``"projector.layers.0"``),
    or an error naming the children where the path stops."""
    module: nn.Module = pl_module
    path: list[str] = []
    for part in head.split("."):
        children = dict(module.named_children())
        if part not in children:
            # The full names of what exists at that depth, ready to be passed as ``head``.
            names = sorted(".".join([*path, name]) for name in children)
            raise ValueError(
                f"{callback}(head={head!r}): {type(pl_module).__name__} has no submodule "
                f"{head!r}; expected one of {names} (set head, or head=None for the backbone's "
                "features)"
            )
        module = children[part]
        path.append(part)
    return module


def through_head(
    pl_module: L.LightningModule, head: str, features: Tensor, callback: str
) -> Tensor:
    """``features`` ``[n, D]`` through the submodule ``head``: float32 ``[n, P]``, computed in
    eval mode, without gradients and without autocast; the head's mode is left as it was."""
    module = head_module(pl_module, head, callback)
    param = next(module.parameters(), None)
    # eval mode: batch statistics would change BatchNorm's running averages
    with eval_mode(module), torch.no_grad(), torch.autocast(features.device.type, enabled=False):
        x = features.detach().to(param.dtype if param is not None else torch.float32)
        return module(x).float()  # [n, P]


def head_prefix(prefix: str | None, default: str, head: str | None) -> str:
    """The prefix of a monitor's logged names: ``prefix`` as given, else ``default``, and
    ``"<default>_<head>"`` when it reads a ``head`` (``"probe_projector"``), so a monitor of
    the backbone and one of a head log apart without being told."""
    if prefix is not None:
        return prefix
    return default if head is None else f"{default}_{head}"


def state_key_fields(prefix: str, head: str | None) -> dict[str, str]:
    """What tells two monitors of one class apart in a checkpoint: the prefix, and the head
    where one is read. Without a head the key is the one written before heads existed, so
    those checkpoints still resume."""
    return {"prefix": prefix} if head is None else {"prefix": prefix, "head": head}


@dataclass(frozen=True)
class FeatureReader:
    """Where a monitor reads its features: the backbone's ``stages``, and with a ``head`` those
    features through that submodule of the model (``"projector"``; only with ``"last"``).

    Args:
        callback: the monitor's name, for its errors.
        stages: ``"last"`` (the step's features), ``"all"`` or indices (``backbones.stages``).
        head: dotted name of a submodule of the model, or ``None``.
    """

    callback: str
    stages: Stages = "last"
    head: str | None = None

    def __post_init__(self) -> None:
        check_head_stages(self.callback, self.head, self.stages)

    def check(self, pl_module: L.LightningModule) -> None:
        """Raises now (at ``setup``) if the model has no ``head``, not at the first step."""
        if self.head is not None:
            head_module(pl_module, self.head, self.callback)

    def step(
        self, outputs: Any, batch: Any, pl_module: L.LightningModule, hook: str
    ) -> tuple[Tensor, Tensor]:
        """A step's ``(features [N, D'], labels [N])``: :func:`stage_step_features`, through
        the head where one is set (then float32 ``[N, P]``)."""
        features, labels = stage_step_features(outputs, batch, pl_module, hook, self.stages)
        return self._through_head(pl_module, features), labels

    def images(self, pl_module: L.LightningModule, images: Tensor) -> Tensor:
        """Features ``[B, D']`` of normalized ``images`` ``[B, 3, H, W]``, as :meth:`step` reads
        them: the model's forward for ``"last"`` (in the mode the caller left it), else the
        exported backbone's stages in eval mode; through the head where one is set."""
        if self.stages == "last":
            features = pl_module(images)
        else:
            features = embed_stages(pl_module, images, self.stages)
        return self._through_head(pl_module, features)

    def _through_head(self, pl_module: L.LightningModule, features: Tensor) -> Tensor:
        if self.head is None:
            return features
        return through_head(pl_module, self.head, features, self.callback)


def setup_labeled_monitor(
    trainer: L.Trainer, pl_module: L.LightningModule, reader: FeatureReader, num_classes: int | None
) -> int:
    """What a monitor that reads labels checks at ``setup``: the model has the ``reader``'s
    head; returns the class count, ``num_classes`` or else the datamodule's."""
    reader.check(pl_module)
    if num_classes is not None:
        return num_classes
    fix = f"pass {reader.callback}(num_classes=...) or remove the callback"
    return datamodule_num_classes(trainer, reader.callback, fix)


def warn_if_no_validation(trainer: L.Trainer, callback: str, metrics: str) -> None:
    """Warns (once per fit) that ``metrics`` will not be logged when there is no validation."""
    datamodule = getattr(trainer, "datamodule", None)
    no_split = datamodule is not None and getattr(datamodule, "val_set", "") is None
    if no_split or trainer.limit_val_batches == 0:
        rank_zero_warn(
            f"{callback}: there is no validation split, so {metrics} will not be logged; set "
            "data.val_fraction (e.g. 0.1) to hold out a stratified share of the training images "
            "for validation, or give the data a test/ or val/ folder"
        )
