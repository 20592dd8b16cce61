"""The online probe's optimizer: built for the head's device, a step undone without a host
sync where a batch had no label, and the head and its state loaded from a checkpoint (from
another device too)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["load_probe_state", "place_optimizer_state", "probe_optimizer", "step_where"]


def step_where(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], take: Tensor) -> None:
    """``optimizer.step()``, undone where the device bool ``take`` is ``False``: parameters and
    optimizer state are restored with ``torch.where`` (no host-device sync; the probe's head
    is small, so the copies are cheap). State that the step created starts from zero, as the
    optimizers' own fresh state does."""
    saved = [p.detach().clone() for p in params]
    state = {
        i: {k: v.clone() for k, v in optimizer.state[p].items() if isinstance(v, Tensor)}
        for i, p in enumerate(params)
        if p in optimizer.state
    }
    optimizer.step()
    with torch.no_grad():
        for i, (p, old) in enumerate(zip(params, saved, strict=True)):
            p.copy_(torch.where(take, p, old))
            for key, value in optimizer.state[p].items():
                if isinstance(value, Tensor):
                    before = state.get(i, {}).get(key, torch.zeros_like(value))
                    value.copy_(torch.where(take.to(value.device), value, before))


def probe_optimizer(
    name: str, head: nn.Module, lr: float, weight_decay: float, device: torch.device
) -> torch.optim.Optimizer:
    """``"adam"`` (capturable on a GPU: its step count stays on the device, where
    :func:`step_where` can undo it) or ``"sgd"`` (momentum 0.9) over ``head``'s parameters."""
    if name == "adam":
        capturable = device.type == "cuda"
        return torch.optim.Adam(
            head.parameters(), lr=lr, weight_decay=weight_decay, capturable=capturable
        )
    return torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)


def place_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Adam's step counts where this device kind wants them after loading a checkpoint from
    another: on a GPU (``capturable``, for :func:`step_where`), else on the CPU."""
    capturable = device.type == "cuda"
    for group in optimizer.param_groups:
        if "capturable" not in group:
            continue
        group["capturable"] = capturable
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if isinstance(step, Tensor):
                optimizer.state[p]["step"] = step.to(device if capturable else "cpu")


def load_probe_state(
    head: nn.Linear, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Loads a probe's checkpointed ``state`` (``{"head", "optimizer", "num_classes",
    "num_features"}``) into ``head`` and ``optimizer``, once the shapes are checked to agree."""
    shape = (state.get("num_classes"), state.get("num_features"))
    if shape != (head.out_features, head.in_features):
        raise ValueError(
            f"the checkpoint's probe has (num_classes, num_features) = {shape}, this run's "
            f"{(head.out_features, head.in_features)}; resume with the same num_classes, "
            "backbone and head"
        )
    head.load_state_dict(state["head"])
    optimizer.load_state_dict(state["optimizer"])  # moves its state to the head's device
    place_optimizer_state(optimizer, head.weight.device)
