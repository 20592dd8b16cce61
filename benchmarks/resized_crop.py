"""Random resized crop on a CPU: one resize per box against the batched matmuls, by size.

``resized_crop`` has two CPU-equal paths: two batched matmuls per view (one call whatever the
boxes; its cost grows with input side x input side x output side) and one ``F.interpolate``
per box (cost per output pixel, plus a Python call per box). Both run, alternating repeat
after repeat, on the same images and boxes (SimCLR's crop scales); the median of the repeats
counts. The crossover sets ``geometry.PER_BOX_MIN_PIXELS``, the output size from which the CPU
resizes per box.

    python benchmarks/resized_crop.py              # one thread, as in a DataLoader worker
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # `python benchmarks/resized_crop.py` imports the package

from benchmarks._by_size import run_by_size  # noqa: E402
from ssl_lightning.corruptions import geometry  # noqa: E402
from ssl_lightning.corruptions.sampling import sample_bernoulli, sample_crop_boxes  # noqa: E402

SHAPES = ((32, 32, 256), (64, 64, 128), (96, 96, 128), (160, 160, 64), (256, 224, 64))
"""(input side, output side, batch)."""


def measure(side: int, size: int, batch: int, repeats: int = 7) -> dict[str, float]:
    """Milliseconds per crop of both paths, their ratio, and the path ``resized_crop`` takes."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, side, side, generator=generator)
    boxes = sample_crop_boxes(batch, side, side, (0.08, 1.0), (3 / 4, 4 / 3), generator)
    flip = sample_bernoulli(batch, 0.5, generator)
    paths = {"per_box": geometry._resized_crop_per_box, "matmul": geometry._resized_crop_matmul}
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats + 1):  # the first round warms up
        for name, path in paths.items():
            start = time.perf_counter()
            path(images, boxes, images.new_empty(batch, 3, size, size), True, flip)
            times[name].append(time.perf_counter() - start)
    per_box_s, matmul_s = (statistics.median(times[k][1:]) for k in paths)
    return {
        "side": side,
        "size": size,
        "batch": batch,
        "per_box_ms": 1e3 * per_box_s / batch,
        "matmul_ms": 1e3 * matmul_s / batch,
        "speedup": matmul_s / per_box_s,
        "default_per_box": size * size >= geometry.PER_BOX_MIN_PIXELS,
    }


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    return run_by_size(
        __doc__.split("\n")[0],
        measure,
        SHAPES,
        "| input -> output (batch) | per box (ms/crop) | matmuls (ms/crop) | per box speedup "
        "| default |",
        lambda row: (
            f"{row['per_box_ms']:.3f} | {row['matmul_ms']:.3f} | {row['speedup']:.2f}x "
            f"| {'per box' if row['default_per_box'] else 'matmuls'}"
        ),
        argv,
    )


if __name__ == "__main__":
    main()
