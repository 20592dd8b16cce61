"""Every benchmark in one run, summarized in one table: ``python -m benchmarks [--quick]``.

Runs, in this order and in this one process: augmentation throughput (``augment.py``), data
loading (``dataloading.py``), the training-step throughput of every method against a plain
PyTorch loop of the same model, and channels-last against contiguous (``throughput.py``), the
online probe's overhead (``probe_overhead.py``) and budgeted quality (``probe_quality.py``).
Each prints its own details as it goes; the table at the end holds one line per result, ours
against its baseline. ``benchmarks/README.md`` says what each measures and how to read it.

    python -m benchmarks                 # full sizes: about an hour on 2 CPU cores
    python -m benchmarks --quick         # small sizes, sample images: checks, not numbers
    python -m benchmarks --only throughput --only quality
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks import augment, dataloading, probe_overhead, probe_quality, throughput

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = REPO_ROOT / "tests" / "data" / "cifar10-sample"
CIFAR = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg"
# The README Results methods: probe_quality.py pretrains them on the same conv net.
CONTRASTIVE = ["SimCLR", "MoCoV3", "BYOL", "SimSiam", "BarlowTwins", "VICReg", "DINO"]


@dataclass(frozen=True)
class Sizes:
    """How much each benchmark does."""

    augment_images: int
    augment_repeats: int
    loading_data: Path  # an image-folder tree
    loading_batch: int
    loading_steady: int
    step_batch: int
    step_steps: int
    probe_width: int
    probe_batch: int
    probe_steps: int
    quality_data: Path
    quality_budget: list[str]  # probe_quality.py's budget and batch options
    quality_methods: list[str]  # probe_quality.py --method names
    step_methods: tuple[str, ...] = ()  # every method when empty


def sizes(mode: str, data: Path) -> Sizes:
    """``full`` (the README's numbers), ``quick`` (small) or ``tiny`` (the test's)."""
    if mode == "full":
        return Sizes(
            augment_images=2048, augment_repeats=3,
            loading_data=data, loading_batch=256, loading_steady=40,
            step_batch=128, step_steps=10,
            probe_width=8, probe_batch=128, probe_steps=40,
            quality_data=data, quality_budget=["--minutes", "2"], quality_methods=CONTRASTIVE,
        )  # fmt: skip
    # The sample images (120 train, 30 test): every path runs, the numbers are not the point.
    sample_quality = [
        *("--steps", "4", "--batch-size", "32"),
        *("--fine-tune-steps", "3", "--label-fraction", "0.5"),
    ]
    if mode == "quick":
        return Sizes(
            augment_images=512, augment_repeats=1,
            loading_data=SAMPLE, loading_batch=32, loading_steady=3,
            step_batch=32, step_steps=4,
            probe_width=8, probe_batch=64, probe_steps=6,
            quality_data=SAMPLE, quality_budget=sample_quality, quality_methods=["SimCLR"],
        )  # fmt: skip
    # A conv method and the ViT one: the entry point end to end, in under a minute.
    return Sizes(
        augment_images=128, augment_repeats=1,
        loading_data=SAMPLE, loading_batch=32, loading_steady=2,
        step_batch=8, step_steps=2,
        probe_width=4, probe_batch=16, probe_steps=2,
        quality_data=SAMPLE, quality_budget=["--steps", "2", "--batch-size", "32"],
        quality_methods=["SimCLR"], step_methods=("SimCLR", "MAE"),
    )  # fmt: skip


Row = tuple[str, str, str, str, str]  # benchmark, measure, ours, baseline, ours vs baseline


def run_augment(s: Sizes) -> list[Row]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-core rates, as the README's table
    try:
        images = augment.load_images(CIFAR, s.augment_images, seed=0)
        results = augment.measure(images, 256, s.augment_repeats, seed=0)
    finally:
        torch.set_num_threads(threads)
    rows = []
    for recipe, rates in results.items():
        baseline = rates["torchvision PIL, per image"]
        ours = next(rate for name, rate in rates.items() if name.startswith("ours"))
        rows.append(
            (
                "augmentation",
                f"{recipe} views, images/s, 1 thread",
                f"{ours:,.0f}",
                f"{baseline:,.0f} (torchvision PIL)",
                f"{ours / baseline:.1f}x",
            )
        )
    return rows


def run_loading(s: Sizes) -> list[Row]:
    results = dataloading.measure(s.loading_data, s.loading_batch, s.loading_steady, 2)
    pil = results[next(name for name in results if name.startswith("torchvision"))]
    warm = results["warm cache"]
    cold = results["cold cache (decode)"]
    return [
        (
            "data loading",
            f"first batch s, warm cache ({s.loading_data.name})",
            f"{warm['first batch s']:.2f}",
            f"{pil['first batch s']:.2f} (ImageFolder+PIL)",
            f"{pil['first batch s'] / warm['first batch s']:.1f}x",
        ),
        (
            "data loading",
            "first batch s, cold cache (decode)",
            f"{cold['first batch s']:.2f}",
            "",
            "",
        ),
        (
            "data loading",
            "loader + SimCLR views, images/s",
            f"{warm['+ views img/s']:,.0f}",
            f"{pil['+ views img/s']:,.0f} (ImageFolder+PIL)",
            f"{warm['+ views img/s'] / pil['+ views img/s']:.1f}x",
        ),
    ]


def run_steps(s: Sizes) -> list[Row]:
    rows = []
    names = list(s.step_methods or throughput.METHODS)
    for name, r in throughput.method_throughput(names, s.step_batch, s.step_steps).items():
        rows.append(
            (
                f"step {name}",
                "images/s: Lightning step with augmentation vs plain loop",
                f"{r['ours img/s']:,.0f}",
                f"{r['plain img/s']:,.0f} (plain)",
                f"{r['ours/plain']:.0%} (augmentation {r['augmentation share']:.0%}, "
                f"the rest {1 - r['ours/plain+aug']:.0%})",
            )
        )
    for label, r in throughput.channels_last_comparison(s.step_batch, s.step_steps).items():
        rows.append(
            (
                "channels_last",
                f"plain SimCLR step images/s, {label}",
                f"{r['channels_last img/s']:,.0f}",
                f"{r['contiguous img/s']:,.0f} (contiguous)",
                f"{r['speed-up']:.2f}x",
            )
        )
    return rows


def run_probe(s: Sizes) -> list[Row]:
    r = probe_overhead.measure("resnet18", s.probe_width, s.probe_batch, s.probe_steps)
    return [
        (
            "probe overhead",
            f"SimCLR step ms with OnlineLinearProbe (resnet18 width {s.probe_width})",
            f"{r['with s'] * 1e3:.1f}",
            f"{r['without s'] * 1e3:.1f} (without)",
            f"{r['pair ratio']:.3f} (neighbouring steps)",
        )
    ]


def run_quality(s: Sizes) -> list[Row]:
    methods = [arg for name in s.quality_methods for arg in ("--method", name)]
    with tempfile.TemporaryDirectory(prefix="probe-quality-") as tmp:
        rows = probe_quality.main(
            ["--data-dir", str(s.quality_data), *methods, *s.quality_budget,
             "--out", str(Path(tmp) / "results.jsonl")]
        )  # fmt: skip
    baseline = next(r for r in rows if r["method"] == "random init")
    found = []
    for r in rows:
        if r is baseline:
            continue
        found.append(
            (
                f"quality {r['method']}",
                f"frozen linear top-1 ({r['steps']} steps, {s.quality_data.name})",
                f"{r['linear_top1']:.1%}",
                f"{baseline['linear_top1']:.1%} (random init)",
                f"{100 * (r['linear_top1'] - baseline['linear_top1']):+.1f} points",
            )
        )
        if "finetune_top1" in r:
            found.append(
                (
                    f"quality {r['method']}",
                    f"fine-tuned top-1 ({r['label_fraction']:.0%} labels, "
                    f"{r['finetune_steps']} steps)",
                    f"{r['finetune_top1']:.1%}",
                    f"{baseline['finetune_top1']:.1%} (from scratch)",
                    f"{100 * (r['finetune_top1'] - baseline['finetune_top1']):+.1f} points",
                )
            )
    return found


BENCHMARKS: dict[str, Callable[[Sizes], list[Row]]] = {
    "augment": run_augment,
    "loading": run_loading,
    "throughput": run_steps,
    "probe": run_probe,
    "quality": run_quality,
}


def print_table(rows: list[Row]) -> None:
    """One Markdown table of every result."""
    print("\n| benchmark | measure | ours | baseline | ours vs baseline |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes on the sample images")
    mode.add_argument("--tiny", action="store_true", help="the smallest sizes (the test's)")
    parser.add_argument("--only", action="append", choices=list(BENCHMARKS), help="a subset")
    parser.add_argument(
        "--data", type=Path, default=CIFAR, help="CIFAR-10 JPEG tree for the full run"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads (default: torch's); 1 on a machine busy with other work",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    s = sizes("quick" if args.quick else "tiny" if args.tiny else "full", args.data)
    rows: list[Row] = []
    for name in args.only or list(BENCHMARKS):
        start = time.perf_counter()
        print(f"\n== {name} ==")
        rows += BENCHMARKS[name](s)
        print(f"({name}: {time.perf_counter() - start:.0f} s)")
    print_table(rows)


if __name__ == "__main__":
    main()
