"""The ViT backbone and MAE: subset encoding, visible-token selection, loss, corruption, CLI."""

import math
from pathlib import Path

import pytest
import torch

from ssl_lightning import MAE, create_backbone
from ssl_lightning.backbones.vit import VisionTransformer
from ssl_lightning.cli import main
from ssl_lightning.datamodules import Batch, ImageFolderDataModule, PatchMask, SimCLRViews
from ssl_lightning.layers import patchify, sincos_pos_embed_2d, unpatchify, visible_index
from tests.helpers import SAMPLE, sample_fit_args, tiny_trainer

TINY_VIT = {"dim": 32, "depth": 2, "num_heads": 2}
TINY = {
    "backbone": "vit_tiny",
    "backbone_kwargs": TINY_VIT,
    "decoder_dim": 32,
    "decoder_depth": 1,
    "decoder_num_heads": 2,
}


def _masked_batch(images: torch.Tensor, patch_size: int = 4, seed: int = 0) -> Batch:
    labels = torch.arange(images.shape[0])
    return PatchMask(patch_size, 0.75)(images, labels, torch.Generator().manual_seed(seed))


# --- ViT backbone ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "dim", "heads"), [("vit_tiny", 192, 3), ("vit_small", 384, 6)])
def test_registered_vits_have_the_standard_sizes(name: str, dim: int, heads: int) -> None:
    model = create_backbone(name)
    assert isinstance(model, VisionTransformer)
    assert model.num_features == dim and len(model.blocks) == 12
    assert model.blocks[0].attn.num_heads == heads
    assert (model.patch_size, model.grid_size, model.num_patches) == (4, (8, 8), 64)
    tokens = model.forward_features(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 1 + 64, dim)


def test_pooling_is_the_mean_of_patch_tokens_or_the_class_token() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    model = create_backbone("vit_tiny", **TINY_VIT)
    tokens = model.forward_features(x)
    torch.testing.assert_close(model(x), tokens[:, 1:].mean(dim=1))
    cls_model = create_backbone("vit_tiny", **TINY_VIT, pool="cls")
    cls_model.load_state_dict(model.state_dict())
    torch.testing.assert_close(cls_model(x), tokens[:, 0])


def test_forward_tokens_encodes_only_the_kept_patches() -> None:
    torch.manual_seed(0)
    model = create_backbone("vit_tiny", **TINY_VIT)
    x = torch.randn(3, 3, 32, 32)
    keep = torch.stack([torch.randperm(64)[:16] for _ in range(3)])  # [3, 16]
    out = model.forward_tokens(x, keep)
    assert out.shape == (3, 17, 32)
    for b in range(3):  # reference: one image at a time, patches picked by a Python loop
        tokens = model.embed_patches(x[b : b + 1])[0]  # [64, D]
        seq = torch.stack([model.cls_token[0, 0]] + [tokens[int(i)] for i in keep[b]])[None]
        for block in model.blocks:
            seq = block(seq)
        torch.testing.assert_close(out[b], model.norm(seq)[0], atol=1e-5, rtol=1e-5)
    # Other patches' pixels do not matter.
    hidden = torch.ones(64, dtype=torch.bool)
    hidden[keep[0]] = False
    pixels = hidden.view(8, 8).repeat_interleave(4, 0).repeat_interleave(4, 1)
    changed = x.clone()
    changed[0][:, pixels] = 100.0
    torch.testing.assert_close(model.forward_tokens(changed, keep)[0], out[0])
    all_patches = torch.arange(64).expand(3, -1)
    torch.testing.assert_close(model.forward_tokens(x, all_patches), model.forward_features(x))


def test_sincos_positions_follow_the_formula() -> None:
    embed = sincos_pos_embed_2d(3, 5, 8)  # [15, 8]: row sin/cos, then column sin/cos
    assert embed.shape == (15, 8)
    row, col = 2, 3
    freqs = [1.0, 1.0 / 100.0]  # 1 / 10000^(i / 2), i = 0, 1
    expected = (
        [math.sin(row * f) for f in freqs]
        + [math.cos(row * f) for f in freqs]
        + [math.sin(col * f) for f in freqs]
        + [math.cos(col * f) for f in freqs]
    )
    torch.testing.assert_close(embed[row * 5 + col], torch.tensor(expected))


