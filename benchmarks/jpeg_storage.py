"""JPEG shard storage against the uint8 cache and torchvision's PIL ImageFolder.

Measures, side by side in this one process:

- **size**: the shards that ``ssl-lightning prepare --size S --quality Q`` writes, against
  the uint8 cache of the same images at ``S x S`` (``N * 3 * S * S`` bytes);
- **throughput**: images/s per core of decode + two SimCLR views at ``--view`` pixels:
  ours from the shards (``decode_jpeg`` on a batch, center squares, our batched views), the
  same with the batch made float before the views ("float batches": the datamodule before
  the view recipes took uint8 batches and their views were normalized in place), ours from
  the same images already decoded into memory (views only), and torchvision's ``ImageFolder`` with
  per-image PIL transforms (``RandomResizedCrop``, flip, jitter, grayscale, ``ToTensor``,
  two views) in DataLoader workers on the same stored JPEGs, divided by the workers; every
  pipeline runs once per round for ``--repeats`` rounds, and the medians are reported;
- **time to first step**: from constructing the datamodule on a prepared shard folder to
  the first batch of SimCLR views (``setup``, the loader, one decoded batch, its views).

The test folder is made from real images at a size like ImageNet's: ``--source cifar``
upscales CIFAR-10 training images (32 px, bicubic) to ``--source-side`` pixels, which makes
them smoother than photographs (so they compress better); ``--source photos`` takes random
crops of the two photographs that ship with scikit-learn (``china.jpg``, ``flower.jpg``,
640x427), which have a photograph's texture but little variety. Both are saved as JPEG at
quality 95, then prepared.

``--device cuda`` decodes the shard batches with nvJPEG on the GPU and runs the views there
(the uint8 path moves its batches to the GPU first); the PIL baseline stays on the CPU.

Usage (from the repository root)::

    python benchmarks/jpeg_storage.py --images 2000 --source cifar
    python benchmarks/jpeg_storage.py --images 2000 --source photos --device cuda
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ssl_lightning.corruptions import ViewTransform  # noqa: E402
from ssl_lightning.datamodules import ImageFolderDataModule, SimCLRViews  # noqa: E402
from ssl_lightning.datamodules.decode import list_images  # noqa: E402
from ssl_lightning.datamodules.shard_writer import prepare_shards  # noqa: E402
from ssl_lightning.datamodules.shards import read_manifest  # noqa: E402


def make_source(out: Path, count: int, kind: str, side: int, cifar: Path, seed: int = 0) -> Path:
    """``count`` JPEGs (quality 95) in ``out/train/<class>/``, about ``side`` pixels a side."""
    rng = random.Random(seed)
    if kind == "cifar":
        files, classes, labels = list_images(cifar / "train")
        picks = rng.sample(range(len(files)), count)
        sources = [(files[i], classes[labels[i]]) for i in picks]
    else:
        import sklearn.datasets

        folder = Path(sklearn.datasets.__file__).parent / "images"
        photos = [Image.open(folder / name).convert("RGB") for name in ("china.jpg", "flower.jpg")]
    for i in range(count):
        if kind == "cifar":
            path, name = sources[i]
            img = Image.open(path).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
        else:
            name = f"photo{i % 2}"
            photo = photos[i % 2]
            w, h = (
                rng.randint(side * 3 // 4, photo.height),
                rng.randint(side * 3 // 4, photo.height),
            )
            left, top = rng.randint(0, photo.width - w), rng.randint(0, photo.height - h)
            img = photo.crop((left, top, left + w, top + h))
            scale = side / min(w, h)
            img = img.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)
        (out / "train" / name).mkdir(parents=True, exist_ok=True)
        img.save(out / "train" / name / f"{i:06d}.jpg", quality=95)
    return out


def _trainer_stub() -> Any:
    # What Lightning offers the datamodule in a training step, for on_after_batch_transfer.
    return SimpleNamespace(
        training=True, global_rank=0, current_epoch=0, lightning_module=None, loggers=[],
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )  # fmt: skip


def _rate(step: Any, loader: Any, batches: int, device: torch.device) -> float:
    """Images/s of ``step(batch)`` over ``batches`` batches after one warm-up batch."""
    iterator = iter(loader)
    step(next(iterator))
    images, start = 0, time.perf_counter()
    for _ in range(batches):
        images += step(next(iterator))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


class FloatBatchViews(SimCLRViews):
    """``SimCLRViews`` as the datamodule fed it before uint8 crops: the whole batch made float
    first, and every view normalized into a new tensor (the "float batches" row)."""

    accepts_uint8 = returns_new_tensors = False


def _views_datamodule(
    shards: Path, view: int, batch: int, device: torch.device, views: type
) -> tuple[ImageFolderDataModule, Any]:
    """The datamodule on ``shards`` with ``views`` of ``view`` px, and its training step."""
    corruption = views(view=ViewTransform(size=view))
    dm = ImageFolderDataModule(shards, batch_size=batch, corruption=corruption, seed=0)
    dm.decode = "device" if device.type == "cuda" else "loader"
    dm.setup("fit")
    dm.trainer = _trainer_stub()

    def step(b: Any) -> int:
        x, y = dm.transfer_batch_to_device(b, device, 0)
        return len(dm.on_after_batch_transfer((x, y), 0).labels)

    return dm, step


def jpeg_rate(
    shards: Path, view: int, batch: int, batches: int, device: torch.device, views: type
) -> float:
    """Decode + ``views`` from the shards, images/s."""
    dm, step = _views_datamodule(shards, view, batch, device, views)
    return _rate(step, dm.train_dataloader(), batches, device)


def ours_rates(shards: Path, view: int, batch: int, batches: int, device: torch.device) -> dict:
    """Decode + views from the shards, decode alone, and views alone from the same images
    decoded into memory (channels-last on the CPU, as decoded)."""
    dm, step = _views_datamodule(shards, view, batch, device, SimCLRViews)
    jpeg = _rate(step, dm.train_dataloader(), batches, device)
    decode = _rate(lambda b: len(dm.transfer_batch_to_device(b, device, 0)[1]),
                   dm.train_dataloader(), batches, device)  # fmt: skip
    assert dm.train_set is not None
    held = dm.train_set.images  # every image decoded once, held in memory
    loader = [(held[i : i + batch], torch.zeros(batch, dtype=torch.long))
              for i in range(0, len(held) - batch + 1, batch)] * (batches + 1)  # fmt: skip
    uint8 = _rate(step, loader, batches, device)
    return {"jpeg": jpeg, "uint8": uint8, "decode": decode}


def pil_rate(folder: Path, view: int | None, batch: int, batches: int, workers: int) -> float:
    """torchvision ImageFolder + PIL SimCLR views (two per image) in ``workers`` workers;
    ``view=None``: decode only (``PILToTensor`` of the center square)."""
    import torchvision.transforms as T
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    one = T.Compose([
        T.RandomResizedCrop(view or 1, scale=(0.08, 1.0)), T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
        T.ToTensor(),
    ])  # fmt: skip
    decode = T.Compose([T.CenterCrop(min(Image.open(next(folder.rglob("*.jpg"))).size)),
                        T.PILToTensor()])  # fmt: skip
    views = (lambda im: (one(im), one(im))) if view is not None else decode
    dataset = ImageFolder(str(folder), transform=views)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers)
    return _rate(lambda b: len(b[1]), loader, batches, torch.device("cpu"))


def first_step(shards: Path, view: int, batch: int, device: torch.device) -> float:
    """Seconds from constructing the datamodule on ``shards`` to its first batch of views."""
    start = time.perf_counter()
    corruption = SimCLRViews(view=ViewTransform(size=view))
    dm = ImageFolderDataModule(shards, batch_size=batch, corruption=corruption, seed=0)
    dm.decode = "device" if device.type == "cuda" else "loader"
    dm.setup("fit")
    dm.trainer = _trainer_stub()
    x, y = dm.transfer_batch_to_device(next(iter(dm.train_dataloader())), device, 0)
    dm.on_after_batch_transfer((x, y), 0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images in the test folder")
    parser.add_argument("--source", choices=["cifar", "photos"], default="cifar")
    parser.add_argument("--source-side", type=int, default=320, help="test folder image side")
    parser.add_argument("--size", type=int, default=256, help="prepare --size")
    parser.add_argument("--quality", type=int, default=90, help="prepare --quality")
    parser.add_argument("--view", type=int, default=224, help="SimCLR view side")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8, help="timed batches per pipeline")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="PIL workers")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--cifar", type=Path, default=REPO_ROOT.parent / "shared/data/cifar10-jpeg")
    parser.add_argument("--first-step", type=Path, help="also time a prepared shard folder")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every pipeline")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # per-core rates
    device = torch.device(args.device)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="jpeg-storage-") as tmp:
        source = make_source(
            Path(tmp) / "src", args.images, args.source, args.source_side, args.cifar
        )
        start = time.perf_counter()
        prepare_shards(source, Path(tmp) / "shards", args.size, args.quality, progress=False)
        results["prepare s"] = time.perf_counter() - start
        manifest = read_manifest(Path(tmp) / "shards")
        stored = sum(s["bytes"] for s in manifest["splits"]["train"]["shards"])
        results["shards MB"] = stored / 1e6
        results["uint8 MB"] = args.images * 3 * args.size**2 / 1e6
        results["source MB"] = sum(p.stat().st_size for p in source.rglob("*.jpg")) / 1e6
        # The PIL baseline reads the same stored JPEGs, written back out as plain files.
        plain = Path(tmp) / "stored"
        dm = ImageFolderDataModule(Path(tmp) / "shards")
        dm.setup("fit")
        shards = dm.train_set.shards  # type: ignore[union-attr]
        for row in range(len(shards)):
            (plain / "x").mkdir(parents=True, exist_ok=True)
            (plain / "x" / f"{row:06d}.jpg").write_bytes(shards.read(row).numpy().tobytes())
        # Every pipeline once per round, round after round: the median of each is read, so a
        # slow moment of the machine does not land on one pipeline only.
        rounds: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            ours = ours_rates(
                Path(tmp) / "shards", args.view, args.batch_size, args.batches, device
            )
            before = jpeg_rate(
                Path(tmp) / "shards", args.view, args.batch_size, args.batches, device,
                FloatBatchViews,
            )  # fmt: skip
            pil = pil_rate(plain, args.view, args.batch_size, args.batches, args.workers)
            pil_decode = pil_rate(plain, None, args.batch_size, args.batches, args.workers)
            for key, value in (
                ("ours jpeg img/s", ours["jpeg"]),
                ("ours jpeg, float batches img/s", before),
                ("ours uint8 img/s", ours["uint8"]),
                ("ours decode only img/s", ours["decode"]),
                ("PIL img/s per core", pil / args.workers),
                ("PIL decode only img/s per core", pil_decode / args.workers),
            ):
                rounds.setdefault(key, []).append(value)
        results.update({key: statistics.median(values) for key, values in rounds.items()})
        results["first step s"] = first_step(
            Path(tmp) / "shards", args.view, args.batch_size, device
        )
    if args.first_step is not None:
        results["first step s, given folder"] = first_step(args.first_step, 32, 256, device)
    for key, value in results.items():
        print(f"{key:>28}: {value:,.2f}")
    print(f"{'shards / uint8 cache':>28}: {results['shards MB'] / results['uint8 MB']:.3f}")
    ratio = results["ours jpeg img/s"] / results["PIL img/s per core"]
    print(f"{'ours jpeg / PIL per core':>28}: {ratio:.2f}x")
    ratio = results["ours jpeg, float batches img/s"] / results["PIL img/s per core"]
    print(f"{'float batches / PIL per core':>28}: {ratio:.2f}x")
    return results


if __name__ == "__main__":
    main()
