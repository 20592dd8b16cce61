"""ImageFolderDataModule on JPEG shards against the uint8 path: the same epoch order, rank
split and mid-epoch resume; decoding on the device; undecodable JPEGs; the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import DistributedSampler

from ssl_lightning.cli import main
from ssl_lightning.datamodules import ImageFolderDataModule
from ssl_lightning.datamodules.jpeg_decode import BadImageError
from ssl_lightning.datamodules.resume import ResumableDataLoader
from ssl_lightning.datamodules.shard_dataset import EncodedJpegs
from ssl_lightning.datamodules.shard_writer import prepare_shards
from ssl_lightning.datamodules.shards import JpegShards, read_index, shard_bytes
from tests.helpers import SAMPLE, sample_fit_args

BATCH = 16  # 120 training images: 7 batches per epoch


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real CIFAR-10 sample as shards: 32 px JPEGs need no resizing, so they keep their
    bytes, and the uint8 path decodes the very same files."""
    out = tmp_path_factory.mktemp("shards")
    prepare_shards(SAMPLE, out, size=256, images_per_shard=50, progress=False)
    return out


def _modules(shards: Path, tmp_path: Path, **kwargs) -> tuple[ImageFolderDataModule, ...]:
    uint8 = ImageFolderDataModule(SAMPLE, cache_dir=tmp_path, batch_size=BATCH, seed=3, **kwargs)
    jpeg = ImageFolderDataModule(shards, batch_size=BATCH, seed=3, **kwargs)
    for dm in (uint8, jpeg):
        dm.setup("fit")
    assert jpeg.resolved_storage() == "jpeg" and uint8.resolved_storage() == "uint8"
    return uint8, jpeg


def _count_reads(monkeypatch) -> list[int]:
    rows: list[int] = []
    read = JpegShards.read

    def counting(self, row):
        rows.append(row)
        return read(self, row)

    monkeypatch.setattr(JpegShards, "read", counting)
    return rows


def test_epochs_give_the_same_batches_as_the_uint8_path(shards: Path, tmp_path: Path) -> None:
    uint8, jpeg = _modules(shards, tmp_path, val_fraction=0.2)
    assert jpeg.classes == uint8.classes and jpeg.num_classes == 10
    for a, b in ((uint8.train_set, jpeg.train_set), (uint8.val_set, jpeg.val_set)):
        assert a is not None and b is not None and torch.equal(a.rows, b.rows)  # type: ignore[arg-type]
    loaders = uint8.train_dataloader(), jpeg.train_dataloader()
    for _ in range(2):  # two epochs, each in its own order
        for (x, y), (x2, y2) in zip(*loaders, strict=True):
            assert torch.equal(y, y2) and torch.equal(x, x2)  # the same files, the same pixels


def test_ranks_read_their_own_images_as_the_uint8_path_splits_them(
    shards: Path, tmp_path: Path, monkeypatch
) -> None:
    """Lightning's DDP injection (a DistributedSampler in a copy of our loader) splits the
    JPEG path's epoch as the uint8 path's, and each rank reads only its own images."""
    uint8, jpeg = _modules(shards, tmp_path)
    reads = _count_reads(monkeypatch)
    seen: dict[int, set[int]] = {}
    for rank in range(2):
        loaders = []
        for dm in (uint8, jpeg):
            loader = dm.train_dataloader()
            sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, seed=3)  # type: ignore[arg-type]
            sampler.set_epoch(1)
            loaders.append(_update_dataloader(loader, sampler))
        assert isinstance(loaders[1], ResumableDataLoader)
        reads.clear()
        for (x, y), (x2, y2) in zip(*loaders, strict=True):
            assert torch.equal(y, y2) and torch.equal(x, x2)
        share = list(loaders[1].sampler)  # type: ignore[arg-type]
        assert reads == share[: len(reads)] and len(reads) == 48  # 60 each, whole batches read
        seen[rank] = set(share)
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 120


