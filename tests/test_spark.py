"""SparK: the sparse (masked) layers against dense references, the mask never leaking into the
visible features, the hierarchical decoder, the loss against a per-unit loop, and the errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_lightning import SparK
from ssl_lightning.backbones import create_backbone
from ssl_lightning.backbones.sparse import (
    MaskedBatchNorm2d,
    MaskedConv2d,
    SparseMask,
    is_sparse,
    sparsify,
)
from ssl_lightning.corruptions import PatchMask
from ssl_lightning.decoders import SparseDecoder
from ssl_lightning.layers import eval_mode, mask_to_pixels

TINY = {"backbone": "convnet", "backbone_kwargs": {"width": 8, "depth": 3}}
CNNS = [("convnet", {"width": 8, "depth": 3}), ("resnet18", {"width": 4})]


def _units(batch: int, side: int, seed: int = 0) -> Tensor:
    """``[B, side, side]`` visible units, about 40 % of them (SparK hides 60 %)."""
    return torch.rand(batch, side, side, generator=torch.Generator().manual_seed(seed)) < 0.4


def _slow_resize(visible: Tensor, height: int) -> Tensor:
    """A position is visible when any unit it covers, or the unit covering it, is."""
    b, side, _ = visible.shape
    out = torch.zeros(b, 1, height, height)
    for i in range(b):
        for y in range(height):
            for x in range(height):
                if height >= side:
                    f = height // side
                    out[i, 0, y, x] = float(visible[i, y // f, x // f])
                else:
                    f = side // height
                    covered = visible[i, y * f : (y + 1) * f, x * f : (x + 1) * f]
                    out[i, 0, y, x] = float(covered.any())
    return out


@pytest.mark.parametrize("height", [16, 4, 2, 1])
def test_the_mask_at_each_resolution_matches_a_loop(height: int) -> None:
    mask = SparseMask()
    visible = _units(3, 4)
    with mask.applied(visible):
        assert torch.equal(mask.at(height, height), _slow_resize(visible, height))
    assert mask.visible is None  # unset on leaving


def test_masked_batchnorm_matches_batchnorm_over_the_visible_positions() -> None:
    """Output, running statistics and the eval-mode output against ``BatchNorm1d`` on the
    gathered visible rows ``[N, C]``; hidden positions are zero."""
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(5)
    nn.init.uniform_(norm.weight, 0.5, 2.0)
    nn.init.normal_(norm.bias)
    reference = nn.BatchNorm1d(5)
    reference.load_state_dict(norm.state_dict())
    mask = sparsify(nn.Sequential(norm))
    assert isinstance(norm, MaskedBatchNorm2d)
    visible = _units(3, 4)
    keep = mask_to_pixels(visible, 2)[:, 0]  # [B, 8, 8]
    for _ in range(2):  # two steps: the running statistics follow both
        x = torch.randn(3, 5, 8, 8) * 3 + 1
        with mask.applied(visible):
            out = norm(x)
        expected = reference(x.permute(0, 2, 3, 1)[keep])  # [N, C]
        torch.testing.assert_close(out.permute(0, 2, 3, 1)[keep], expected)
        assert out.permute(0, 2, 3, 1)[~keep].abs().max() == 0
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(norm, name), getattr(reference, name))
    norm.eval(), reference.eval()
    with mask.applied(visible):
        out = norm(x)
    expected = reference(x.permute(0, 2, 3, 1)[keep])
    torch.testing.assert_close(out.permute(0, 2, 3, 1)[keep], expected)


@pytest.mark.parametrize(("name", "kwargs"), CNNS)
def test_sparsify_keeps_the_weights_and_the_dense_output(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    dense = create_backbone(name, **kwargs)
    sparse = create_backbone(name, **kwargs)
    sparse.load_state_dict(dense.state_dict())
    sparsify(sparse)
    assert sparse.state_dict().keys() == dense.state_dict().keys()
    assert is_sparse(sparse) and not is_sparse(dense)
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(sparse(x), dense(x), rtol=0, atol=0)  # train mode: batch stats
    plain = create_backbone(name, **kwargs)  # the export: a plain backbone loads the weights
    plain.load_state_dict(sparse.state_dict(), strict=True)


@pytest.mark.parametrize(("name", "kwargs"), CNNS)
def test_every_convolution_reads_zeros_at_the_hidden_positions(name: str, kwargs: dict) -> None:
    """The definition of a sparse convolution: nothing computed at a hidden position reaches a
    later layer. A dense pass over the same zero-filled image breaks it (the test's power)."""
    torch.manual_seed(0)
    backbone = create_backbone(name, **kwargs)
    visible = _units(4, 4)
    images = torch.randn(4, 3, 32, 32) * mask_to_pixels(visible, 8)
    leaks: list[float] = []

    def record(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        x = args[0]
        hidden = _slow_resize(visible, x.shape[-1]) == 0
        leaks.append(float(x.detach().masked_select(hidden).abs().max()) if hidden.any() else 0.0)

    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs:
        conv.register_forward_pre_hook(record)
    backbone.forward_stages(images)  # type: ignore[operator]
    assert max(leaks) > 0  # dense: the holes fill up after the first convolution
    leaks.clear()
    mask = sparsify(backbone)
    assert all(isinstance(conv, MaskedConv2d) for conv in convs)
    with mask.applied(visible):
        backbone.forward_stages(images)  # type: ignore[operator]
    assert len(leaks) == len(convs) and max(leaks) == 0


@pytest.mark.parametrize(("name", "kwargs"), CNNS)
def test_hidden_pixels_never_reach_a_visible_feature(name: str, kwargs: dict) -> None:
    """Perturbing the hidden pixels leaves every visible encoder feature, at every stage, and
    the whole reconstruction unchanged (to 1e-6), in training mode (batch statistics)."""
    torch.manual_seed(0)
    model = SparK(backbone=name, backbone_kwargs=kwargs, patch_size=8)
    clean = torch.rand(4, 3, 32, 32)
    hidden = ~_units(4, 4)
    pixels = mask_to_pixels(hidden, 8)
    perturbed = torch.where(pixels, torch.randn_like(clean) * 10, clean)
    stages: list[list[Tensor]] = []
    captured: list[Tensor] = []
    model.decoder.register_forward_pre_hook(lambda m, args: captured.extend(args[0]))
    for images in (clean, perturbed):
        out = model.reconstruct(images, hidden)
        stages.append([*captured, out])
        captured.clear()
    for before, after in zip(*stages, strict=True):
        torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_the_decoder_reads_no_hidden_feature() -> None:
    """The decoder replaces each stage's hidden positions by its mask token."""
    torch.manual_seed(0)
    decoder = SparseDecoder([8, 16], upsample_factor=2, channels=8)
    stages = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)]
    visible = _units(2, 8)
    keeps = [_slow_resize(visible, 16), _slow_resize(visible, 8)]
    noisy = [s + 5 * torch.randn_like(s) * (1 - k) for s, k in zip(stages, keeps, strict=True)]
    torch.testing.assert_close(decoder(noisy, keeps), decoder(stages, keeps))
    assert decoder(stages, keeps).shape == (2, 3, 32, 32)


