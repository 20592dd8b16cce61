"""Data loading on CIFAR-10-sized JPEG folders: seconds to the first batch, steady images/s.

Runs :class:`ImageFolderDataModule` over the real CIFAR-10 JPEG tree (50,000 train + 10,000
test images, 32x32) three ways, each in this one process:

- cold: a fresh, empty cache directory, so every JPEG is decoded (threads, PIL) and the
  decoded uint8 tensor is written to the cache;
- warm: a second datamodule on the same cache directory, which reads the cache back;
- warm, memory-mapped: the same cache with ``memory_budget_gb=0``, mapped instead of read.

For each: seconds from construction to the first uint8 batch (``setup`` + loader + one batch)
and to the first augmented batch (SimCLR views, on the CPU here; on a GPU this runs on the
device), then steady images/s of the loader alone (whole batches by tensor indexing) and of the
loader plus the SimCLR corruption, and the host memory the datamodule holds. The usual
pipeline, torchvision's ``ImageFolder`` with per-image PIL transforms in DataLoader workers,
is timed for comparison (its first batch and a few batches of steady state).

Usage (from the repository root)::

    python benchmarks/dataloading.py --data ../shared/data/cifar10-jpeg --batch-size 256
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ssl_lightning.datamodules import ImageFolderDataModule, SimCLRViews  # noqa: E402


def rss_mb() -> float:
    """Resident memory of this process in MB (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def run_datamodule(
    data: Path, cache: Path, batch_size: int, steady_batches: int, **kwargs: Any
) -> dict[str, float]:
    """Times one datamodule from construction to steady state."""
    gc.collect()
    rss_before = rss_mb()
    start = time.perf_counter()
    dm = ImageFolderDataModule(
        data, batch_size=batch_size, cache_dir=cache, corruption=SimCLRViews(), seed=0, **kwargs
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    first_batch = time.perf_counter() - start
    # What Lightning does after moving the batch to the device, with a training trainer.
    dm.trainer = SimpleNamespace(  # type: ignore[assignment]
        training=True, global_rank=0, current_epoch=0, lightning_module=None, loggers=[]
    )
    dm.on_after_batch_transfer(batch, 0)
    first_views = time.perf_counter() - start
    held_mb = rss_mb() - rss_before

    # Steady state, loader alone: one full epoch of uint8 batches.
    start = time.perf_counter()
    images = sum(len(x) for x, _ in loader)
    loader_rate = images / (time.perf_counter() - start)

    # Steady state, loader + SimCLR corruption (two views per image).
    start = time.perf_counter()
    images = 0
    for i, batch in enumerate(loader):
        if i == steady_batches:
            break
        dm.on_after_batch_transfer(batch, 0)
        images += len(batch[0])
    views_rate = images / (time.perf_counter() - start)
    return {
        "first batch s": first_batch,
        "first views s": first_views,
        "loader img/s": loader_rate,
        "+ views img/s": views_rate,
        "RSS MB": held_mb,
    }


def run_torchvision(
    data: Path, batch_size: int, workers: int, steady_batches: int
) -> dict[str, float]:
    """torchvision's ImageFolder + PIL SimCLR transforms (two views) in DataLoader workers."""
    import torchvision.transforms as T
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    view = T.Compose(
        [
            T.RandomResizedCrop(32, scale=(0.08, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.ToTensor(),
        ]
    )
    start = time.perf_counter()
    dataset = ImageFolder(str(data / "train"), transform=lambda im: (view(im), view(im)))
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True
    )
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter() - start
    start = time.perf_counter()
    images = 0
    for _ in range(steady_batches):
        images += len(next(iterator)[1])
    rate = images / (time.perf_counter() - start)
    return {
        "first batch s": first,
        "first views s": first,
        "loader img/s": float("nan"),
        "+ views img/s": rate,
        "RSS MB": float("nan"),
    }


def measure(
    data: Path, batch_size: int, steady_batches: int, baseline_batches: int = 0
) -> dict[str, dict[str, float]]:
    """Cold, warm and memory-mapped datamodule runs (and the PIL baseline when
    ``baseline_batches`` > 0): ``{run: {column: value}}``."""
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="ssl-cache-") as tmp:
        cache = Path(tmp)
        results["cold cache (decode)"] = run_datamodule(data, cache, batch_size, steady_batches)
        results["warm cache"] = run_datamodule(data, cache, batch_size, steady_batches)
        results["warm cache, memory-mapped"] = run_datamodule(
            data, cache, batch_size, steady_batches, memory_budget_gb=0.0
        )
    if baseline_batches > 0:
        cores = os.cpu_count() or 1
        results[f"torchvision ImageFolder+PIL, {cores} workers"] = run_torchvision(
            data, batch_size, cores, baseline_batches
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("../shared/data/cifar10-jpeg"),
        help="image-folder tree (train/<class>/*.jpg, test/...), relative to the repository root",
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steady-batches", type=int, default=40, help="batches with views")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--baseline-batches", type=int, default=8, help="steady batches of the PIL baseline"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the PIL baseline")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    data = args.data if args.data.is_absolute() else REPO_ROOT / args.data
    if not (data / "train").is_dir():
        raise SystemExit(f"no train/ folder under {data}; pass --data")
    cores = os.cpu_count() or 1
    print(f"{data}: batch {args.batch_size}, {cores} CPU cores, torch threads={args.threads}")

    baseline = 0 if args.no_baseline else args.baseline_batches
    results = measure(data, args.batch_size, args.steady_batches, baseline)

    columns = ["first batch s", "first views s", "loader img/s", "+ views img/s", "RSS MB"]
    header = f"{'':<38}" + "".join(f"{c:>15}" for c in columns)
    print("\n" + header)
    print("-" * len(header))
    for name, row in results.items():
        cells = "".join(
            f"{row[c]:>15.2f}" if c.endswith(" s") else f"{row[c]:>15.0f}" for c in columns
        )
        print(f"{name:<38}{cells}")
    print(
        "\nfirst batch: construction + setup + loader + one uint8 batch; first views: plus the "
        "SimCLR corruption of it.\nloader: one epoch of uint8 batches; + views: loader and "
        "two SimCLR views per image, on the CPU.\nRSS MB: host memory added by the "
        "datamodule (train + test, uint8; mapped pages count once touched)."
    )


if __name__ == "__main__":
    main()
