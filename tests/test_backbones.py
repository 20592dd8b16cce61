"""Backbone registry and contract tests.

The contract tests are parametrized over ``list_backbones()`` itself, so registering a backbone
is enough to have it tested.
"""

from __future__ import annotations

import copy
import inspect
import math
import sys
import types
from typing import Any

import pytest
import torch
import torchvision
from torch import Tensor, nn

from ssl_lightning.backbones import (
    ResNet,
    TimmBackbone,
    TorchvisionBackbone,
    UnknownBackboneError,
    create_backbone,
    list_backbones,
    register_backbone,
    registry,
)
from ssl_lightning.backbones.resnet import BasicBlock, Bottleneck
from ssl_lightning.backbones.stages import resolve_stages, stage_features

NATIVE = [name for name in list_backbones() if "/" not in name]


def _build_small(name: str) -> nn.Module:
    """Build a registered backbone, thin (width 8) where its factory has a `width`."""
    torch.manual_seed(0)
    factory = registry._REGISTRY[name]
    kwargs = {"width": 8} if "width" in inspect.signature(factory).parameters else {}
    return create_backbone(name, **kwargs)


def _check_contract(model: nn.Module, x: Tensor, pooled_is_mean: bool = True) -> Tensor:
    """Shape, pooling and gradient contract; returns the feature map/tokens (eval mode)."""
    batch = x.shape[0]
    assert isinstance(model.num_features, int)

    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model(x)
        stages = model.forward_stages(x)
        concatenated = stage_features(model, x, "all")
    assert out.shape == (batch, model.num_features)
    assert feats.ndim in (3, 4) and feats.shape[0] == batch
    if feats.ndim == 4 and pooled_is_mean:
        torch.testing.assert_close(out, feats.mean(dim=(2, 3)))
    # Stages: the last is forward_features; "all" pools each (maps over h, w; tokens over
    # the patch tokens) and concatenates them in order.
    assert len(stages) >= 1 and all(t.ndim in (3, 4) and t.shape[0] == batch for t in stages)
    torch.testing.assert_close(stages[-1], feats)
    prefix = getattr(model, "num_prefix_tokens", 0)
    pooled = [t.mean(dim=(2, 3)) if t.ndim == 4 else t[:, prefix:].mean(dim=1) for t in stages]
    torch.testing.assert_close(concatenated, torch.cat(pooled, dim=1))

    model.train()
    model.zero_grad(set_to_none=True)
    model(x).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    return feats


# --- contract over every registered (non-prefixed) name --------------------------------------


def test_registry_has_native_backbones() -> None:
    assert {"convnet", "resnet18", "resnet34", "resnet50"} <= set(NATIVE)


@pytest.mark.parametrize("name", NATIVE)
def test_contract(name: str) -> None:
    model = _build_small(name)
    _check_contract(model, torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("name", NATIVE)
def test_channels_last_matches_contiguous(name: str) -> None:
    model = _build_small(name).eval()
    x = torch.randn(2, 3, 32, 32)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = model(x)
        actual = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


# --- torchvision family -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "feature_shape", "pooled_is_mean"),
    [
        ("torchvision/resnet18", (512, 2, 2), True),
        # MobileNetV3 keeps its hidden pre-logit Linear (576 -> 1024) in the pooled forward.
        ("torchvision/mobilenet_v3_small", (576, 2, 2), False),
        # Squeeze-excitation blocks hold pooling modules too; the feature map is the last one's.
        ("torchvision/regnet_y_400mf", (440, 2, 2), True),
    ],
)
def test_torchvision_contract(
    name: str, feature_shape: tuple[int, int, int], pooled_is_mean: bool
) -> None:
    torch.manual_seed(0)
    model = create_backbone(name)
    assert isinstance(model, TorchvisionBackbone)
    x = torch.randn(2, 3, 64, 64)
    feats = _check_contract(model, x, pooled_is_mean)
    assert feats.shape[1:] == feature_shape
    # The capture hook is gone: a plain forward still runs to the end.
    assert model(x).shape == (2, model.num_features)


def test_torchvision_num_features_is_classifier_input() -> None:
    reference = torchvision.models.resnet18(weights=None)
    model = create_backbone("torchvision/resnet18")
    assert model.num_features == reference.fc.in_features == 512
    assert not any(isinstance(m, nn.Linear) for m in model.modules())


