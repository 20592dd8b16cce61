import functools
import logging
import pickle
import tarfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import datasets

from ssl_lightning.datamodules import (
    Batch,
    CIFAR10DataModule,
    CIFAR100DataModule,
    CleanView,
    InMemoryDataset,
    SimCLRViews,
)
from ssl_lightning.datamodules.base import InMemoryDataModule
from ssl_lightning.datamodules.resume import EpochShuffleSampler, ResumableDataLoader
from ssl_lightning.splits import stratified_holdout


class TensorDataModule(InMemoryDataModule):
    """A datamodule over random tensors, for testing the base."""

    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def __init__(self, n: int = 32, labels: torch.Tensor | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
        self.labels = torch.arange(n) % 4 if labels is None else labels
        self.loaded: list[str] = []

    def load_split(self, split):
        self.loaded.append(split)
        return (
            (self.images, self.labels) if split == "train" else (self.images[:8], self.labels[:8])
        )


class FakeTrainer:
    def __init__(self, training: bool, rank: int = 0, model=None) -> None:
        self.training = training
        self.global_rank = rank
        self.lightning_module = model
        self.loggers: list = []


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
        """A PretextModel written out: the four members the datamodule and callbacks read."""

        export_module = "backbone"

        def default_corruption(self):
            return SimCLRViews(num_views=3)

        def check_corruption(self, corruption) -> None:
            pass

        def preview(self, batch):
            return batch.image_rows()

    class Partial:
        """Not a PretextModel (no check_corruption, export_module, preview): plain behaviour."""

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

    dm_plain = TensorDataModule(batch_size=4, seed=1)
    dm_plain.trainer = FakeTrainer(training=True, model=Partial())
    assert isinstance(dm_plain.train_corruption(), CleanView)


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


def _train_rows(loader) -> list[int]:
    """The labels a loader yields in one epoch, in order (labels = row numbers here)."""
    return [int(y) for _, labels in loader for y in labels]


def test_shuffle_depends_on_seed_and_epoch_only() -> None:
    dataset = list(range(50))
    a, b = EpochShuffleSampler(dataset, seed=3), EpochShuffleSampler(dataset, seed=3)
    first = list(a)
    torch.manual_seed(123)  # the global random state does not matter
    assert list(b) == first and sorted(first) == dataset
    assert list(a) != first  # each iteration moves on to the next epoch's order
    b.set_epoch(0)
    assert list(b) == first  # Lightning's set_epoch selects an epoch's order
    assert list(EpochShuffleSampler(dataset, seed=4)) != first


def test_ddp_shards_are_disjoint_and_cover_every_image_each_epoch() -> None:
    """The loader as Lightning rebuilds it under DDP: its DistributedSampler, one per rank."""
    n, world, batch = 64, 2, 8
    dm = TensorDataModule(n=n, labels=torch.arange(n), batch_size=batch, seed=0)
    dm.setup("fit")
    with _replace_dunder_methods(DataLoader, "dataset"):  # how Lightning records the args
        loader = dm.train_dataloader()
    orders = []
    for epoch in range(2):
        shards = []
        for rank in range(world):
            sampler = DistributedSampler(
                loader.dataset, num_replicas=world, rank=rank, shuffle=True, seed=0
            )
            rank_loader = _update_dataloader(loader, sampler, mode=RunningStage.TRAINING)
            assert isinstance(rank_loader, ResumableDataLoader)
            assert rank_loader.position is loader.position and rank_loader.drop_last
            sampler.set_epoch(epoch)
            rows = _train_rows(rank_loader)
            assert len(rows) == n // world
            shards.append(rows)
        assert not set(shards[0]) & set(shards[1])
        assert sorted(shards[0] + shards[1]) == list(range(n))  # each image exactly once
        orders.append(shards[0])
    assert orders[0] != orders[1]  # a new shuffle every epoch


def test_resumable_loader_skips_the_consumed_batches_of_the_saved_epoch_once() -> None:
    dm = TensorDataModule(n=64, labels=torch.arange(64), batch_size=8, seed=0)
    dm.setup("fit")
    epoch1 = TensorDataModule(n=64, labels=torch.arange(64), batch_size=8, seed=0)
    epoch1.setup("fit")
    loader = epoch1.train_dataloader()
    loader.sampler.set_epoch(1)
    full = _train_rows(loader)

    dm.load_state_dict({"seed": 0, "batches_drawn": 11, "position": {"epoch": 1, "batches": 3}})
    resumed = dm.train_dataloader()
    dropped = iter(resumed)  # an iterator dropped before its first batch leaves it pending
    del dropped
    resumed.sampler.set_epoch(1)
    assert _train_rows(resumed) == full[3 * 8 :]
    resumed.sampler.set_epoch(1)
    assert _train_rows(resumed) == full  # only once
    # A position saved in another epoch (e.g. at an epoch's end) skips nothing.
    resumed.load_state_dict({"epoch": 0, "batches": 3})
    resumed.sampler.set_epoch(1)
    assert _train_rows(resumed) == full


# --- hold-out validation split ----------------------------------------------------------------


def test_stratified_holdout_is_stratified_seeded_and_disjoint() -> None:
    counts = [50, 30, 13, 7, 1]
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    keep, held = stratified_holdout(labels, 0.2, seed=0)
    assert held.numel() == round(0.2 * len(labels))
    assert sorted(torch.cat([keep, held]).tolist()) == list(range(len(labels)))  # a partition
    per_class = torch.bincount(labels[held], minlength=len(counts))
    for k, c in enumerate(counts):
        assert abs(per_class[k].item() - 0.2 * c) < 1  # within one image of its exact share
    again_keep, again_held = stratified_holdout(labels, 0.2, seed=0)
    assert torch.equal(again_held, held) and torch.equal(again_keep, keep)
    assert not torch.equal(stratified_holdout(labels, 0.2, seed=1)[1], held)


def test_val_fraction_holds_out_training_images_and_logs_it(caplog) -> None:
    labels = torch.arange(40) % 4
    dm = TensorDataModule(n=40, labels=labels, batch_size=4, val_fraction=0.25, split_seed=5)
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            dm.setup("fit")
    finally:
        logger.removeHandler(caplog.handler)
    assert "held out 10 of 40 training images (25.0%, stratified over 4 classes" in caplog.text
    assert "split_seed=5" in caplog.text
    assert dm.loaded == ["train"]  # the dataset's own split is not used
    assert dm.train_set is not None and dm.val_set is not None
    assert len(dm.train_set) == 30 and len(dm.val_set) == 10
    # 2.5 per class: two classes give 3, two give 2.
    assert sorted(torch.bincount(dm.val_set.labels).tolist()) == [2, 2, 3, 3]
    # The validation loader serves exactly the held-out images, the training loader the rest.
    held = dm.val_set.rows
    assert held is not None
    val_images = torch.cat([x for x, _ in dm.val_dataloader()])
    assert torch.equal(val_images, dm.images[held])
    train_images = torch.cat([x for x, _ in dm.train_dataloader()])
    train_rows = {tuple(img.flatten()[:16].tolist()) for img in train_images}
    held_rows = {tuple(img.flatten()[:16].tolist()) for img in val_images}
    assert not train_rows & held_rows and len(train_rows) == 28  # 7 batches of 4
    # Subsets share the image tensor: no copy was made.
    assert dm.train_set.source_images is dm.val_set.source_images


def test_without_val_fraction_the_datasets_own_split_validates() -> None:
    dm = TensorDataModule(batch_size=4)
    dm.setup("fit")
    assert dm.loaded == ["train", "val"] and dm.val_set is not None and len(dm.val_set) == 8


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_val_fraction_out_of_range_names_the_flag(fraction) -> None:
    with pytest.raises(ValueError, match="data.val_fraction"):
        TensorDataModule(val_fraction=fraction)


def test_val_fraction_too_small_to_hold_out_anything_is_an_error() -> None:
    with pytest.raises(ValueError, match="holds out 0"):
        TensorDataModule(n=8, val_fraction=0.01).setup("fit")


# --- CIFAR ---------------------------------------------------------------------------------


def _make_cifar_archive(
    folder: Path, cls: type[datasets.CIFAR10], n_train: int = 10, n_test: int = 5
) -> dict[str, object]:
    """A tiny archive in the official layout, and the md5 sums torchvision checks for it."""
    from torchvision.datasets.utils import calculate_md5

    rng = np.random.default_rng(0)
    src = folder / "src" / cls.base_folder
    src.mkdir(parents=True)
    cifar100 = issubclass(cls, datasets.CIFAR100)
    names = ["train"] if cifar100 else [f"data_batch_{i}" for i in range(1, 6)]
    test_name = "test" if cifar100 else "test_batch"
    label_key, classes = ("fine_labels", 100) if cifar100 else ("labels", 10)
    for name in [*names, test_name]:
        n = n_test if name == test_name else n_train
        entry = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: rng.integers(0, classes, n).tolist(),
        }
        (src / name).write_bytes(pickle.dumps(entry))
    meta_name, meta_key = cls.meta["filename"], cls.meta["key"]
    (src / meta_name).write_bytes(pickle.dumps({meta_key: [str(i) for i in range(classes)]}))
    archive = folder / cls.filename
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=cls.base_folder)
    return {
        "tgz_md5": calculate_md5(str(archive)),
        "train_list": [[n, calculate_md5(str(src / n))] for n in names],
        "test_list": [[test_name, calculate_md5(str(src / test_name))]],
        "meta": {
            "filename": meta_name,
            "key": meta_key,
            "md5": calculate_md5(str(src / meta_name)),
        },
    }


