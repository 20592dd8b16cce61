"""bf16 mixed precision against float32: every exported method's step under CPU bf16 autocast
gives the float32 loss and gradients to bf16's precision, not just a finite number."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from ssl_lightning.corruptions import normalize
from ssl_lightning.datamodules import Batch
from ssl_lightning.methods import SSLMethod
from tests.test_method_contract import (  # noqa: F401  (cache_dir, sample_images: fixtures)
    METHODS,
    TINY_BACKBONES,
    cache_dir,
    sample_images,
)


def _small(method: type[SSLMethod]) -> SSLMethod:
    """The method on a tiny backbone with its heads 64 wide (a precision check needs no width)."""
    narrow = {
        name: 64
        for name, p in inspect.signature(method.__init__).parameters.items()
        if (name.endswith("_dim") or name == "num_prototypes") and type(p.default) is int
    }
    for name, kwargs in TINY_BACKBONES:
        try:
            return method(backbone=name, backbone_kwargs=kwargs, **narrow)
        except TypeError:  # a method that needs the other kind of backbone (MAE: a ViT)
            continue
    raise AssertionError(f"{method.__name__} accepts none of {TINY_BACKBONES}")


def _loss_and_grads(
    model: SSLMethod, batch: Batch, bf16: bool
) -> tuple[float, dict[str, torch.Tensor]]:
    model = copy.deepcopy(model)  # steps may move state (a DINO center); both start equal
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model.pretext_step(batch).loss
    loss.backward()
    grads = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_a_bf16_step_matches_float32(
    method: type[SSLMethod],
    sample_images: tuple[torch.Tensor, torch.Tensor],  # noqa: F811
) -> None:
    torch.manual_seed(0)
    model = _small(method)
    images, labels = sample_images
    batch = model.default_corruption()(images, labels, torch.Generator().manual_seed(0))
    batch = batch.map_images(lambda t: normalize(t, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    loss32, grads32 = _loss_and_grads(model, batch, bf16=False)
    loss16, grads16 = _loss_and_grads(model, batch, bf16=True)
    # bf16 keeps 8 bits of mantissa (relative rounding 2^-8 = 0.4%) through a few layers.
    assert loss16 == pytest.approx(loss32, rel=0.03, abs=1e-3)
    assert grads16.keys() == grads32.keys()
    flat32 = torch.cat([g.flatten() for g in grads32.values()])
    flat16 = torch.cat([grads16[n].flatten() for n in grads32])
    cosine = torch.nn.functional.cosine_similarity(flat16, flat32, dim=0)
    # Lowest on these seeds: Barlow Twins (0.975), whose cross-correlation gradient sums many
    # small bf16 products; the others are above 0.99.
    assert cosine > 0.95, f"bf16 gradients point elsewhere (cosine {cosine:.3f})"