def test_torchvision_vit_forward_features_are_tokens() -> None:
    torch.manual_seed(0)
    model = create_backbone("torchvision/vit_b_32", image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.forward_features(x)
        pooled = model(x)
    assert tokens.shape == (2, 1 + 1, 768)  # class token + one 32x32 patch
    torch.testing.assert_close(pooled, tokens[:, 0])


def test_torchvision_unsupported_models_fail_clearly() -> None:
    with pytest.raises(NotImplementedError, match=r"squeezenet1_1.*nn\.Linear"):
        create_backbone("torchvision/squeezenet1_1")
    model = create_backbone("torchvision/shufflenet_v2_x0_5")
    with pytest.raises(NotImplementedError, match="shufflenet_v2_x0_5"):
        model.forward_features(torch.randn(1, 3, 32, 32))


def test_list_torchvision() -> None:
    expected = [
        f"torchvision/{n}" for n in torchvision.models.list_models(module=torchvision.models)
    ]
    assert list_backbones("torchvision/*") == sorted(expected)
    assert "torchvision/resnet18" in list_backbones()
    assert list_backbones("torchvision/resnet1?") == ["torchvision/resnet18"]


# --- registry ---------------------------------------------------------------------------------


def test_list_with_pattern() -> None:
    assert list_backbones("resnet*") == ["resnet18", "resnet34", "resnet50"]
    assert list_backbones("no-such-*") == []
    names = list_backbones()
    assert names == sorted(names)


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("resnet19", "resnet18"), ("torchvision/resnet19", "torchvision/resnet18")],
)
def test_unknown_name_suggests_close_matches(name: str, suggestion: str) -> None:
    with pytest.raises(UnknownBackboneError) as info:
        create_backbone(name)
    message = str(info.value)
    assert repr(name) in message
    assert suggestion in message
    assert "list_backbones()" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_register_and_create(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_backbone(name="tiny_test_net")
    def factory(width: int = 4) -> ResNet:
        return ResNet(BasicBlock, (1, 1, 1, 1), width=width)

    assert "tiny_test_net" in list_backbones("tiny_*")
    assert create_backbone("tiny_test_net", width=2).num_features == 16

    @register_backbone
    def another_test_net() -> ResNet:
        return ResNet(BasicBlock, (1, 1, 1, 1), width=2)

    assert list_backbones("another_test_*") == ["another_test_net"]


def test_double_registration_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    before = dict(registry._REGISTRY)

    def resnet18() -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="'resnet18' is already registered"):
        register_backbone(resnet18)
    with pytest.raises(ValueError, match="'convnet' is already registered"):
        register_backbone(name="convnet")(resnet18)
    with pytest.raises(ValueError, match="reserved"):
        register_backbone(resnet18, name="torchvision/mine")
    assert before == registry._REGISTRY


# --- ResNet -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("cifar_stem", "size"), [(True, 4), (False, 1)])
def test_resnet_stem_spatial_size(cifar_stem: bool, size: int) -> None:
    model = create_backbone("resnet18", width=8, cifar_stem=cifar_stem)
    feats = model.forward_features(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, 64, size, size)


@pytest.mark.parametrize(("name", "num_features"), [("resnet18", 64), ("resnet50", 256)])
def test_resnet_num_features(name: str, num_features: int) -> None:
    assert create_backbone(name, width=8).num_features == num_features


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet18_parameter_count_matches_torchvision() -> None:
    reference = torchvision.models.resnet18(weights=None)
    fc = _num_params(reference.fc)
    stem_difference = (7 * 7 - 3 * 3) * 3 * 64  # 7x7 vs 3x3 first convolution
    expected = _num_params(reference) - fc - stem_difference
    assert _num_params(create_backbone("resnet18")) == expected
    assert round(expected / 1e6, 2) == 11.17
    assert _num_params(create_backbone("resnet18", cifar_stem=False)) == expected + stem_difference


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_imagenet_stem_matches_torchvision_weights(name: str) -> None:
    """Same architecture as torchvision: its weights load strictly and give the same features."""
    torch.manual_seed(0)
    reference = torchvision.models.get_model(name, weights=None)
    for m in reference.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    model = create_backbone(name, cifar_stem=False)
    model.load_state_dict(state, strict=True)
    reference.fc = nn.Identity()

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x), atol=1e-5, rtol=1e-4)


def test_resnet_kaiming_init() -> None:
    torch.manual_seed(0)
    model = create_backbone("resnet18")
    weight = model.layer4[1].conv2.weight  # [512, 512, 3, 3]
    expected_std = math.sqrt(2.0 / (512 * 3 * 3))  # fan_out mode, ReLU gain
    assert abs(weight.std().item() / expected_std - 1) < 0.02
    assert all(
        (m.weight == 1).all() and (m.bias == 0).all()
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
    )


def test_resnet_zero_init_residual_makes_blocks_identity() -> None:
    for name, block_type in [("resnet18", BasicBlock), ("resnet50", Bottleneck)]:
        model = create_backbone(name, width=8, zero_init_residual=True).eval()
        blocks = [m for m in model.modules() if isinstance(m, block_type)]
        assert all((b.last_bn.weight == 0).all() for b in blocks)
        # A block without a projection shortcut is then relu(identity).
        block = model.layer1[1]
        x = torch.randn(2, block.conv1.in_channels, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(block(x), x.relu())


def test_resnet_rejects_bad_width() -> None:
    with pytest.raises(ValueError, match=r"width.*-1"):
        create_backbone("resnet18", width=-1)


# --- ConvNet ----------------------------------------------------------------------------------


def test_convnet_quarter_resolution() -> None:
    model = create_backbone("convnet", width=8)
    assert model.num_features == 16
    assert model.forward_features(torch.randn(2, 3, 32, 48)).shape == (2, 16, 8, 12)
    assert create_backbone("convnet").num_features == 64


def test_convnet_names_the_smallest_image_its_blocks_take() -> None:
    model = create_backbone("convnet", width=4, depth=4)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 32)  # halved 4 times to 1x1
    for run in (model, model.forward_stages):
        with pytest.raises(ValueError, match=r"at least 16 pixels a side, got 14x14.*local_size"):
            run(torch.randn(2, 3, 14, 14))