def _serve_fake(tmp_path: Path, monkeypatch, cls: type[datasets.CIFAR10]) -> Iterator[Path]:
    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    for name, value in _make_cifar_archive(archive_dir, cls).items():
        monkeypatch.setattr(cls, name, value)
    handler = functools.partial(QuietHandler, directory=str(archive_dir))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{cls.filename}"
    monkeypatch.setattr(cls, "url", url)
    yield tmp_path
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture
def fake_cifar(tmp_path: Path, monkeypatch) -> Iterator[Path]:
    """A tiny CIFAR-10 archive served over HTTP on the loopback interface."""
    yield from _serve_fake(tmp_path, monkeypatch, datasets.CIFAR10)


@pytest.fixture
def fake_cifar100(tmp_path: Path, monkeypatch) -> Iterator[Path]:
    """A tiny CIFAR-100 archive (one train and one test file, fine labels) over HTTP."""
    yield from _serve_fake(tmp_path, monkeypatch, datasets.CIFAR100)


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


def test_cifar100_downloads_verifies_and_loads_fine_labels(fake_cifar100: Path) -> None:
    dm = CIFAR100DataModule(data_dir=fake_cifar100 / "data", batch_size=4, val_fraction=0.0)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_classes == 100 and dm.mean != CIFAR10DataModule.mean
    assert dm.train_set is not None and dm.val_set is not None
    assert dm.train_set.images.shape == (10, 3, 32, 32) and len(dm.val_set) == 5
    ref = datasets.CIFAR100(str(fake_cifar100 / "data"), train=True)
    for i in (0, 7):
        assert torch.equal(dm.train_set.images[i], torch.from_numpy(ref.data[i]).permute(2, 0, 1))
    assert dm.train_set.labels.tolist() == ref.targets
    ref_test = datasets.CIFAR100(str(fake_cifar100 / "data"), train=False)
    # Validation rows come class-interleaved (tests/test_validation_subsets.py): same images.
    assert dm.val_set.rows is not None
    assert dm.val_set.labels.tolist() == [ref_test.targets[i] for i in dm.val_set.rows]


def test_cifar_corrupted_batch_file_is_reported(fake_cifar: Path) -> None:
    dm = CIFAR10DataModule(data_dir=fake_cifar / "data", download=True)
    dm.prepare_data()
    (fake_cifar / "data" / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(FileNotFoundError, match="not found \\(or corrupted\\)"):
        CIFAR10DataModule(data_dir=fake_cifar / "data", download=False).setup("fit")
