"""ImageFolderDataModule: decoding, modes, the cache, memory-mapped folders and bad input."""

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_lightning.datamodules import ImageFolderDataModule
from ssl_lightning.datamodules.decode import find_images
from tests.helpers import SAMPLE


def test_image_folder_loads_the_real_sample(tmp_path: Path) -> None:
    dm = ImageFolderDataModule(SAMPLE, batch_size=16, cache_dir=tmp_path)
    dm.setup("fit")
    assert dm.num_classes == 10 and dm.classes[0] == "airplane"
    assert dm.train_set is not None and dm.val_set is not None
    assert dm.train_set.images.shape == (120, 3, 32, 32)
    assert dm.val_set.images.shape == (30, 3, 32, 32)
    assert torch.bincount(dm.train_set.labels).tolist() == [12] * 10
    # Pixels equal a direct PIL decode of the same file.
    first = sorted((SAMPLE / "train" / "airplane").iterdir())[0]
    expected = torch.from_numpy(np.array(Image.open(first).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(dm.train_set.images[0], expected)


def test_image_folder_reads_its_cache_on_the_second_run(tmp_path: Path, monkeypatch) -> None:
    first = ImageFolderDataModule(SAMPLE, cache_dir=tmp_path)
    first.setup("fit")
    assert len(list(tmp_path.glob("*.u8"))) == 2

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although a cache exists")

    monkeypatch.setattr("ssl_lightning.datamodules.folder.decode_images", no_decoding)
    second = ImageFolderDataModule(SAMPLE, cache_dir=tmp_path)
    second.setup("fit")
    assert second.train_set is not None and first.train_set is not None
    assert torch.equal(second.train_set.images, first.train_set.images)


def test_image_folder_cache_key_follows_the_folder_contents(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for i in range(3):
        (root / "train" / "a").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(root / "train" / "a" / f"{i}.png")
    dm = ImageFolderDataModule(root, cache_dir=tmp_path / "cache")
    dm.setup("fit")
    Image.new("RGB", (8, 8), (0, 255, 0)).save(root / "train" / "a" / "3.png")
    again = ImageFolderDataModule(root, cache_dir=tmp_path / "cache")
    again.setup("fit")
    assert again.train_set is not None and len(again.train_set) == 4
    assert again.train_set.images[3, 1].float().mean() > 250


def test_image_folder_resizes_and_converts_modes(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    (root / "train" / "x").mkdir(parents=True)
    Image.new("L", (40, 20), 128).save(root / "train" / "x" / "gray.png")
    Image.new("RGBA", (20, 40), (10, 20, 30, 40)).save(root / "train" / "x" / "rgba.png")
    Image.new("P", (16, 16)).save(root / "train" / "x" / "palette.png")
    dm = ImageFolderDataModule(root, image_size=12, use_cache=False)
    dm.setup("fit")
    assert dm.train_set is not None
    assert dm.train_set.images.shape == (3, 3, 12, 12)
    assert dm.val_set is None
    with pytest.raises(ValueError, match="data.image_size"):
        ImageFolderDataModule(root, use_cache=False).setup("fit")


def test_unlabeled_folder_has_labels_minus_one(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    for i in range(2):
        Image.new("RGB", (4, 4)).save(tmp_path / "train" / f"{i}.jpg")
    files, classes, labels = find_images(tmp_path / "train")
    assert len(files) == 2 and classes == [] and labels == [-1, -1]


def test_image_folder_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data.data_dir"):
        ImageFolderDataModule(tmp_path / "missing").setup("fit")
    with pytest.raises(FileNotFoundError, match="train/"):
        ImageFolderDataModule(tmp_path).setup("fit")
    (tmp_path / "train" / "empty").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found"):
        ImageFolderDataModule(tmp_path, use_cache=False).setup("fit")
    (tmp_path / "train" / "empty" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        ImageFolderDataModule(tmp_path, image_size=8, use_cache=False).setup("fit")


def test_every_image_mode_becomes_rgb(tmp_path: Path) -> None:
    folder = tmp_path / "modes" / "train"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    images = {
        "gray.png": rgb.convert("L"),
        "gray_alpha.png": rgb.convert("LA"),
        "rgba.png": rgb.convert("RGBA"),
        "palette.png": rgb.convert("P"),
        "bilevel.png": rgb.convert("1"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "gray.jpg": rgb.convert("L"),
    }
    for name, img in images.items():
        img.save(folder / name)
    wide = rng.integers(0, 65536, (8, 8), dtype=np.uint16)
    Image.fromarray(wide).save(folder / "sixteen_bit.png")  # mode I;16 (or I)
    dm = ImageFolderDataModule(tmp_path / "modes", use_cache=False)
    dm.setup("fit")
    assert dm.train_set is not None and dm.num_classes == 0
    decoded = dict(zip(sorted(p.name for p in folder.iterdir()), dm.train_set.images, strict=True))
    for name in images:
        with Image.open(folder / name) as img:
            expected = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(decoded[name], expected), name
    # 16-bit grayscale keeps its high byte instead of saturating at 255.
    high = torch.from_numpy((wide >> 8).astype(np.uint8))
    assert torch.equal(decoded["sixteen_bit.png"], high.expand(3, 8, 8))


def test_unlabeled_datamodule_has_no_classes_and_can_hold_out(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    for i in range(10):
        Image.new("RGB", (4, 4), (i * 20, 0, 0)).save(tmp_path / "train" / f"{i}.png")
    dm = ImageFolderDataModule(tmp_path, batch_size=2, use_cache=False, val_fraction=0.2)
    dm.setup("fit")
    assert dm.num_classes == 0 and dm.classes == []
    assert dm.train_set is not None and dm.val_set is not None
    assert len(dm.train_set) == 8 and len(dm.val_set) == 2
    assert (dm.train_set.labels == -1).all() and (dm.val_set.labels == -1).all()


def test_folder_without_test_split_holds_out_a_stratified_share(tmp_path: Path, caplog) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "train").symlink_to(SAMPLE / "train")
    dm = ImageFolderDataModule(tmp_path / "root", cache_dir=tmp_path, val_fraction=0.2)
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            dm.setup("fit")
    finally:
        logger.removeHandler(caplog.handler)
    assert "held out 24 of 120 training images" in caplog.text
    assert dm.train_set is not None and dm.val_set is not None
    per_class = torch.bincount(dm.val_set.labels, minlength=10)
    assert per_class.sum() == 24 and set(per_class.tolist()) <= {2, 3}  # 2.4 per class
    assert dm.val_set.rows is not None and dm.train_set.rows is not None
    assert not set(dm.val_set.rows.tolist()) & set(dm.train_set.rows.tolist())
    again = ImageFolderDataModule(tmp_path / "root", cache_dir=tmp_path, val_fraction=0.2)
    again.setup("fit")
    assert again.val_set is not None and torch.equal(again.val_set.rows, dm.val_set.rows)


def test_cache_run_prints_no_progress_bar(tmp_path: Path, capsys) -> None:
    ImageFolderDataModule(SAMPLE, cache_dir=tmp_path).setup("fit")
    assert "decoding" in capsys.readouterr().err  # the progress bar of the first run
    ImageFolderDataModule(SAMPLE, cache_dir=tmp_path).setup("fit")
    assert "decoding" not in capsys.readouterr().err


# --- memory budget: memory-mapped splits ------------------------------------------------------


def _mapped_files() -> set[str]:
    return {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()}


def test_folder_over_the_memory_budget_is_memory_mapped_from_the_cache(tmp_path: Path) -> None:
    reference = ImageFolderDataModule(SAMPLE, use_cache=False)
    reference.setup("fit")
    dm = ImageFolderDataModule(SAMPLE, cache_dir=tmp_path, memory_budget_gb=0.0)
    dm.setup("fit")
    assert dm.memory_mapped == {"train": True, "val": True}
    assert dm.train_set is not None and reference.train_set is not None
    assert torch.equal(dm.train_set.images, reference.train_set.images)
    caches = sorted(str(p) for p in tmp_path.glob("*.u8"))
    assert len(caches) == 2 and set(caches) <= _mapped_files()  # file-backed, not in RAM
    # A second run maps the cache without decoding; batches index it like any tensor.
    again = ImageFolderDataModule(SAMPLE, cache_dir=tmp_path, memory_budget_gb=0.0, batch_size=8)
    again.setup("fit")
    assert again.train_set is not None and torch.equal(
        again.train_set.images, reference.train_set.images
    )
    images, labels = next(iter(again.train_dataloader()))
    assert images.shape == (8, 3, 32, 32) and labels.shape == (8,)


def test_budget_counts_train_and_validation_together(tmp_path: Path) -> None:
    train_bytes = 120 * 3 * 32 * 32
    dm = ImageFolderDataModule(SAMPLE, cache_dir=tmp_path, memory_budget_gb=train_bytes / 1e9)
    dm.setup("fit")
    assert dm.memory_mapped == {"train": False, "val": True}


def test_memory_mapped_without_cache_leaves_no_file(tmp_path: Path) -> None:
    dm = ImageFolderDataModule(SAMPLE, cache_dir=tmp_path, use_cache=False, memory_budget_gb=0)
    dm.setup("fit")
    assert dm.memory_mapped["train"] and dm.train_set is not None
    assert list(tmp_path.iterdir()) == []  # the temporary file is unlinked while mapped
    assert dm.train_set.images.float().mean() > 10  # and still readable


# --- bad files --------------------------------------------------------------------------------


def _folder_with_a_corrupt_file(root: Path) -> Path:
    for label in ("a", "b"):
        (root / "train" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 100 if label == "b" else 0, 0)).save(
                root / "train" / label / f"{i}.png"
            )
    bad = root / "train" / "a" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return bad


def test_corrupt_file_error_names_the_file_and_the_flag(tmp_path: Path) -> None:
    bad = _folder_with_a_corrupt_file(tmp_path / "root")
    with pytest.raises(ValueError, match="data.skip_bad_files") as info:
        ImageFolderDataModule(tmp_path / "root", cache_dir=tmp_path / "cache").setup("fit")
    assert str(bad) in str(info.value)


def test_skip_bad_files_skips_logs_and_caches_the_list(tmp_path: Path, monkeypatch) -> None:
    bad = _folder_with_a_corrupt_file(tmp_path / "root")
    kwargs = {"cache_dir": tmp_path / "cache", "skip_bad_files": True}
    dm = ImageFolderDataModule(tmp_path / "root", **kwargs)
    with pytest.warns(UserWarning, match="skipped 1 image") as record:
        dm.setup("fit")
    assert str(bad) in str(record[0].message)
    assert dm.skipped_files == [bad]
    assert dm.train_set is not None and len(dm.train_set) == 5
    assert dm.train_set.labels.tolist() == [0, 0, 1, 1, 1]  # labels follow the kept files
    assert dm.train_set.images[:, 0, 0, 0].tolist() == [0, 80, 0, 40, 80]  # a/0, a/2, b/0..2
    assert dm.train_set.images[:, 1, 0, 0].tolist() == [0, 0, 100, 100, 100]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although a cache exists")

    monkeypatch.setattr("ssl_lightning.datamodules.folder.decode_images", no_decoding)
    again = ImageFolderDataModule(tmp_path / "root", **kwargs)
    with pytest.warns(UserWarning, match="skipped 1 image"):
        again.setup("fit")
    assert again.train_set is not None and torch.equal(again.train_set.images, dm.train_set.images)
    assert again.train_set.labels.tolist() == [0, 0, 1, 1, 1]
    # The cache remembers the bad file: without skip_bad_files it is an error again.
    with pytest.raises(ValueError, match="1.png"):
        ImageFolderDataModule(tmp_path / "root", cache_dir=tmp_path / "cache").setup("fit")


def test_skip_bad_files_with_a_corrupt_first_image_and_no_image_size(tmp_path: Path) -> None:
    bad = _folder_with_a_corrupt_file(tmp_path / "root")
    shutil.move(bad, bad.with_name("0.png"))  # replaces the very first file
    dm = ImageFolderDataModule(tmp_path / "root", use_cache=False, skip_bad_files=True)
    with pytest.warns(UserWarning, match="0.png"):
        dm.setup("fit")
    assert dm.train_set is not None and dm.train_set.images.shape == (4, 3, 8, 8)
    with pytest.raises(ValueError, match="0.png"):
        ImageFolderDataModule(tmp_path / "root", use_cache=False).setup("fit")


@pytest.mark.parametrize("budget", [-1.0])
def test_bad_memory_budget_names_the_argument(budget) -> None:
    with pytest.raises(ValueError, match="memory_budget_gb"):
        ImageFolderDataModule(SAMPLE, memory_budget_gb=budget)
