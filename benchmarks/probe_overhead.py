"""What does the online linear probe cost? SimCLR training steps with and without it.

Both variants run in the same fit, interleaved step by step: the probe trains after every
other step, so a slow or busy machine slows both alike. Each step is timed from one
``on_train_batch_start`` to the next, so the probe's ``on_train_batch_end`` work is inside
the measurement. The first steps of each fit are warm-up and dropped. Prints the median step
time of each variant, their ratio, and the median of the ratios of neighbouring steps.

    python benchmarks/probe_overhead.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import lightning as L
import torch
from torch import Tensor

from ssl_lightning import SimCLR
from ssl_lightning.callbacks import OnlineLinearProbe
from ssl_lightning.datamodules import InMemoryDataModule


class RandomImages(InMemoryDataModule):
    """Random uint8 32x32 images with 10 classes (the step cost does not depend on content)."""

    def __init__(self, num_images: int, batch_size: int) -> None:
        super().__init__(batch_size=batch_size, seed=0)
        self.num_images = num_images

    def load_split(self, split: str) -> tuple[Tensor, Tensor] | None:
        if split != "train":
            return None
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (self.num_images, 3, 32, 32), dtype=torch.uint8, generator=g)
        return images, torch.arange(self.num_images) % 10


class EveryOtherStepProbe(OnlineLinearProbe):
    """The probe, training after odd-numbered steps only (even steps are the baseline)."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        if i % 2 == 1:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, i)


class StepTimer(L.Callback):
    """Seconds between consecutive training batch starts."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, *args: Any) -> None:
        self.starts.append(time.perf_counter())

    def step_times(self, warmup: int) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:], strict=False)][warmup:]


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    """A Trainer that writes and prints nothing of its own (no logger, checkpoint, progress
    bar or summary), so a benchmark times only the fit; ``kwargs`` set the rest."""
    return L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def fit_on_random_images(
    model: L.LightningModule, batch_size: int, steps: int, callbacks: list[L.Callback]
) -> None:
    """``steps`` training steps of ``model`` on random images on the CPU, with nothing but
    ``callbacks``."""
    trainer = quiet_trainer(accelerator="cpu", max_steps=steps, callbacks=callbacks)
    trainer.fit(model, RandomImages(batch_size * steps, batch_size))


def timed_fit(
    backbone: str, width: int, batch_size: int, steps: int, warmup: int
) -> tuple[list[float], list[float]]:
    """Step times of one fit: (without the probe, with it), neighbours paired in order."""
    torch.manual_seed(0)
    model = SimCLR(
        backbone=backbone,
        backbone_kwargs={"width": width},
        proj_hidden_dim=512,
        warmup_epochs=0,
    )
    timer = StepTimer()
    # The timer comes first, so a step's time includes every other callback's batch hooks.
    fit_on_random_images(model, batch_size, steps + warmup, [timer, EveryOtherStepProbe()])
    times = timer.step_times(warmup)  # warmup is even: times[0] is a step without
    return times[0::2], times[1::2]


def measure(
    backbone: str = "resnet18",
    width: int = 8,
    batch_size: int = 128,
    steps: int = 40,
    warmup: int = 2,
    repeats: int = 1,
) -> dict[str, float]:
    """Median step seconds without and with the probe, the median ratio of neighbouring steps
    and the probe's update alone in ms (``steps`` and ``warmup`` even)."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        steps_without, steps_with = timed_fit(backbone, width, batch_size, steps, warmup)
        times[False] += steps_without
        times[True] += steps_with
    pair_ratios = [b / a for a, b in zip(times[False], times[True], strict=True)]

    # The probe's own work, alone: one update on features of a step's size.
    features = torch.randn(2 * batch_size, 8 * width)
    labels = torch.arange(2 * batch_size) % 10
    probe = OnlineLinearProbe(num_classes=10)
    probe.update(features, labels)
    start = time.perf_counter()
    for _ in range(200):
        probe.update(features, labels)
    return {
        "without s": statistics.median(times[False]),
        "with s": statistics.median(times[True]),
        "pair ratio": statistics.median(pair_ratios),
        "update ms": (time.perf_counter() - start) / 200 * 1e3,
        "timed steps": len(times[False]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per fit (even)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per fit (even)")
    parser.add_argument("--repeats", type=int, default=1, help="fits")
    args = parser.parse_args()
    if args.steps % 2 or args.warmup % 2:
        parser.error("--steps and --warmup must be even (steps alternate without/with the probe)")

    r = measure(args.backbone, args.width, args.batch_size, args.steps, args.warmup, args.repeats)
    without, with_probe, update_ms = r["without s"], r["with s"], r["update ms"]
    print(
        f"\nSimCLR {args.backbone} width {args.width}, batch {args.batch_size} x 2 views, 32x32, "
        f"CPU ({torch.get_num_threads()} threads); {r['timed steps']:.0f} timed steps per "
        f"variant, alternating within {args.repeats} fit(s)\n"
    )
    print(f"| {'variant':<22} | {'median step':>11} |")
    print(f"|{'-' * 24}|{'-' * 13}|")
    print(f"| {'without probe':<22} | {without * 1e3:>8.1f} ms |")
    print(f"| {'with OnlineLinearProbe':<22} | {with_probe * 1e3:>8.1f} ms |")
    print(
        f"\nratio of medians with/without: {with_probe / without:.3f} "
        f"({100 * (with_probe / without - 1):+.1f} %); median ratio of neighbouring steps: "
        f"{r['pair ratio']:.3f}; "
        f"the probe's update alone: {update_ms:.2f} ms "
        f"({100 * update_ms / 1e3 / without:.2f} % of a step)"
    )


if __name__ == "__main__":
    main()
