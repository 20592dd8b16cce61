"""JPEG shards on disk: what `prepare` writes, resuming a killed run, checksums, bad inputs."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_lightning.cli import main
from ssl_lightning.datamodules import ImageFolderDataModule, shard_writer
from ssl_lightning.datamodules.shard_dataset import open_split
from ssl_lightning.datamodules.shard_writer import prepare_shards
from ssl_lightning.datamodules.shards import MANIFEST, JpegShards, ShardError, read_manifest


def make_folder(root: Path, per_class: int = 6, size: tuple[int, int] = (48, 40)) -> Path:
    """``root/train/{a,b}`` and ``root/test/{a,b}``: smooth random RGB images (PNG and JPEG)
    of ``size`` (w, h), each one different."""
    g = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", 2)):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                coarse = g.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
                img = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
                img.save(folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}", quality=95)
    return root


def test_prepare_stores_resized_jpegs_with_labels_names_and_checksums(tmp_path: Path) -> None:
    source = make_folder(tmp_path / "images")
    main(
        [
            "prepare",
            str(source),
            str(tmp_path / "shards"),
            "--size",
            "20",
            "--images-per-shard",
            "5",
        ]
    )
    manifest = read_manifest(tmp_path / "shards")
    assert manifest["size"] == 20 and manifest["quality"] == 90
    assert manifest["classes"] == ["a", "b"]
    train = manifest["splits"]["train"]
    assert train["count"] == 12 and [s["count"] for s in train["shards"]] == [5, 5, 2]
    shards = JpegShards(tmp_path / "shards", train)
    assert shards.labels.tolist() == [0] * 6 + [1] * 6
    assert (
        shards.describe(7)
        == f"shard {tmp_path / 'shards/train/shard-00001.jpgs'}, image 2 (b/001.png)"
    )
    for row in range(12):
        stored = Image.open(io.BytesIO(shards.read(row).numpy().tobytes()))
        assert stored.format == "JPEG" and stored.size == (24, 20)  # 48x40, shorter side 20
        # The reference: PIL's own resize of the source, as prepare promises (within JPEG loss).
        name = shards.names[row // 5][row % 5]
        source_img = Image.open(source / "train" / name).convert("RGB")
        expected = source_img.resize((24, 20), Image.Resampling.BILINEAR, reducing_gap=None)
        diff = np.abs(np.asarray(stored.convert("RGB"), np.int16) - np.asarray(expected, np.int16))
        assert diff.mean() < 8, name  # JPEG at quality 90, 4:2:0, on 24x20 random colours
        other = np.asarray(expected.transpose(Image.Transpose.ROTATE_180), np.int16)
        assert np.abs(np.asarray(stored.convert("RGB"), np.int16) - other).mean() > 4 * diff.mean()
    assert manifest["splits"]["test"]["count"] == 4


def test_a_killed_prepare_resumes_and_writes_the_same_bytes(tmp_path: Path) -> None:
    source = make_folder(tmp_path / "images", per_class=8)
    straight = tmp_path / "straight"
    prepare_shards(source, straight, size=24, images_per_shard=2, progress=False)

    killed = tmp_path / "killed"
    # A forked child (no new interpreter to start), slowed down so that it is killed mid-way.
    process = multiprocessing.get_context("fork").Process(
        target=_slow_prepare, args=(source, killed)
    )
    process.start()
    deadline = time.time() + 60
    while not (killed / "train" / "shard-00002.jpgs").exists() and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    done = sorted(p.name for p in (killed / "train").glob("shard-*.jpgs"))
    assert 3 <= len(done) < 8 and not (killed / MANIFEST).exists()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        ImageFolderDataModule(killed, storage="jpeg").setup("fit")  # nothing half-done is read
    kept = {name: (killed / "train" / name).stat().st_mtime_ns for name in done}

    prepare_shards(source, killed, size=24, images_per_shard=2, progress=False)
    for name, mtime in kept.items():
        assert (killed / "train" / name).stat().st_mtime_ns == mtime  # kept, not rewritten
    files = sorted(p.relative_to(straight) for p in straight.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(killed) for p in killed.rglob("*") if p.is_file())
    for f in files:
        if f.name != MANIFEST:
            assert (straight / f).read_bytes() == (killed / f).read_bytes(), f
    assert read_manifest(straight)["splits"] == read_manifest(killed)["splits"]


def _slow_prepare(source: Path, out: Path) -> None:
    encode = shard_writer.encode_image

    def slow(*args):
        time.sleep(0.05)
        return encode(*args)

    shard_writer.encode_image = slow  # type: ignore[assignment]
    prepare_shards(source, out, size=24, images_per_shard=2, workers=1, progress=False)


def test_a_changed_byte_is_a_checksum_error_naming_the_shard_and_image(tmp_path: Path) -> None:
    source = make_folder(tmp_path / "images")
    out = tmp_path / "shards"
    prepare_shards(source, out, size=20, images_per_shard=5, progress=False)
    shards, _, _ = open_split(out, "train")  # type: ignore[misc]
    path = out / "train" / "shard-00001.jpgs"
    data = bytearray(path.read_bytes())
    data[int(shards.offsets[6]) + 40] ^= 0xFF  # a byte inside row 6: shard 1, image 1
    path.write_bytes(bytes(data))
    with pytest.raises(
        ShardError, match=r"shard-00001.jpgs, image 1 \(b/000.jpg\) fails its checksum"
    ):
        shards.read(6)
    shards.read(5)  # the other images of the shard still read

    dm = ImageFolderDataModule(out, batch_size=12, seed=0)
    dm.setup("fit")
    with pytest.raises(ShardError, match="shard-00001.jpgs, image 1"):
        next(iter(dm.train_dataloader()))


def test_a_cut_shard_or_manifest_mismatch_is_refused_at_setup(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    prepare_shards(make_folder(tmp_path / "images"), out, size=20, progress=False)
    path = out / "train" / "shard-00000.jpgs"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ShardError, match=f"shard {path} is .* bytes, {MANIFEST} says"):
        ImageFolderDataModule(out).setup("fit")
    with pytest.raises(ValueError, match="holds JPEG shards .* data.storage=jpeg"):
        ImageFolderDataModule(out, storage="uint8").setup("fit")


def test_prepare_names_a_bad_source_file_and_skips_it_only_when_asked(tmp_path: Path) -> None:
    source = make_folder(tmp_path / "images")
    bad = source / "train" / "a" / "bad.jpg"
    bad.write_bytes((source / "train" / "a" / "000.jpg").read_bytes()[:200])  # truncated
    with pytest.raises(ValueError, match=f"cannot decode image {bad}.*--skip-bad-files"):
        prepare_shards(source, tmp_path / "out", size=20, progress=False)
    prepare_shards(source, tmp_path / "out", size=20, progress=False, skip_bad_files=True)
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["splits"]["train"]["skipped"] == ["a/bad.jpg"]
    assert manifest["splits"]["train"]["count"] == 12


def test_prepare_rejects_bad_settings_naming_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"quality=0.*--quality"):
        prepare_shards(tmp_path, tmp_path / "out", quality=0)
    with pytest.raises(FileNotFoundError, match="no train/ folder"):
        prepare_shards(tmp_path, tmp_path / "out")


def test_stored_images_decode_like_pil_on_the_same_bytes(tmp_path: Path) -> None:
    """The loader's decode (torchvision, center square, resize) against PIL on the same
    stored bytes: the same square, PIL's antialiased bilinear resize."""
    out = tmp_path / "shards"
    prepare_shards(make_folder(tmp_path / "images"), out, size=20, progress=False)
    for image_size, tolerance in ((None, 0), (12, 1)):
        dm = ImageFolderDataModule(out, image_size=image_size, batch_size=4)
        dm.setup("fit")
        assert dm.train_set is not None
        images = dm.train_set.images  # [12, 3, S, S]
        side = image_size or 20
        assert images.shape == (12, 3, side, side)
        # channels-last on the CPU, the decoder's own layout
        assert images.is_contiguous(memory_format=torch.channels_last)
        shards = dm.train_set.shards  # type: ignore[attr-defined]
        for row in range(12):
            pil = Image.open(io.BytesIO(shards.read(row).numpy().tobytes())).convert("RGB")
            left = (pil.width - pil.height) // 2
            square = pil.crop((left, 0, left + pil.height, pil.height))
            if image_size is not None:
                square = square.resize((side, side), Image.Resampling.BILINEAR, reducing_gap=None)
            expected = torch.from_numpy(np.array(square)).permute(2, 0, 1)
            assert (images[row].int() - expected.int()).abs().max() <= tolerance