def test_patchify_is_row_major_and_unpatchify_inverts_it() -> None:
    images = torch.randn(2, 3, 8, 12)
    patches = patchify(images, 4)  # [2, 6, 48]
    assert patches.shape == (2, 6, 48)
    block = images[1, :, 4:8, 8:12]  # patch (row 1, column 2) = index 5
    torch.testing.assert_close(patches[1, 5], block.permute(1, 2, 0).reshape(-1))
    torch.testing.assert_close(unpatchify(patches, 4, (2, 3)), images)


def test_vit_size_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"patch_size=5.*image_size=32"):
        create_backbone("vit_tiny", patch_size=5)
    model = create_backbone("vit_tiny", **TINY_VIT)
    with pytest.raises(ValueError, match=r"18x18.*patch_size=4.*data\.corruption.*local_size"):
        model(torch.randn(1, 3, 18, 18))
    with pytest.raises(ValueError, match=r"backbone_kwargs\.patch_size"):
        model(torch.randn(1, 3, 32, 22))


@pytest.mark.parametrize("size", [(16, 16), (64, 64), (16, 24)])
def test_vit_on_another_size_equals_a_vit_built_for_it(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = create_backbone("vit_tiny", **TINY_VIT).eval()  # built for 32x32
    x = torch.randn(2, 3, *size)
    if size[0] == size[1]:
        built = create_backbone("vit_tiny", **TINY_VIT, image_size=size[0]).eval()
        built.load_state_dict(model.state_dict())  # same weights; positions are not saved
        torch.testing.assert_close(model.forward_features(x), built.forward_features(x))
    grid = (size[0] // 4, size[1] // 4)
    expected = sincos_pos_embed_2d(*grid, 32)[None]  # the formula for this grid, row-major
    torch.testing.assert_close(
        model.embed_patches(x), model.patch_embed(x).flatten(2).mT + expected
    )
    assert model.pos_embed_for(*grid) is model.pos_embed_for(*grid)  # computed once per grid
    assert model(x).shape == (2, 32) and model(torch.randn(1, 3, 32, 32)).shape == (1, 32)


# --- MAE ---------------------------------------------------------------------------------------


def test_visible_index_keeps_exactly_the_unmasked_patches_in_order() -> None:
    mask = _masked_batch(torch.rand(5, 3, 32, 32)).mask
    assert mask is not None
    flat = mask.flatten(1)  # [5, 64]
    keep = visible_index(flat, 48)
    assert keep.shape == (5, 16)
    for b in range(5):
        assert keep[b].tolist() == [i for i in range(64) if not flat[b, i]]
    uneven = flat.clone()
    uneven[0, keep[0, 0]] = True
    # Checked on the device without a sync: on the CPU the check raises at once.
    with pytest.raises(RuntimeError, match="same number of patches"):
        visible_index(uneven, 48)


def test_loss_matches_a_per_patch_reference() -> None:
    torch.manual_seed(0)
    for norm_pix_loss in (True, False):
        model = MAE(**TINY, norm_pix_loss=norm_pix_loss)
        batch = _masked_batch(torch.rand(2, 3, 32, 32))
        assert batch.mask is not None and batch.clean is not None
        out = model.pretext_step(batch)
        pred = model.reconstruct_patches(batch.views[0], batch.mask.flatten(1))  # [2, 64, 48]
        errors = []
        for b in range(2):
            for r in range(8):
                for c in range(8):
                    if not batch.mask[b, r, c]:
                        continue
                    patch = batch.clean[b, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4]
                    target = patch.permute(1, 2, 0).reshape(-1)  # (row, column, channel)
                    if norm_pix_loss:
                        std = (target.var(unbiased=False) + 1e-6) ** 0.5
                        target = (target - target.mean()) / std
                    errors.append(((pred[b, 8 * r + c] - target) ** 2).mean())
        assert len(errors) == 96
        torch.testing.assert_close(out.loss, torch.stack(errors).mean())


def test_hidden_pixels_never_reach_the_encoder() -> None:
    torch.manual_seed(0)
    model = MAE(**TINY)
    batch = _masked_batch(torch.rand(2, 3, 32, 32))
    assert batch.mask is not None
    pixels = (
        batch.mask.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None].expand(-1, 3, -1, -1)
    )
    noisy = batch.views[0].masked_fill(pixels, 7.0)
    flat = batch.mask.flatten(1)
    torch.testing.assert_close(
        model.reconstruct_patches(noisy, flat), model.reconstruct_patches(batch.views[0], flat)
    )


def test_features_come_from_the_clean_images_and_preview_pastes_visible_patches() -> None:
    torch.manual_seed(0)
    model = MAE(**TINY)
    batch = _masked_batch(torch.rand(2, 3, 32, 32))
    assert batch.clean is not None and batch.mask is not None
    out = model.pretext_step(batch)
    torch.testing.assert_close(out.features, model(batch.clean))
    assert not out.features.requires_grad and out.labels.tolist() == [0, 1]
    rows = model.preview(batch)
    assert list(rows) == ["input", "masked", "reconstruction"]
    visible = ~batch.mask.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None]
    visible = visible.expand(-1, 3, -1, -1)
    torch.testing.assert_close(rows["reconstruction"][visible], batch.clean[visible])


