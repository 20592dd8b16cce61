"""Throughput of SSL augmentation: our batched ops vs kornia vs torchvision's PIL pipeline.

Two recipes, each built three ways with the same parameters: SimCLR (crop, flip, color
jitter, grayscale) and BYOL (the same plus a Gaussian blur with p 1.0 / 0.1 and solarization
with p 0.0 / 0.2 for the two views; kernel 13, the widest our sigma rule picks at sigma 2).
All pipelines start from the same decoded in-memory images (PIL images for torchvision, one
``[N, 3, 32, 32]`` uint8 tensor for the batched ones, as the datamodule keeps them) and run
side by side in one process with the same torch thread count, so the ratios are meaningful
even on a busy machine. Batched timings include the uint8 -> float conversion; every pipeline
makes two views per image. kornia (``pip install -e ".[bench]"``) is skipped when missing.

Usage (from the repository root)::

    python benchmarks/augment.py --images 2048 --batch-size 256 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from ssl_lightning.corruptions import (  # noqa: E402
    BYOLViews,
    Corruption,
    SimCLRViews,
    ViewTransform,
)

SIZE = 32
BLUR_KERNEL = 13
BLUR_P = (1.0, 0.1)
SOLARIZE_P = (0.0, 0.2)


def load_images(data: Path, n: int, seed: int) -> list[Image.Image]:
    """Decodes ``n`` JPEGs spread over all classes, or makes random images if ``data`` is absent."""
    files = sorted(data.glob("train/*/*.jpg"))
    if not files:
        print(f"no JPEGs under {data}/train/<class>/: using {n} random uint8 images instead")
        g = torch.Generator().manual_seed(seed)
        arrays = torch.randint(0, 256, (n, SIZE, SIZE, 3), generator=g, dtype=torch.uint8)
        return [Image.fromarray(a.numpy()) for a in arrays]
    # A stride over the sorted list takes images from every class, not n from the first one.
    files = files[:: max(1, len(files) // n)][:n]
    images = []
    for f in files:
        with Image.open(f) as im:
            images.append(im.convert("RGB"))
    print(f"loaded {len(images)} images from {data}")
    return images


def to_uint8_tensor(images: list[Image.Image]) -> Tensor:
    """Stacks PIL images as ``[N, 3, H, W]`` uint8, the datamodule's in-memory layout."""
    arrays = np.stack([np.asarray(im) for im in images])  # [N, H, W, 3]
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()


