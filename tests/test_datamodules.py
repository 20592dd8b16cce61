import functools
import pickle
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets

from datamodules import (
    Batch,
    CIFAR10DataModule,
    CleanView,
    ImageFolderDataModule,
    InMemoryDataset,
    SimCLRViews,
)
from datamodules.base import InMemoryDataModule
from datamodules.folder import find_images

SAMPLE = Path(__file__).parent / "data" / "cifar10-sample"


class TensorDataModule(InMemoryDataModule):
    """A datamodule over random tensors, for testing the base."""

    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def __init__(self, n: int = 32, **kwargs) -> None:
        super().__init__(**kwargs)
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
        self.labels = torch.arange(n) % 4

    def load_split(self, split):
        return (
            (self.images, self.labels) if split == "train" else (self.images[:8], self.labels[:8])
        )


class FakeTrainer:
    def __init__(self, training: bool, rank: int = 0, model=None) -> None:
        self.training = training
        self.global_rank = rank
        self.lightning_module = model


def test_dataset_serves_whole_batches_by_indexing() -> None:
    images = torch.arange(5 * 3 * 2 * 2, dtype=torch.uint8).view(5, 3, 2, 2)
    ds = InMemoryDataset(images, torch.tensor([0, 1, 2, 3, 4]))
    x, y = ds.__getitems__([4, 0, 2])
    assert torch.equal(x, images[[4, 0, 2]]) and y.tolist() == [4, 0, 2]
    with pytest.raises(ValueError, match="uint8"):
        InMemoryDataset(images.float(), torch.zeros(5))


def test_train_loader_yields_uint8_batches_covering_the_epoch() -> None:
    dm = TensorDataModule(n=32, batch_size=8)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 4
    x, y = batches[0]
    assert x.dtype == torch.uint8 and x.shape == (8, 3, 8, 8) and y.shape == (8,)
    seen = torch.cat([b[1] for b in batches])
    assert sorted(torch.cat([b[0] for b in batches]).view(32, -1)[:, 0].tolist()) == sorted(
        dm.images.view(32, -1)[:, 0].tolist()
    )
    assert seen.numel() == 32


def test_validation_batches_are_only_normalized() -> None:
    dm = TensorDataModule(batch_size=4)
    dm.trainer = FakeTrainer(training=False)
    images = dm.images[:4]
    out = dm.on_after_batch_transfer((images, dm.labels[:4]), 0)
    assert isinstance(out, Batch) and len(out.views) == 1
    torch.testing.assert_close(out.views[0], (images.float() / 255 - 0.5) / 0.25)


def test_training_uses_the_models_default_corruption() -> None:
    class Model:
        def default_corruption(self):
            return SimCLRViews(num_views=3)

    dm = TensorDataModule(batch_size=4, seed=1)
    dm.trainer = FakeTrainer(training=True, model=Model())
    out = dm.on_after_batch_transfer((dm.images[:4], dm.labels[:4]), 0)
    assert len(out.views) == 3 and out.views[0].shape == (4, 3, 8, 8)
    assert isinstance(dm.train_corruption(), SimCLRViews)

    dm_config = TensorDataModule(batch_size=4, corruption=CleanView())
    dm_config.trainer = FakeTrainer(training=True, model=Model())
    assert len(dm_config.on_after_batch_transfer((dm.images[:4], dm.labels[:4]), 0).views) == 1


def _views(seed: int, rank: int, batches: int = 2, state=None) -> list[torch.Tensor]:
    dm = TensorDataModule(batch_size=8, corruption=SimCLRViews(), seed=seed)
    if state is not None:
        dm.load_state_dict(state)
    dm.trainer = FakeTrainer(training=True, rank=rank)
    return [
        dm.on_after_batch_transfer((dm.images[:8], dm.labels[:8]), 0).views[0]
        for _ in range(batches)
    ]


def test_augmentation_is_seeded_per_rank_and_per_batch() -> None:
    a, b = _views(seed=3, rank=0), _views(seed=3, rank=0)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)  # same seed, same views
    assert not torch.allclose(a[0], a[1])  # the stream moves on between batches
    assert not torch.allclose(a[0], _views(seed=3, rank=1)[0])  # ranks differ
    assert not torch.allclose(a[0], _views(seed=4, rank=0)[0])  # seeds differ


def test_state_dict_resumes_the_random_stream() -> None:
    dm = TensorDataModule(batch_size=8, corruption=SimCLRViews(), seed=7)
    dm.trainer = FakeTrainer(training=True)
    batch = (dm.images[:8], dm.labels[:8])
    dm.on_after_batch_transfer(batch, 0)
    state = dm.state_dict()
    expected = dm.on_after_batch_transfer(batch, 0).views[0]

    resumed = TensorDataModule(batch_size=8, corruption=SimCLRViews(), seed=123)
    resumed.load_state_dict(state)  # the checkpoint's seed wins over the constructor's
    resumed.trainer = FakeTrainer(training=True)
    torch.testing.assert_close(resumed.on_after_batch_transfer(batch, 0).views[0], expected)