def test_bf16_autocast_trains() -> None:
    torch.manual_seed(0)
    model = MAE(**TINY)
    batch = _masked_batch(torch.rand(2, 3, 32, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.pretext_step(batch).loss
    loss.backward()
    assert torch.isfinite(loss) and model.decoder.mask_token.grad is not None


def test_default_corruption_uses_the_vits_patch_size() -> None:
    model = MAE(**{**TINY, "backbone_kwargs": {**TINY_VIT, "patch_size": 8}}, mask_ratio=0.5)
    corruption = model.default_corruption()
    assert isinstance(corruption, PatchMask)
    assert (corruption.patch_size, corruption.mask_ratio) == (8, 0.5)


def test_bad_backbones_batches_and_arguments_name_the_fix() -> None:
    with pytest.raises(TypeError, match=r"ConvNet.*model\.backbone=vit_small"):
        MAE(backbone="convnet")
    with pytest.raises(ValueError, match="model.mask_ratio"):
        MAE(**TINY, mask_ratio=1.0)
    model = MAE(**TINY)
    with pytest.raises(ValueError, match=r"data\.corruption\.init_args\.patch_size=4"):
        model.pretext_step(_masked_batch(torch.rand(2, 3, 32, 32), patch_size=8))
    with pytest.raises(ValueError, match=r"32x32.*64x64.*backbone_kwargs\.image_size=64"):
        model.pretext_step(_masked_batch(torch.rand(2, 3, 64, 64)))
    views = SimCLRViews()(torch.rand(2, 3, 32, 32), torch.zeros(2), torch.Generator())
    with pytest.raises(ValueError, match=r"data\.corruption=PatchMask"):
        model.pretext_step(views)


def test_simclr_views_fail_at_the_first_batch(tmp_path: Path) -> None:
    dm = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path, corruption=SimCLRViews())
    with pytest.raises(ValueError, match="MAE needs a patch mask"):
        tiny_trainer(tmp_path, max_steps=1).fit(MAE(**TINY), dm)


def test_cli_short_name_run(tmp_path: Path) -> None:
    main(
        sample_fit_args(
            tmp_path,
            "MAE",
            "--model.backbone=vit_tiny",
            "--model.backbone_kwargs={dim: 32, depth: 1, num_heads: 2}",
            "--model.decoder_dim=32",
            "--model.decoder_depth=1",
            "--model.decoder_num_heads=2",
        )
    )
    assert "step=2" in next(tmp_path.rglob("epoch=*.ckpt")).name
    config = next(tmp_path.rglob("config.yaml")).read_text()
    assert "class_path: ssl_lightning.MAE" in config
