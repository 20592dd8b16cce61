"""SimCLR views on a CPU: one view at a time through every op against batched ops, by size.

``ViewTransform`` has two CPU-equal paths: every op on the whole batch of views (one call
per op; each call streams all the views through memory) and the same ops on one view at a
time (its pixels stay in the cache from crop to clamp; a Python loop over the views). Both
run, alternating repeat after repeat, on the same images with the same generator seed
(``SimCLRViews``' crop, flip, jitter and grayscale, two views per image, from uint8 images as
the datamodule gives them); the median of the
repeats counts. The crossover sets ``view.PER_VIEW_MIN_PIXELS``, the view size from which a
CPU augments one view at a time.

    python benchmarks/per_view.py              # one thread, as in a DataLoader worker
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # `python benchmarks/per_view.py` imports the package

from benchmarks._by_size import run_by_size  # noqa: E402
from ssl_lightning.corruptions import ViewTransform, view  # noqa: E402

SHAPES = (
    (32, 32, 256),
    (64, 64, 128),
    (96, 96, 128),
    (128, 128, 64),
    (160, 160, 64),
    (224, 192, 64),
    (256, 224, 64),
)
"""(input side, view side, images per batch)."""

PATHS = {"per_view": 0, "batched": 1 << 62}
"""The ``PER_VIEW_MIN_PIXELS`` that forces each path."""


def measure(side: int, size: int, batch: int, repeats: int = 7) -> dict[str, float]:
    """Milliseconds per view of both paths, their ratio, and the path ``ViewTransform`` takes."""
    # uint8, as the datamodule gives the view recipes their batches.
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, side, side), generator=generator, dtype=torch.uint8)
    transform = ViewTransform(size=size)
    default = view.PER_VIEW_MIN_PIXELS
    times: dict[str, list[float]] = {name: [] for name in PATHS}
    outputs = {}
    try:
        for _ in range(repeats + 1):  # the first round warms up
            for name, threshold in PATHS.items():
                view.PER_VIEW_MIN_PIXELS = threshold
                generator = torch.Generator().manual_seed(1)
                start = time.perf_counter()
                outputs[name] = transform(images, generator, num_views=2)
                times[name].append(time.perf_counter() - start)
    finally:
        view.PER_VIEW_MIN_PIXELS = default
    per_view_s, batched_s = (statistics.median(times[k][1:]) for k in PATHS)
    return {
        "side": side,
        "size": size,
        "batch": batch,
        "per_view_ms": 1e3 * per_view_s / (2 * batch),
        "batched_ms": 1e3 * batched_s / (2 * batch),
        "speedup": batched_s / per_view_s,
        "max_difference": float((outputs["per_view"] - outputs["batched"]).abs().max()),
        "default_per_view": size * size >= default,
    }


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    return run_by_size(
        __doc__.split("\n")[0],
        measure,
        SHAPES,
        "| input -> view (images) | one at a time (ms/view) | batched (ms/view) | speedup "
        "| largest difference | default |",
        lambda row: (
            f"{row['per_view_ms']:.3f} | {row['batched_ms']:.3f} | {row['speedup']:.2f}x "
            f"| {row['max_difference']:.1e} "
            f"| {'one at a time' if row['default_per_view'] else 'batched'}"
        ),
        argv,
    )


if __name__ == "__main__":
    main()