def test_the_monitoring_features_are_the_eval_mode_dense_ones_and_leave_batchnorm_alone() -> None:
    """The step's features are those evaluation computes (dense, eval mode), and the
    BatchNorm running statistics are those the sparse pass alone leaves."""
    torch.manual_seed(0)
    model = SparK(**TINY, patch_size=8).train()
    clean = torch.rand(4, 3, 32, 32)
    batch = PatchMask(8, 0.6)(clean, torch.zeros(4, dtype=torch.long), torch.Generator())
    twin = copy.deepcopy(model)
    features = model.pretext_step(batch).features
    twin.reconstruct(batch.views[0], batch.mask)
    for (name, mine), theirs in zip(model.named_buffers(), twin.buffers(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0, msg=name)
    assert model.backbone.training
    torch.testing.assert_close(features, twin.backbone.eval()(batch.clean))


def test_the_mask_tokens_get_no_weight_decay_as_in_the_official_code() -> None:
    """The groups the optimizer is built from leave the tokens undecayed; the decoder's convolutions
    and the backbone's kernels keep their decay."""
    model = SparK(**TINY, weight_decay=0.5)
    decayed = {
        id(p) for g in model.configure_param_groups() if g["weight_decay"] > 0 for p in g["params"]
    }
    assert decayed.isdisjoint(id(t) for t in model.decoder.mask_tokens)
    assert id(model.decoder.head.weight) in decayed
    kernels = [p for p in model.backbone.parameters() if p.ndim == 4]
    assert kernels and all(id(p) in decayed for p in kernels)
    everything = {id(p) for g in model.configure_param_groups() for p in g["params"]}
    assert everything == {id(p) for p in model.parameters() if p.requires_grad}


def test_the_loss_is_the_normalized_unit_error_over_the_hidden_units() -> None:
    torch.manual_seed(0)
    model = SparK(**TINY, patch_size=8)
    clean = torch.rand(2, 3, 32, 32)
    batch = PatchMask(8, 0.6)(clean, torch.zeros(2, dtype=torch.long), torch.Generator())
    loss = model.pretext_step(batch).loss
    pred = model.reconstruct(batch.views[0], batch.mask)
    total, count = 0.0, 0
    for i in range(2):
        for y in range(4):
            for x in range(4):
                if not batch.mask[i, y, x]:
                    continue
                unit = (slice(None), slice(8 * y, 8 * y + 8), slice(8 * x, 8 * x + 8))
                target = clean[i][unit]
                target = (target - target.mean()) / (target.var(unbiased=False) + 1e-6).sqrt()
                total += float(F.mse_loss(pred[i][unit], target))
                count += 1
    torch.testing.assert_close(loss, torch.tensor(total / count), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "kwargs", "size", "unit"),
    [
        ("resnet18", {"width": 4}, 32, 8),  # CIFAR stem: stride 8, 4x4 units
        ("convnet", {"width": 4, "depth": 4}, 32, 16),  # stride 16, 2x2 units
        ("convnet", {"width": 4, "depth": 2}, 32, 4),  # stride 4, 8x8 units
        ("resnet18", {"width": 4, "cifar_stem": False}, 64, 32),  # stride 32, 2x2 units
        ("resnet18", {"width": 4, "cifar_stem": False}, 32, 16),  # stride 32 halved once
    ],
)
def test_the_default_unit_is_the_total_stride(
    name: str, kwargs: dict, size: int, unit: int
) -> None:
    model = SparK(backbone=name, backbone_kwargs=kwargs, image_size=size)
    assert model.patch_size == unit
    assert model.default_corruption().patch_size == unit


