"""Optimizers and schedules: LARS, linear warmup + cosine decay, weight-decay groups, and the
builders that SSL methods and linear evaluation share. Plain PyTorch: what a recipe reads
from the trainer (the global batch, the run's length) is in
:mod:`ssl_lightning.methods.schedule`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

OptimizerName = Literal["sgd", "lars", "adamw"]
OPTIMIZERS: tuple[OptimizerName, ...] = ("sgd", "lars", "adamw")


def param_groups(
    params: nn.Module | Iterable[Tensor],
    weight_decay: float,
    exempt: Iterable[Tensor] = (),
) -> list[dict[str, Any]]:
    """Splits the trainable parameters of a module (or a parameter list) into a decayed and a
    non-decayed group.

    The one rule: parameters with ``ndim <= 1`` (biases, norm scales and shifts) get no weight
    decay and no LARS adaptation; matrices and conv kernels get both. ``exempt`` names more
    parameters for the non-decayed group whatever their shape: learned fill values such as
    SparK's ``[1, C, 1, 1]`` mask tokens, which its code exempts by name (timm's
    ``no_weight_decay``).
    """
    exempt_ids = {id(p) for p in exempt}
    decay: list[Tensor] = []
    no_decay: list[Tensor] = []
    for p in params.parameters() if isinstance(params, nn.Module) else params:
        if p.requires_grad:
            (decay if p.ndim > 1 and id(p) not in exempt_ids else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]


def layer_depths(backbone: nn.Module) -> tuple[dict[str, int], int]:
    """The depth of every parameter of ``backbone`` in forward order, and the number of depths.

    Depth ``i`` is the ``i``-th top-level submodule in registration order (which is forward
    order for the registry's backbones), with ``Sequential``/``ModuleList`` containers
    unrolled into their items: the ResNet stem, each residual block, each transformer block,
    the final norm. Parameters registered on the backbone itself (a ViT's class token and
    positions) sit at depth 0, with the input layer.
    """
    units: list[tuple[str, nn.Module]] = []
    for name, child in backbone.named_children():
        if isinstance(child, nn.Sequential | nn.ModuleList):
            units += [(f"{name}.{i}", item) for i, item in child.named_children()]
        else:
            units.append((name, child))
    units = [(name, unit) for name, unit in units if any(True for _ in unit.parameters())]
    depths = {
        f"{name}.{param}": depth
        for depth, (name, unit) in enumerate(units)
        for param, _ in unit.named_parameters()
    }
    for name, _ in backbone.named_parameters(recurse=False):
        depths[name] = 0
    return depths, max(1, len(units))


def layer_decay_groups(
    module: nn.Module, weight_decay: float, layer_decay: float | None, lr_factor: float = 1.0
) -> list[dict[str, Any]]:
    """:func:`param_groups` of ``module`` with a learning-rate factor each: ``lr_factor``,
    times ``layer_decay ** (D - depth)`` per :func:`layer_depths` when ``layer_decay`` is set,
    so the layers nearest the input change least (BEiT, arXiv:2106.08254; MAE fine-tuning)."""
    if layer_decay is None:
        return [{**g, "lr_factor": lr_factor} for g in param_groups(module, weight_decay)]
    depths, count = layer_depths(module)
    by_depth: dict[int, list[Tensor]] = {}
    for name, p in module.named_parameters():
        by_depth.setdefault(depths[name], []).append(p)
    groups = []
    for depth, params in sorted(by_depth.items()):
        factor = lr_factor * layer_decay ** (count - depth)
        groups += [{**g, "lr_factor": factor} for g in param_groups(params, weight_decay)]
    return groups


class LARS(Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017, arXiv:1708.03888).

    For each parameter ``w`` with gradient ``g`` (groups marked ``lars_exclude`` skip the trust
    ratio)::

        g = g + weight_decay * w
        trust = eta * ||w|| / ||g||        (1 where either norm is 0)
        rate = lr * trust                  (clip_lr: min(trust, lr))
        v = momentum * v + rate * g
        w = w - v                          (Nesterov: w - (momentum * v + rate * g))

    This is the update of SimCLR's reference implementation. ``clip_lr`` is solo-learn's
    variant, which its CIFAR recipes use (``clip_lr: True``): the adapted rate ``eta * ||w||
    / ||g||`` is capped at the scheduled ``lr``, so each step moves a weight by at most
    ``eta`` of its norm and by no more than plain SGD would, whatever ``lr`` is.

    Args:
        params: parameters or groups; a group may set ``lars_exclude=True``.
        lr: learning rate.
        momentum: momentum factor.
        weight_decay: L2 penalty added to the gradient.
        eta: trust coefficient.
        nesterov: Nesterov momentum.
        clip_lr: cap the adapted rate at ``lr`` (solo-learn's ``clip_lr``).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 1e-3,
        nesterov: bool = False,
        clip_lr: bool = False,
    ) -> None:
        if lr < 0:
            raise ValueError(f"LARS lr must be >= 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"LARS momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"LARS weight_decay must be >= 0, got {weight_decay}")
        if eta <= 0:
            raise ValueError(f"LARS eta must be > 0, got {eta}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            eta=eta,
            nesterov=nesterov,
            clip_lr=clip_lr,
            lars_exclude=False,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"] != 0:
                    g = g.add(p, alpha=group["weight_decay"])
                rate = group["lr"]
                if not group["lars_exclude"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        group["eta"] * w_norm / g_norm,
                        torch.ones_like(w_norm),
                    )
                    rate = trust.clamp(max=rate) if group["clip_lr"] else rate * trust
                g = g * rate
                if group["momentum"] != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    buf = state["momentum_buffer"]
                    buf.mul_(group["momentum"]).add_(g)
                    g = g.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                p.sub_(g)
        return loss


def warmup_cosine(
    step: int, warmup_steps: int, total_steps: int, final_factor: float = 0.0
) -> float:
    """Learning-rate factor at optimizer step ``step`` (0-based).

    Linear warmup from ``1 / (warmup_steps + 1)`` to 1 over the first ``warmup_steps`` steps
    (never exactly 0, so the first step moves), then cosine decay from 1 to ``final_factor``
    at ``total_steps``; constant ``final_factor`` after that.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(
    name: str,
    groups: list[dict[str, Any]],
    lr: float,
    *,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    lars_eta: float = 1e-3,
    lars_clip: bool = False,
    weight_decay: float = 0.0,
) -> Optimizer:
    """SGD (with momentum), LARS or AdamW over parameter groups.

    A group may set ``lr_factor`` (its learning rate is ``lr * lr_factor``), ``weight_decay``
    (else ``weight_decay``), ``fixed_lr`` (see :func:`warmup_cosine_schedule`) and, for LARS,
    ``lars_exclude``. The schedule scales the other groups' rates by the same factor, so they
    keep their ratios. ``lars_clip`` is :class:`LARS`'s ``clip_lr``.
    """
    if name not in OPTIMIZERS:
        raise ValueError(
            f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}, got {name!r} "
            "(set model.optimizer)"
        )
    resolved = []
    for group in groups:
        group = dict(group)
        group["lr"] = lr * group.pop("lr_factor", 1.0)
        resolved.append(group)
    if name == "lars":
        return LARS(
            resolved,
            lr=lr,
            momentum=momentum,
            eta=lars_eta,
            weight_decay=weight_decay,
            clip_lr=lars_clip,
        )
    if name == "sgd":
        return torch.optim.SGD(resolved, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(resolved, lr=lr, betas=betas, weight_decay=weight_decay)


def warmup_cosine_schedule(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, final_factor: float = 0.0
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer: ``optimizer`` with :func:`warmup_cosine`
    applied to every group's learning rate after each optimizer step, except groups marked
    ``fixed_lr`` (SimSiam's predictor), which keep their initial rate."""

    def schedule(step: int) -> float:
        return warmup_cosine(step, warmup_steps, total_steps, final_factor)

    def constant(step: int) -> float:
        return 1.0

    factors: list[Callable[[int], float]] = [
        constant if g.get("fixed_lr") else schedule for g in optimizer.param_groups
    ]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