def test_stages_of_convnet_and_resnet_are_their_blocks() -> None:
    """Independent reference: the blocks run by hand, one after the other."""
    x = torch.randn(2, 3, 32, 32)
    convnet = create_backbone("convnet", width=4, depth=3).eval()
    expected, h = [], x
    for i in range(3):
        h = convnet.features[4 * i : 4 * i + 4](h)
        expected.append(h)
    with torch.no_grad():
        for got, want in zip(convnet.forward_stages(x), expected, strict=True):
            torch.testing.assert_close(got, want)
    resnet = create_backbone("resnet18", width=4).eval()
    with torch.no_grad():
        h = resnet.relu(resnet.bn1(resnet.conv1(x)))
        got = resnet.forward_stages(x)
        layers = (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)
        for layer, stage in zip(layers, got, strict=True):
            h = layer(h)
            torch.testing.assert_close(stage, h)
    assert [t.shape[1:] for t in got] == [(4, 32, 32), (8, 16, 16), (16, 8, 8), (32, 4, 4)]


def test_vit_stages_are_block_outputs() -> None:
    vit = create_backbone("vit_tiny", dim=16, depth=3, num_heads=2).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stages = vit.forward_stages(x)
        tokens = vit.embed_patches(x)
        tokens = torch.cat([vit.cls_token.expand(2, -1, -1), tokens], dim=1)
        for i, block in enumerate(vit.blocks):
            tokens = block(tokens)
            if i < 2:
                torch.testing.assert_close(stages[i], tokens)
        torch.testing.assert_close(stages[-1], vit.norm(tokens))
        # "last" keeps the backbone's own pooling (here the patch-token mean).
        torch.testing.assert_close(stage_features(vit, x, "last"), vit(x))


@pytest.mark.parametrize(
    ("stages", "expected"),
    [("last", [3]), ("all", [0, 1, 2, 3]), (1, [1]), ([0, -1], [0, 3]), (-2, [2])],
)
def test_resolve_stages(stages: Any, expected: list[int]) -> None:
    assert resolve_stages(stages, 4) == expected


@pytest.mark.parametrize("stages", ["first", 4, -5, [], [0, 7]])
def test_resolve_stages_rejects_bad_selection(stages: Any) -> None:
    with pytest.raises(ValueError, match="stages"):
        resolve_stages(stages, 4)


def test_convnet_depth_doubles_the_channels_per_block() -> None:
    model = create_backbone("convnet", width=32, depth=4)  # the CPU benchmarks' network
    assert model.num_features == 256
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 256, 2, 2)
    convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [32, 64, 128, 256]
    assert sum(p.numel() for p in model.parameters()) == 3 * 32 * 9 + 32 * 64 * 9 + (
        64 * 128 * 9 + 128 * 256 * 9
    ) + 2 * (32 + 64 + 128 + 256)  # bias-free convs and the BatchNorm scales and shifts
    with pytest.raises(ValueError, match="depth"):
        create_backbone("convnet", depth=0)


# --- timm family ------------------------------------------------------------------------------


def test_timm_missing_raises_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(ImportError, match=r"ssl-lightning\[timm\]"):
        create_backbone("timm/resnet18")
    with pytest.raises(ImportError, match=r"ssl-lightning\[timm\]"):
        list_backbones("timm/*")
    assert not [n for n in list_backbones() if n.startswith("timm/")]


class _FakeTimmModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pre_logits = nn.Linear(8, 12)
        self.num_features = 8
        self.head_hidden_size = 12

    def forward_features(self, x: Tensor) -> Tensor:
        return self.conv(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.pre_logits(self.forward_features(x).mean(dim=(2, 3)))


def test_timm_family_with_fake_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def create_model(name: str, **kwargs: Any) -> nn.Module:
        calls.append((name, kwargs))
        return _FakeTimmModel()

    fake = types.ModuleType("timm")
    fake.create_model = create_model  # type: ignore[attr-defined]
    fake.list_models = lambda: ["fakenet_tiny", "fakenet_small"]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "timm", fake)

    assert list_backbones("timm/*") == ["timm/fakenet_small", "timm/fakenet_tiny"]
    model = create_backbone("timm/fakenet_tiny", drop_rate=0.1)
    assert isinstance(model, TimmBackbone)
    assert calls == [("fakenet_tiny", {"pretrained": False, "num_classes": 0, "drop_rate": 0.1})]
    assert model.num_features == 12  # the pooled output's width, not timm's num_features
    _check_contract(model, torch.randn(2, 3, 16, 16), pooled_is_mean=False)
    with pytest.raises(UnknownBackboneError, match="timm/fakenet_tiny"):
        create_backbone("timm/fakenet_tin")