def test_batch_larger_than_dataset_is_a_clear_error() -> None:
    dm = TensorDataModule(n=4, batch_size=8)
    dm.setup("fit")
    with pytest.raises(ValueError, match="data.batch_size"):
        dm.train_dataloader()
    with pytest.raises(ValueError, match="batch_size"):
        TensorDataModule(batch_size=0)


# --- image folders -------------------------------------------------------------------------


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
    assert len(list(tmp_path.glob("*.pt"))) == 2

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although a cache exists")

    monkeypatch.setattr("datamodules.folder.decode_images", no_decoding)
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


# --- CIFAR ---------------------------------------------------------------------------------


def _make_cifar_archive(folder: Path, n_train: int = 10, n_test: int = 5) -> dict[str, object]:
    """A tiny archive in the official layout, and the md5 sums torchvision checks for it."""
    from torchvision.datasets.utils import calculate_md5

    rng = np.random.default_rng(0)
    src = folder / "src" / "cifar-10-batches-py"
    src.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)]
    for name in [*names, "test_batch"]:
        n = n_test if name == "test_batch" else n_train
        entry = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, n).tolist(),
        }
        (src / name).write_bytes(pickle.dumps(entry))
    (src / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    archive = folder / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    return {
        "tgz_md5": calculate_md5(str(archive)),
        "train_list": [[n, calculate_md5(str(src / n))] for n in names],
        "test_list": [["test_batch", calculate_md5(str(src / "test_batch"))]],
        "meta": {
            "filename": "batches.meta",
            "key": "label_names",
            "md5": calculate_md5(str(src / "batches.meta")),
        },
    }


@pytest.fixture
def fake_cifar(tmp_path: Path, monkeypatch) -> Iterator[Path]:
    """A tiny CIFAR-10 archive served over HTTP on the loopback interface."""
    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    for name, value in _make_cifar_archive(archive_dir).items():
        monkeypatch.setattr(datasets.CIFAR10, name, value)
    handler = functools.partial(QuietHandler, directory=str(archive_dir))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cifar-10-python.tar.gz"
    monkeypatch.setattr(datasets.CIFAR10, "url", url)
    yield tmp_path
    server.shutdown()
    thread.join(timeout=5)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_cifar10_downloads_verifies_and_loads(fake_cifar: Path) -> None:
    dm = CIFAR10DataModule(data_dir=fake_cifar / "data", batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.train_set is not None and dm.val_set is not None
    assert dm.train_set.images.shape == (50, 3, 32, 32) and dm.train_set.images.dtype == torch.uint8
    assert dm.val_set.images.shape == (5, 3, 32, 32)
    assert dm.num_classes == 10
    # Same pixels as torchvision's own dataset, in CHW.
    ref = datasets.CIFAR10(str(fake_cifar / "data"), train=True)
    assert torch.equal(dm.train_set.images[3], torch.from_numpy(ref.data[3]).permute(2, 0, 1))
    assert dm.train_set.labels[3].item() == ref.targets[3]


def test_cifar10_uses_a_placed_archive_without_network(fake_cifar: Path, monkeypatch) -> None:
    data = fake_cifar / "data"
    data.mkdir()
    (fake_cifar / "archive" / "cifar-10-python.tar.gz").rename(data / "cifar-10-python.tar.gz")
    monkeypatch.setattr(datasets.CIFAR10, "url", "http://127.0.0.1:9/unreachable.tar.gz")
    dm = CIFAR10DataModule(data_dir=data)
    dm.prepare_data()  # the verified archive is extracted, nothing fetched
    dm.setup("fit")
    assert dm.train_set is not None and len(dm.train_set) == 50


def test_cifar10_failed_download_says_where_to_put_the_archive(
    fake_cifar: Path, monkeypatch
) -> None:
    monkeypatch.setattr(datasets.CIFAR10, "url", "http://127.0.0.1:9/unreachable.tar.gz")
    dm = CIFAR10DataModule(data_dir=fake_cifar / "data")
    with pytest.raises(RuntimeError, match=r"place cifar-10-python.tar.gz .* in"):
        dm.prepare_data()


def test_cifar10_missing_without_download_names_the_flag(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(data_dir=tmp_path, download=False)
    with pytest.raises(FileNotFoundError, match="data.download=true"):
        dm.prepare_data()