def test_a_resumed_epoch_continues_on_the_same_images_without_reading_the_skipped(
    shards: Path, monkeypatch
) -> None:
    straight = ImageFolderDataModule(shards, batch_size=BATCH, seed=3)
    straight.setup("fit")
    loader = straight.train_dataloader()
    loader.sampler.set_epoch(1)  # type: ignore[attr-defined]
    batches = [y for _, y in loader]
    for _ in range(3):
        straight._position.count(1)  # what on_after_batch_transfer records in training
    state = straight.state_dict()

    reads = _count_reads(monkeypatch)
    resumed = ImageFolderDataModule(shards, batch_size=BATCH, seed=3)
    resumed.setup("fit")
    resumed.load_state_dict(state)
    loader = resumed.train_dataloader()
    loader.sampler.set_epoch(1)  # type: ignore[attr-defined]
    rest = [y for _, y in loader]
    assert len(rest) == len(batches) - 3
    assert all(torch.equal(a, b) for a, b in zip(rest, batches[3:], strict=True))
    assert len(reads) == len(rest) * BATCH  # the 3 skipped batches were never read


def test_device_decoding_gives_the_loader_decodings_batches(shards: Path) -> None:
    """decode="device": the loader yields JPEG bytes and the transfer hook decodes them with
    the same code a GPU runs (here with the CPU decoder)."""
    on_device = ImageFolderDataModule(shards, batch_size=BATCH, seed=3, decode="device")
    in_loader = ImageFolderDataModule(shards, batch_size=BATCH, seed=3, decode="loader")
    for dm in (on_device, in_loader):
        dm.setup("fit")
    for batch, (x, y) in zip(
        on_device.train_dataloader(), in_loader.train_dataloader(), strict=True
    ):
        assert isinstance(batch[0], EncodedJpegs) and len(batch[0].data) == BATCH
        x2, y2 = on_device.transfer_batch_to_device(batch, torch.device("cpu"), 0)
        assert torch.equal(x2, x) and torch.equal(y2, y)


def _with_truncated_jpeg(shards: Path, out: Path) -> str:
    """A copy of ``shards`` whose shard 0 image 4 is cut to half: its checksum matches (as
    for a file that was already bad in the source), its decode fails. Returns its name."""
    import shutil

    shutil.copytree(shards, out)
    path = out / "train" / "shard-00000.jpgs"
    index = read_index(path)
    data = path.read_bytes()
    offsets = index["offsets"]
    jpegs = [data[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
    jpegs[4] = jpegs[4][: len(jpegs[4]) // 2]
    keep = {k: index[k] for k in ("files", "labels", "skipped", "sides", "source")}
    path.write_bytes(shard_bytes(jpegs, keep))
    manifest = (out / "manifest.json").read_text()
    old = f'"bytes": {len(data)}'
    assert manifest.count(old) == 1
    (out / "manifest.json").write_text(manifest.replace(old, f'"bytes": {path.stat().st_size}'))
    return index["files"][4]


@pytest.mark.parametrize("decode", ["loader", "device"])
def test_an_undecodable_jpeg_is_named_and_skipped_only_when_asked(
    shards: Path, tmp_path: Path, decode: str
) -> None:
    name = _with_truncated_jpeg(shards, tmp_path / "bad")
    where = rf"shard \S*/train/shard-00000.jpgs, image 4 \({name}\)"
    for skip in (False, True):
        dm = ImageFolderDataModule(
            tmp_path / "bad",
            batch_size=120,
            decode=decode,
            skip_bad_files=skip,  # type: ignore[arg-type]
        )
        dm.setup("fit")

        def first_batch(dm=dm):  # in the loader, or on the device after the transfer
            return dm.transfer_batch_to_device(next(iter(dm.train_dataloader())), "cpu", 0)

        if not skip:
            with pytest.raises(BadImageError, match=f"cannot decode {where}.*data.skip_bad_files"):
                first_batch()
            continue
        with pytest.warns(UserWarning, match=f"skipped cannot decode {where}"):
            x, y = first_batch()
        assert x.shape == (119, 3, 32, 32) and y.shape == (119,)


def test_prepare_then_fit_from_the_command_line(tmp_path: Path) -> None:
    main(["prepare", str(SAMPLE), str(tmp_path / "shards"), "--size", "32"])
    args = sample_fit_args(tmp_path, "SimCLR", "--model.backbone=convnet")
    args = [a.replace(str(SAMPLE), str(tmp_path / "shards")) for a in args]
    tiny = "--data.corruption=SimCLRViews", "--data.corruption.view.size=16"
    main([*args, "--model.backbone_kwargs={width: 8}", "--data.decode=device", *tiny])
    assert next(tmp_path.rglob("epoch=*.ckpt")).name.endswith("step=2.ckpt")
    config = next(tmp_path.rglob("config.yaml")).read_text()
    assert "decode: device" in config