def time_it(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls of ``fn``, in seconds (the least disturbed run)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def ours(corruption: Corruption, data: Tensor, batch_size: int, seed: int) -> Callable[[], object]:
    """One of our batched corruptions over uint8 batches, as the datamodule runs it."""
    generator = torch.Generator().manual_seed(seed)

    def run() -> None:
        for start in range(0, len(data), batch_size):
            images = data[start : start + batch_size].float().div_(255.0)  # [B, 3, H, W]
            corruption(images, torch.zeros(len(images), dtype=torch.long), generator)

    return run


def pil(images: list[Image.Image], byol: bool) -> Callable[[], object]:
    """The usual torchvision pipeline, per PIL image, one transform per view."""
    import torchvision.transforms as T

    def view(blur_p: float, solarize_p: float) -> Callable[[Image.Image], Tensor]:
        ops = [
            T.RandomResizedCrop(SIZE, scale=(0.08, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ]
        if byol:
            ops += [
                T.RandomApply([T.GaussianBlur(BLUR_KERNEL, sigma=(0.1, 2.0))], p=blur_p),
                T.RandomSolarize(128, p=solarize_p),
            ]
        return T.Compose([*ops, T.ToTensor()])

    views = [view(BLUR_P[i], SOLARIZE_P[i]) for i in range(2)]

    def run() -> None:
        for im in images:
            views[0](im)
            views[1](im)

    return run


def kornia_pipeline(data: Tensor, batch_size: int, byol: bool) -> Callable[[], object] | None:
    """kornia's batched equivalent, or ``None`` when kornia is not installed."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return None

    def view(blur_p: float, solarize_p: float) -> torch.nn.Module:
        ops = [
            K.RandomResizedCrop((SIZE, SIZE), scale=(0.08, 1.0)),
            K.RandomHorizontalFlip(),
            K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8),
            K.RandomGrayscale(p=0.2),
        ]
        if byol:
            ops += [
                K.RandomGaussianBlur((BLUR_KERNEL, BLUR_KERNEL), (0.1, 2.0), p=blur_p),
                K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p),  # at 0.5
            ]
        return torch.nn.Sequential(*ops)

    views = [view(BLUR_P[i], SOLARIZE_P[i]) for i in range(2)]

    def run() -> None:
        for start in range(0, len(data), batch_size):
            images = data[start : start + batch_size].float().div_(255.0)
            views[0](images)
            views[1](images)

    return run


def recipes() -> dict[str, Corruption]:
    """The two recipes timed: SimCLR's views and BYOL's asymmetric pair."""
    return {
        "SimCLR": SimCLRViews(num_views=2),
        "BYOL": BYOLViews(
            *(
                ViewTransform(blur_p=b, solarize_p=s, blur_kernel_size=BLUR_KERNEL)
                for b, s in zip(BLUR_P, SOLARIZE_P, strict=True)
            )
        ),
    }


def measure(
    images: list[Image.Image], batch_size: int, repeats: int, seed: int
) -> dict[str, dict[str, float]]:
    """Images/s of every pipeline on ``images``: ``{recipe: {pipeline: images/s}}``.

    The first pipeline of each recipe is the PIL baseline; kornia is left out when missing.
    """
    data = to_uint8_tensor(images)  # [N, 3, 32, 32]
    results: dict[str, dict[str, float]] = {}
    for recipe, corruption in recipes().items():
        byol = recipe == "BYOL"
        pipelines: dict[str, Callable[[], object]] = {
            "torchvision PIL, per image": pil(images, byol),
            f"ours {type(corruption).__name__}, batch {batch_size}": ours(
                corruption, data, batch_size, seed
            ),
        }
        kornia_run = kornia_pipeline(data, batch_size, byol)
        if kornia_run is None:
            print("kornia is not installed: skipping its pipeline (pip install -e '.[bench]')")
        else:
            pipelines[f"kornia, batch {batch_size}"] = kornia_run
        results[recipe] = {}
        for name, run in pipelines.items():
            run()  # warm-up: allocator, lazy imports, first-call dispatch
            results[recipe][name] = len(images) / time_it(run, repeats)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="images per timed pass")
    parser.add_argument("--batch-size", type=int, default=256, help="batch size of batched ops")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("../shared/data/cifar10-jpeg"),
        help="CIFAR-10 JPEG tree (train/<class>/*.jpg), relative to the repository root",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best counts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data_dir = args.data if args.data.is_absolute() else REPO_ROOT / args.data
    images = load_images(data_dir, args.images, args.seed)
    print(
        f"\n{len(images)} images x 2 views, {SIZE}x{SIZE}, torch threads={args.threads}, "
        f"torch {torch.__version__}"
    )
    header = f"{'pipeline':<40} {'images/s':>10} {'images/s/core':>14} {'per core vs PIL':>16}"
    for recipe, results in measure(images, args.batch_size, args.repeats, args.seed).items():
        baseline = results["torchvision PIL, per image"]
        print(f"\n{recipe}")
        print(header)
        print("-" * len(header))
        for name, rate in results.items():
            # PIL runs in one thread whatever torch's setting; per core, it counts as one core.
            cores = 1 if name.startswith("torchvision PIL") else args.threads
            per_core = rate / cores
            print(f"{name:<40} {rate:>10.0f} {per_core:>14.0f} {per_core / baseline:>15.1f}x")


if __name__ == "__main__":
    main()
