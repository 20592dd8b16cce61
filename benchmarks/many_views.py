"""Many views per image: ``V`` views of a batch in one call of each op against ``V`` calls.

``ViewTransform(images, generator, num_views=V)`` augments a batch ``V`` times in one call of
each op (crop, flip, jitter, grayscale, blur, solarize) over ``V x B`` images, the crop reading
the one input batch; the baseline calls the same transform ``V`` times on ``B`` images (what
``SimCLRViews`` did before). Both alternate, repeat after repeat, on the same images and device;
the median of the repeats counts. EMP-SSL's patch recipe (blur and solarization on) is the view.

    python benchmarks/many_views.py                       # the CPU, one thread
    python benchmarks/many_views.py --device cuda         # a GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # `python benchmarks/many_views.py` imports the package

from ssl_lightning.corruptions.recipes import emp_ssl_views  # noqa: E402

SHAPES = ((256, 2), (64, 8), (100, 20), (16, 32))  # (batch, views)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(
    batch: int, views: int, device: torch.device, repeats: int = 9, size: int = 32
) -> dict[str, float]:
    """Views/s of the batched call and of the per-view calls, and their ratio."""
    view = emp_ssl_views().view
    images = torch.rand(batch, 3, size, size, device=device)

    def batched() -> object:
        return view(images, torch.Generator().manual_seed(0), views).chunk(views)

    def per_view() -> object:
        generator = torch.Generator().manual_seed(0)
        return [view(images, generator) for _ in range(views)]

    times: dict[str, list[float]] = {"batched": [], "per_view": []}
    for _ in range(repeats + 1):  # the first round warms up
        for name, fn in (("batched", batched), ("per_view", per_view)):
            times[name].append(_timed(fn, device))
    batched_s, per_view_s = (statistics.median(times[k][1:]) for k in ("batched", "per_view"))
    return {
        "batch": batch,
        "views": views,
        "batched_views_per_s": batch * views / batched_s,
        "per_view_views_per_s": batch * views / per_view_s,
        "speedup": per_view_s / batched_s,
    }


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print("| batch x views | one call per op (views/s) | a call per view (views/s) | speedup |")
    print("|---|---|---|---|")
    rows = []
    for batch, views in SHAPES:
        row = measure(batch, views, device, args.repeats)
        rows.append(row)
        print(
            f"| {batch} x {views} | {row['batched_views_per_s']:,.0f} | "
            f"{row['per_view_views_per_s']:,.0f} | {row['speedup']:.2f}x |",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