def test_a_vit_is_refused_with_the_fix() -> None:
    with pytest.raises(TypeError, match="model MAE"):
        SparK(backbone="vit_tiny", backbone_kwargs={"dim": 32, "depth": 1, "num_heads": 2})


def test_sync_batchnorm_is_refused_at_fit_start() -> None:
    model = SparK(**TINY)
    model.backbone = nn.SyncBatchNorm.convert_sync_batchnorm(model.backbone)
    with pytest.raises(RuntimeError, match="sync_batchnorm=false"):
        model.on_fit_start()


def test_a_corruption_with_other_units_is_refused() -> None:
    model = SparK(**TINY, patch_size=8)
    with pytest.raises(ValueError, match="model.patch_size"):
        model.check_corruption(PatchMask(patch_size=4, mask_ratio=0.6))


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_mode_it_found_also_on_an_error(training: bool) -> None:
    """The helper behind every side-effect-free pass (SparK's monitoring features, the probe's
    stages, the frozen evaluation): eval mode inside, the module's own mode after."""
    module = nn.Sequential(nn.BatchNorm2d(3)).train(training)
    with eval_mode(module):
        assert not any(m.training for m in module.modules())
    assert all(m.training == training for m in module.modules())
    with pytest.raises(RuntimeError, match="inside"), eval_mode(module):
        raise RuntimeError("inside")
    assert all(m.training == training for m in module.modules())
